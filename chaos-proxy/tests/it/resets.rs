//! reset_peer against a real HTTP server that counts requests: upstream
//! resets never reach the service, downstream resets all do.

use std::sync::atomic::Ordering::SeqCst;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

#[tokio::test]
async fn upstream_reset_drops_the_request_downstream_reset_drops_the_answer() {
    let p = spawn_proxy().await;
    let http = spawn_counting_http().await;
    let addr = p.create("payment", http.addr).await;

    p.toxic(
        "payment",
        json!({"name":"up","type":"reset_peer","stream":"upstream","attributes":{"timeout":0}}),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(raw_payment(addr).await, End::Reset(Vec::new()));
    }
    assert_eq!(
        http.handled.load(SeqCst),
        0,
        "the service saw an upstream-reset request"
    );

    assert_eq!(p.call("DELETE", "/proxies/payment/toxics/up", None).await.status, 204);
    p.toxic(
        "payment",
        json!({"name":"down","type":"reset_peer","stream":"downstream","attributes":{"timeout":0}}),
    )
    .await;
    for i in 1..=5u64 {
        assert_eq!(raw_payment(addr).await, End::Reset(Vec::new()));
        // The service processed it before the client was reset.
        assert_eq!(http.handled.load(SeqCst), i);
    }

    // Through a real HTTP client, both look like a connection error.
    let client = reqwest::Client::builder()
        .timeout(HANG_GUARD)
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let err = client
        .post(format!("http://{addr}/payments/"))
        .body("{}")
        .send()
        .await
        .expect_err("must fail");
    assert!(!err.is_timeout() && !err.is_connect(), "{err:?}");

    let stats = p.stats("payment").await;
    assert_eq!(
        stats["faults"],
        json!([
            {"toxic":"down","type":"reset_peer","stream":"downstream","count":6},
            {"toxic":"up","type":"reset_peer","stream":"upstream","count":5},
        ])
    );
    p.shutdown().await;
}

#[tokio::test]
async fn partial_toxicity_service_sees_exactly_the_unreset_requests() {
    let p = spawn_proxy().await;
    let http = spawn_counting_http().await;
    let addr = p.create("payment", http.addr).await;
    p.toxic(
        "payment",
        json!({"name":"up","type":"reset_peer","stream":"upstream","toxicity":0.5,"attributes":{"timeout":1}}),
    )
    .await;
    let n = 40;
    let mut ok = 0;
    for _ in 0..n {
        let end = raw_payment(addr).await;
        if is_ok(&end) {
            ok += 1;
        } else {
            assert_eq!(end, End::Reset(Vec::new()));
        }
    }
    assert!(ok > 0 && ok < n, "seed 42 gives a mix, got {ok}/{n}");
    assert_eq!(
        http.handled.load(SeqCst),
        ok,
        "upstream resets must never reach the service"
    );
    let faults = p.stats("payment").await["faults"][0]["count"].as_u64();
    assert_eq!(faults, Some(n - ok));

    p.call("POST", "/reset", None).await;
    http.handled.store(0, SeqCst);
    p.toxic(
        "payment",
        json!({"name":"down","type":"reset_peer","stream":"downstream","toxicity":0.5,"attributes":{"timeout":1}}),
    )
    .await;
    let mut ok = 0;
    for _ in 0..n {
        if is_ok(&raw_payment(addr).await) {
            ok += 1;
        }
    }
    assert!(ok > 0 && ok < n);
    assert_eq!(
        http.handled.load(SeqCst),
        n,
        "downstream resets happen after the service answered"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn reset_peer_waits_its_timeout_then_resets_both_sides() {
    let p = spawn_proxy().await;
    // An upstream that records how its side of the connection ended.
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up_addr = up.local_addr().expect("addr");
    let upstream_end = tokio::spawn(async move {
        let (mut s, _) = up.accept().await.expect("accept");
        read_to_end(&mut s).await
    });
    let addr = p.create("db", up_addr).await;
    p.toxic(
        "db",
        json!({"type":"reset_peer","stream":"upstream","attributes":{"timeout":150}}),
    )
    .await;
    let mut c = connect(addr).await;
    let started = tokio::time::Instant::now();
    c.write_all(b"request").await.expect("write");
    assert_eq!(read_to_end(&mut c).await, End::Reset(Vec::new()));
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    // The upstream got an RST as well, and never the request bytes.
    assert_eq!(
        guard("upstream", upstream_end).await.expect("task"),
        End::Reset(Vec::new())
    );
    p.shutdown().await;
}

/// toxiproxy #603: a reset_peer at toxicity 0 turns every close into an RST.
/// Here an unfired toxic changes nothing: closes stay FINs on both sides.
#[tokio::test]
async fn toxicity_zero_leaves_normal_closes_alone() {
    let p = spawn_proxy().await;
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up_addr = up.local_addr().expect("addr");
    let addr = p.create("db", up_addr).await;
    for stream in ["upstream", "downstream"] {
        p.toxic(
            "db",
            json!({"name":stream,"type":"reset_peer","stream":stream,"toxicity":0,"attributes":{"timeout":0}}),
        )
        .await;
    }
    for _ in 0..5 {
        // Server-initiated close: answer, then close.
        let mut c = connect(addr).await;
        let (mut s, _) = guard("accept", up.accept()).await.expect("accept");
        c.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        guard("server read", s.read_exact(&mut buf)).await.expect("server read");
        s.write_all(b"pong").await.expect("server write");
        drop(s);
        assert_eq!(read_to_end(&mut c).await, End::Eof(b"pong".to_vec()));

        // Client-initiated close: the upstream must see a FIN.
        let mut c = connect(addr).await;
        let (mut s, _) = guard("accept", up.accept()).await.expect("accept");
        c.write_all(b"ping").await.expect("write");
        drop(c);
        assert_eq!(read_to_end(&mut s).await, End::Eof(b"ping".to_vec()));
    }
    let stats = p.stats("db").await;
    assert_eq!(stats["faults"], json!([]));
    p.shutdown().await;
}

#[tokio::test]
async fn dial_failure_resets_the_client_promptly() {
    let p = spawn_proxy().await;
    // A port with nothing listening: bind, read the port, close.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let addr = p.create("dead", dead_addr).await;
    let mut c = connect(addr).await;
    let _ = c.write_all(b"hello").await;
    let mut buf = [0u8; 16];
    let r = guard("read", c.read(&mut buf)).await;
    assert!(
        matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset) || matches!(r, Ok(0)),
        "{r:?}"
    );
    let stats = p.stats("dead").await;
    assert_eq!(stats["connections"]["upstream_dial_failures"], 1);
    p.shutdown().await;
}
