//! The bounded server on real loopback sockets: slow clients lose their
//! connection at the deadlines and ordinary requests are answered meanwhile.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use eo_core::serve::{Limits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound on any wait in these tests: a hang fails instead of stalling CI.
const WAIT_MS_MAX: u64 = 10_000;

fn limits(connections_max: usize) -> Limits {
    Limits {
        connections_max,
        header_read_ms_max: 300,
        body_read_ms_max: 300,
        idle_ms_max: 5_000,
        drain_ms_max: 1_000,
    }
}

async fn start(limits: Limits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/echo", post(|body: Bytes| async move { body }));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, app, limits, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_millis(WAIT_MS_MAX), stream.read_to_end(&mut got));
    match read.await {
        Ok(_) => got,
        Err(_) => panic!("the server kept a slow connection open past every deadline"),
    }
}

async fn health(addr: std::net::SocketAddr) -> reqwest::StatusCode {
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    let call = client.get(format!("http://{addr}/health")).send();
    tokio::time::timeout(Duration::from_millis(WAIT_MS_MAX), call)
        .await
        .expect("an ordinary request must be answered")
        .expect("request")
        .status()
}

#[tokio::test]
async fn a_head_that_never_finishes_is_closed() {
    let (addr, _stop) = start(limits(64)).await;
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let answer = read_to_close(&mut slow).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "a half head must not be served");
}

#[tokio::test]
async fn a_trickled_body_fails_at_its_deadline() {
    let (addr, _stop) = start(limits(64)).await;
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        .await
        .expect("write");
    let answer = read_to_close(&mut slow).await;
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "a body that never arrives must not be served"
    );
}

#[tokio::test]
async fn ordinary_requests_are_answered_while_slow_clients_hold_connections() {
    let (addr, _stop) = start(limits(1024)).await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /health HTTP/1.1\r\n").await.expect("write");
        slow.push(s);
    }
    assert_eq!(health(addr).await, reqwest::StatusCode::OK);
}

#[tokio::test]
async fn at_the_cap_slow_clients_are_evicted_by_the_deadline() {
    let (addr, _stop) = start(limits(4)).await;
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"G").await.expect("write");
        slow.push(s);
    }
    // Every slot is held by a slow client; the header deadline frees them.
    assert_eq!(health(addr).await, reqwest::StatusCode::OK);
}

#[tokio::test]
async fn keep_alive_connections_serve_several_requests() {
    let (addr, _stop) = start(limits(8)).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    for _ in 0..3 {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_millis(WAIT_MS_MAX), s.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
}
