//! Connection limits: a client that never finishes its request is dropped
//! after the idle limit, and at the connection cap new clients wait for a
//! free slot instead of piling up.

use std::time::Duration;

use payment_service::listener::LimitedListener;
use payment_service::{Config, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::WAIT;

/// Serves the app behind a listener with `cap` connections and `idle` limit.
async fn serve_limited(cap: usize, idle: Duration) -> (std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let service = Service::open(Config::new(dir.path().join("p.db")))
        .await
        .expect("service");
    let app = payment_service::app(service.state.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _keep = service;
        let _ = axum::serve(LimitedListener::with_limits(listener, cap, idle), app).await;
    });
    (addr, dir)
}

/// Reads until the peer closes; returns what was read.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("the server closed in time");
    out
}

#[tokio::test]
async fn a_request_that_never_finishes_is_dropped_after_the_idle_limit() {
    let (addr, _dir) = serve_limited(8, Duration::from_millis(200)).await;
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"POST /payments HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await
        .expect("write");
    // The server closes the connection on its own; no answer was ever due.
    let answer = read_to_close(&mut slow).await;
    assert!(
        answer.is_empty(),
        "dropped without an answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn at_the_cap_a_new_client_waits_for_a_free_slot() {
    let (addr, _dir) = serve_limited(1, Duration::from_millis(300)).await;
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.expect("the first client is served");
    assert_eq!(&first, b"HTTP/1.1 200");
    // The first connection stays open (keep-alive) and holds the only slot.
    let mut waiting = TcpStream::connect(addr)
        .await
        .expect("connect: the kernel backlog accepts");
    waiting
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = read_to_close(&mut waiting).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "served once the idle one was dropped"
    );
    // The slot came free because the server closed the idle connection:
    // reading it hits EOF at once (read_to_close fails on a live connection).
    let rest = tokio::time::timeout(Duration::from_millis(50), read_to_close(&mut idle))
        .await
        .expect("already closed");
    assert!(
        rest.ends_with(br#"{"status":"ok"}"#),
        "only the first answer's rest, then EOF: {rest:?}"
    );
}

/// Polls `done` until it holds, bounded by [`WAIT`].
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_in_flight_bound_holds_until_the_work_is_done_even_when_clients_leave() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = Config::new(dir.path().join("p.db"));
    // Long enough that the clients are long gone before the work ends.
    config.processing_delay = Duration::from_millis(2000);
    let service = Service::open(config).await.expect("service");
    let state = service.state.with_requests_in_flight_max(2);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = payment_service::app(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    // Two payments take both slots; their clients then reset the connection.
    let mut clients = Vec::new();
    for (n, key) in ["slot-1", "slot-2"].into_iter().enumerate() {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let body = crate::BODY;
        let request = format!(
            "POST /payments HTTP/1.1\r\nHost: x\r\nIdempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        until("the payment is admitted", || state.requests_in_flight() == n + 1).await;
        clients.push(stream);
    }
    let third = crate::client()
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .expect("third");
    assert_eq!(third.status(), 503, "both slots are taken");
    assert_eq!(
        state.payments_executed(),
        0,
        "the work was still running (the machine is not too slow)"
    );
    for stream in clients {
        stream.set_zero_linger().expect("linger");
        drop(stream);
    }
    // A slot comes free only when a payment's work is done, not when its client leaves.
    until("a slot comes free", || state.requests_in_flight() < 2).await;
    assert!(
        state.payments_executed() >= 1,
        "a slot came free before any work was done"
    );
    until("both are done", || state.requests_in_flight() == 0).await;
    assert_eq!(state.payments_executed(), 2);
    let after = crate::client()
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .expect("after");
    assert_eq!(after.status(), 200);
    service.stop().await;
}
