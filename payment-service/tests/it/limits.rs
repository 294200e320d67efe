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
