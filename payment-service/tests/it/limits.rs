//! Connection limits of the real service: slow clients (slowloris) lose their
//! connection at the header and body deadlines, and ordinary payments are
//! answered while they attack, even when the attackers hold every slot.

use std::time::Duration;

use payment_service::{Config, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{BODY, WAIT, spawn_app};

/// Reads until the peer closes; returns what was read.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("the server closed in time");
    out
}

async fn pay(app: &crate::TestApp, key: &str) -> reqwest::StatusCode {
    let call = app
        .client
        .post(format!("{}/payments", app.base))
        .header("Idempotency-Key", key)
        .header("Content-Type", "application/json")
        .body(BODY)
        .send();
    tokio::time::timeout(WAIT, call)
        .await
        .expect("an ordinary payment is answered during the attack")
        .expect("request")
        .status()
}

#[tokio::test]
async fn a_request_head_that_never_finishes_is_dropped() {
    let app = spawn_app(|c| c.server_limits.header_read_ms_max = 200).await;
    let addr = app.base.trim_start_matches("http://");
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"POST /payments HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await
        .expect("write");
    let answer = read_to_close(&mut slow).await;
    assert!(
        !answer.starts_with(b"HTTP/1.1 2"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(app.stats().await["payments"], 0);
}

#[tokio::test]
async fn a_trickled_body_stores_nothing() {
    let app = spawn_app(|c| c.server_limits.body_read_ms_max = 200).await;
    let addr = app.base.trim_start_matches("http://");
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /payments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nIdempotency-Key: slow\r\nContent-Length: {}\r\n\r\n",
        BODY.len()
    );
    slow.write_all(head.as_bytes()).await.expect("write head");
    slow.write_all(&BODY.as_bytes()[..5]).await.expect("write a little");
    let answer = read_to_close(&mut slow).await;
    assert!(
        !answer.starts_with(b"HTTP/1.1 2"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(app.stats().await["payments"], 0);
}

#[tokio::test]
async fn payments_are_answered_during_a_slowloris() {
    let app = spawn_app(|_| {}).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut attackers = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"POST /payments HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        attackers.push(s);
    }
    for n in 0..20 {
        assert_eq!(pay(&app, &format!("k{n}")).await, reqwest::StatusCode::CREATED);
    }
}

#[tokio::test]
async fn when_slow_clients_hold_every_slot_the_deadline_frees_them() {
    let app = spawn_app(|c| {
        c.server_limits.connections_max = 4;
        c.server_limits.header_read_ms_max = 300;
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut attackers = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"P").await.expect("write");
        attackers.push(s);
    }
    assert_eq!(pay(&app, "during").await, reqwest::StatusCode::CREATED);
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
    let mut config = Config::new(crate::db_at(&dir, "p.db"));
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
