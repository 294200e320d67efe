//! The control plane never waits on the data plane; limits hold.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// toxiproxy #558: deleting toxics under traffic hangs its API. Here every
/// API call completes while connections stream through latency, bandwidth
/// and timeout toxics, including one whose client never reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxic_churn_under_traffic_never_hangs_the_api() {
    let p = spawn_proxy().await;
    let echo = spawn_echo().await;
    let addr = p.create("db", echo.addr).await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut stop = stop_rx.clone();
        clients.push(tokio::spawn(async move {
            let mut c = connect(addr).await;
            let chunk = vec![i as u8; 8 * 1024];
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    w = c.write_all(&chunk) => if w.is_err() { break },
                }
                // Client 0 never reads: its socket buffers fill up and the
                // proxy's writes toward it block.
                if i != 0 {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        r = c.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
                    }
                }
            }
        }));
    }

    let kinds = [
        json!({"type":"latency","attributes":{"latency":5,"jitter":2}}),
        json!({"type":"bandwidth","stream":"upstream","attributes":{"rate":500}}),
        json!({"type":"slicer","attributes":{"average_size":100,"delay":10}}),
        json!({"type":"timeout","stream":"upstream","attributes":{"timeout":0}}),
    ];
    for round in 0..25 {
        for k in &kinds {
            let t = p.toxic("db", k.clone()).await;
            let name = t["name"].as_str().expect("name").to_owned();
            if round % 2 == 0 {
                let r = p
                    .call(
                        "PATCH",
                        &format!("/proxies/db/toxics/{name}"),
                        Some(r#"{"toxicity":0.5}"#),
                    )
                    .await;
                assert_eq!(r.status, 200);
            }
            let r = p.call("DELETE", &format!("/proxies/db/toxics/{name}"), None).await;
            assert_eq!(r.status, 204);
        }
    }
    // Disabling under traffic does not hang either, and closes the clients.
    let r = p.call("POST", "/proxies/db", Some(r#"{"enabled":false}"#)).await;
    assert_eq!(r.status, 200);
    stop_tx.send_replace(true);
    for c in clients {
        guard("client", c).await.expect("client task");
    }
    assert_eq!(p.call("DELETE", "/proxies/db", None).await.status, 204);
    p.shutdown().await;
}

#[tokio::test]
async fn connection_cap_resets_the_excess() {
    let echo = spawn_echo().await;
    let mut config = chaos_proxy::Config::new(1);
    config.connections_count_max = 2;
    let p = spawn_proxy_with(config).await;
    let addr = p.create("db", echo.addr).await;
    let mut a = connect(addr).await;
    let mut b = connect(addr).await;
    for c in [&mut a, &mut b] {
        c.write_all(b"x").await.expect("write");
        assert_eq!(read_n(c, 1).await, b"x");
    }
    let mut extra = connect(addr).await;
    let _ = extra.write_all(b"x").await;
    assert!(matches!(read_to_end(&mut extra).await, End::Reset(_) | End::Eof(_)));
    assert_eq!(p.stats("db").await["connections"]["rejected"], 1);
    // Closing one frees a slot.
    drop(a);
    guard("slot freed", async {
        while p.stats("db").await["connections"]["active"] != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let mut c = connect(addr).await;
    c.write_all(b"y").await.expect("write");
    assert_eq!(read_n(&mut c, 1).await, b"y");
    p.shutdown().await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let echo = spawn_echo().await;
    let mut config = chaos_proxy::Config::new(1);
    config.idle_timeout = Duration::from_millis(100);
    let p = spawn_proxy_with(config).await;
    let addr = p.create("db", echo.addr).await;
    let mut c = connect(addr).await;
    c.write_all(b"x").await.expect("write");
    assert_eq!(read_n(&mut c, 1).await, b"x");
    assert_eq!(read_to_end(&mut c).await, End::Eof(Vec::new()));
    p.shutdown().await;
}

#[tokio::test]
async fn update_moves_the_listener_and_upstream() {
    let p = spawn_proxy().await;
    let a = spawn_echo().await;
    let b = spawn_echo().await;
    let addr = p.create("db", a.addr).await;
    let r = p
        .call(
            "POST",
            "/proxies/db",
            Some(&format!(r#"{{"upstream":"{}","listen":"127.0.0.1:0"}}"#, b.addr)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let moved: std::net::SocketAddr = r.json()["listen"].as_str().expect("listen").parse().expect("addr");
    assert_ne!(moved, addr);
    let mut c = connect(moved).await;
    c.write_all(b"z").await.expect("write");
    assert_eq!(read_n(&mut c, 1).await, b"z");
    assert_eq!(b.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A bad update changes nothing.
    let r = p.call("POST", "/proxies/db", Some(r#"{"upstream":"nohost"}"#)).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        p.call("GET", "/proxies/db", None).await.json()["upstream"],
        b.addr.to_string()
    );
    p.shutdown().await;
}

/// Slow clients (a request head trickled byte by byte, never finished) used
/// to take all 64 API slots: 70 of them made the API unreachable. Now the API
/// has room for them and still answers.
#[tokio::test]
async fn the_api_answers_while_slow_clients_hold_connections() {
    let p = spawn_proxy().await;
    let mut slow = Vec::new();
    for _ in 0..150 {
        let mut s = connect(p.api).await;
        s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        slow.push(s);
    }
    let r = guard("version during the attack", p.call("GET", "/version", None)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    p.shutdown().await;
}
