//! Each toxic's effect on real sockets (an echo server behind the proxy).
//! Durations are only checked from below: a slow machine can be late but
//! never early.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::harness::*;

#[tokio::test]
async fn latency_delays_each_direction() {
    let p = spawn_proxy().await;
    let echo = spawn_echo().await;
    let addr = p.create("db", echo.addr).await;
    p.toxic("db", json!({"type":"latency","attributes":{"latency":100}}))
        .await;
    p.toxic(
        "db",
        json!({"type":"latency","stream":"upstream","attributes":{"latency":50,"jitter":10}}),
    )
    .await;
    let mut c = connect(addr).await;
    for _ in 0..2 {
        let t = Instant::now();
        c.write_all(b"ping").await.expect("write");
        assert_eq!(read_n(&mut c, 4).await, b"ping");
        assert!(t.elapsed() >= Duration::from_millis(140), "{:?}", t.elapsed());
    }
    p.shutdown().await;
}

#[tokio::test]
async fn bandwidth_paces_bytes() {
    let p = spawn_proxy().await;
    let echo = spawn_echo().await;
    let addr = p.create("db", echo.addr).await;
    // 100 KB/s: 30 000 bytes take at least 300 ms.
    p.toxic("db", json!({"type":"bandwidth","attributes":{"rate":100}}))
        .await;
    let mut c = connect(addr).await;
    let t = Instant::now();
    let data = vec![7u8; 30_000];
    c.write_all(&data).await.expect("write");
    assert_eq!(read_n(&mut c, data.len()).await, data);
    assert!(t.elapsed() >= Duration::from_millis(290), "{:?}", t.elapsed());
    p.shutdown().await;
}

#[tokio::test]
async fn slow_close_delays_the_fin() {
    let p = spawn_proxy().await;
    let echo = spawn_echo().await;
    let addr = p.create("db", echo.addr).await;
    p.toxic("db", json!({"type":"slow_close","attributes":{"delay":200}}))
        .await;
    let mut c = connect(addr).await;
    c.write_all(b"bye").await.expect("write");
    assert_eq!(read_n(&mut c, 3).await, b"bye");
    let t = Instant::now();
    c.shutdown().await.expect("shutdown");
    assert_eq!(read_to_end(&mut c).await, End::Eof(Vec::new()));
    assert!(t.elapsed() >= Duration::from_millis(190), "{:?}", t.elapsed());
    p.shutdown().await;
}

#[tokio::test]
async fn timeout_drops_data_then_closes() {
    let p = spawn_proxy().await;
    let echo = spawn_echo().await;
    let addr = p.create("db", echo.addr).await;
    p.toxic(
        "db",
        json!({"type":"timeout","stream":"upstream","attributes":{"timeout":150}}),
    )
    .await;
    let t = Instant::now();
    let mut c = connect(addr).await;
    c.write_all(b"lost").await.expect("write");
    assert_eq!(read_to_end(&mut c).await, End::Eof(Vec::new()));
    assert!(t.elapsed() >= Duration::from_millis(140), "{:?}", t.elapsed());
    assert_eq!(echo.received.load(SeqCst), 0, "timeout must drop the data");
    let stats = p.stats("db").await;
    assert_eq!(stats["faults"][0]["count"], 1);
    p.shutdown().await;
}

#[tokio::test]
async fn removing_a_timeout_toxic_lets_data_flow_again() {
    let p = spawn_proxy().await;
    let echo = spawn_echo().await;
    let addr = p.create("db", echo.addr).await;
    p.toxic(
        "db",
        json!({"type":"timeout","stream":"upstream","attributes":{"timeout":0}}),
    )
    .await;
    let mut c = connect(addr).await;
    c.write_all(b"lost").await.expect("write");
    // Sync on the proxy having dropped it: the fault is recorded.
    guard("fault recorded", async {
        while p.stats("db").await["faults"].as_array().map(Vec::len) != Some(1) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        p.call("DELETE", "/proxies/db/toxics/timeout_upstream", None)
            .await
            .status,
        204
    );
    // The removal reaches the link at its next event; retry until through.
    let got = guard("flow again", async {
        loop {
            c.write_all(b"x").await.expect("write");
            let mut b = [0u8; 1];
            if tokio::time::timeout(Duration::from_millis(50), c.read_exact(&mut b))
                .await
                .is_ok()
            {
                return b;
            }
        }
    })
    .await;
    assert_eq!(&got, b"x");
    p.shutdown().await;
}

#[tokio::test]
async fn slicer_splits_and_delivers_everything() {
    let p = spawn_proxy().await;
    let echo = spawn_echo().await;
    let addr = p.create("db", echo.addr).await;
    p.toxic(
        "db",
        json!({"type":"slicer","attributes":{"average_size":10,"size_variation":5,"delay":5000}}),
    )
    .await;
    let mut c = connect(addr).await;
    let data: Vec<u8> = (0..200u8).collect();
    c.write_all(&data).await.expect("write");
    let mut got = Vec::new();
    let mut reads = 0;
    while got.len() < data.len() {
        let mut buf = [0u8; 1024];
        let n = guard("read", c.read(&mut buf)).await.expect("read");
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
        reads += 1;
    }
    assert_eq!(got, data);
    assert!(
        reads >= 2,
        "200 bytes in ~10-byte slices 5 ms apart arrived in one read"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn limit_data_closes_after_the_limit() {
    let p = spawn_proxy().await;
    let echo = spawn_echo().await;
    let addr = p.create("db", echo.addr).await;
    p.toxic("db", json!({"type":"limit_data","attributes":{"bytes":10}}))
        .await;
    let mut c = connect(addr).await;
    c.write_all(&[1u8; 25]).await.expect("write");
    match read_to_end(&mut c).await {
        End::Eof(b) | End::Reset(b) => assert_eq!(b, vec![1u8; 10]),
    }
    p.shutdown().await;
}

#[tokio::test]
async fn noop_passes_everything() {
    let p = spawn_proxy().await;
    let echo = spawn_echo().await;
    let addr = p.create("db", echo.addr).await;
    p.toxic("db", json!({"type":"noop"})).await;
    let mut c = connect(addr).await;
    c.write_all(b"through").await.expect("write");
    assert_eq!(read_n(&mut c, 7).await, b"through");
    p.shutdown().await;
}

#[tokio::test]
async fn disabling_closes_the_listener_and_connections() {
    let p = spawn_proxy().await;
    let echo = spawn_echo().await;
    let addr = p.create("db", echo.addr).await;
    let mut live = connect(addr).await;
    live.write_all(b"hi").await.expect("write");
    assert_eq!(read_n(&mut live, 2).await, b"hi");

    let r = p.call("POST", "/proxies/db", Some(r#"{"enabled":false}"#)).await;
    assert_eq!(r.status, 200);
    // New connections are refused at once, live ones are closed.
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "listener still open");
    let mut buf = [0u8; 4];
    let r = guard("closed", live.read(&mut buf)).await;
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");

    let r = p.call("POST", "/proxies/db", Some(r#"{"enabled":true}"#)).await;
    assert_eq!(r.json()["listen"], addr.to_string());
    let mut c = connect(addr).await;
    c.write_all(b"back").await.expect("write");
    assert_eq!(read_n(&mut c, 4).await, b"back");
    p.shutdown().await;
}

#[tokio::test]
async fn per_request_scope_rolls_each_exchange() {
    use chaos_proxy::{Direction, toxicity_roll};
    let p = spawn_proxy().await; // seed 42
    let echo = spawn_echo().await;
    let addr = p.create("kv", echo.addr).await;
    let r = p
        .toxic(
            "kv",
            json!({"name":"r","type":"reset_peer","stream":"upstream","toxicity":0.5,
        "toxicity_scope":"request","attributes":{"timeout":0}}),
        )
        .await;
    assert_eq!(r["toxicity_scope"], "request");
    // The first exchange (1-based) whose roll fires, from the same function
    // the proxy uses: connection 0, upstream, toxic "r".
    let first_reset = (1..100u64)
        .find(|k| toxicity_roll(42, "kv", 0, Direction::Upstream, "r", *k) < 0.5)
        .expect("some exchange fires");
    let mut c = connect(addr).await;
    for k in 1..first_reset {
        c.write_all(b"req").await.expect("write");
        assert_eq!(read_n(&mut c, 3).await, b"req", "exchange {k}");
    }
    c.write_all(b"req").await.expect("write");
    assert_eq!(read_to_end(&mut c).await, End::Reset(Vec::new()));
    assert_eq!(echo.received.load(SeqCst), 3 * (first_reset - 1));
    let log = p.stats("kv").await["fault_log"].clone();
    assert_eq!(log[0]["connection"], 0);
    assert_eq!(log[0]["exchange"], first_reset);
    p.shutdown().await;
}

#[tokio::test]
async fn config_toxics_apply_from_startup() {
    let echo = spawn_echo().await;
    let mut config = chaos_proxy::Config::new(7);
    let text = format!(
        r#"[{{"name":"db","listen":"127.0.0.1:0","upstream":"{}","toxics":[{{"type":"limit_data","attributes":{{"bytes":3}}}}]}}]"#,
        echo.addr
    );
    config.startup_proxies = chaos_proxy::config::parse_config_file(&text).expect("config");
    let p = spawn_proxy_with(config).await;
    let v = p.call("GET", "/proxies/db", None).await.json();
    assert_eq!(v["toxics"][0]["type"], "limit_data");
    let addr: std::net::SocketAddr = v["listen"].as_str().expect("listen").parse().expect("addr");
    let mut c = connect(addr).await;
    c.write_all(b"abcdef").await.expect("write");
    match read_to_end(&mut c).await {
        End::Eof(b) | End::Reset(b) => assert_eq!(b, b"abc"),
    }
    p.shutdown().await;
}
