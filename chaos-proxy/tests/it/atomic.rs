//! A failed create, update or populate changes nothing: the registry and
//! every running listener stay as they were, and a later `/reset` works.
//! (Before, an update to a busy port answered 500 with the proxy stopped and
//! the busy address stored, and every later `/reset` failed on it.)
//! Bind failures answer toxiproxy's status for them, a plain 500 whose
//! error starts with `listen tcp`.

use std::net::SocketAddr;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::harness::*;

/// One byte through `addr` comes back (the proxy serves, upstream echoes).
async fn echoes(addr: SocketAddr) {
    let mut c = connect(addr).await;
    c.write_all(b"e").await.expect("write");
    assert_eq!(read_n(&mut c, 1).await, b"e");
}

/// A port held by someone else for as long as the listener lives.
async fn busy_port() -> (tokio::net::TcpListener, String) {
    let busy = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    (busy, addr)
}

fn assert_bind_failure(r: &Resp) {
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(
        r.json()["error"].as_str().expect("error").starts_with("listen tcp"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn a_failed_update_changes_nothing_and_reset_still_works() {
    let p = spawn_proxy().await;
    let a = spawn_echo().await;
    let b = spawn_echo().await;
    let addr = p.create("db", a.addr).await;
    p.toxic("db", json!({"type":"latency","attributes":{"latency":1}}))
        .await;
    let before = p.call("GET", "/proxies/db", None).await.body;
    let (_busy, busy) = busy_port().await;

    // Listen on a busy port, alone and together with an upstream change.
    for body in [
        json!({"listen": busy}),
        json!({"listen": busy, "upstream": b.addr.to_string()}),
        json!({"listen": busy, "enabled": true}),
    ] {
        let r = p.call("POST", "/proxies/db", Some(&body.to_string())).await;
        assert_bind_failure(&r);
        assert_eq!(p.call("GET", "/proxies/db", None).await.body, before, "after {body}");
        echoes(addr).await;
    }
    assert_eq!(b.connections.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(p.call("POST", "/reset", None).await.status, 204);
    assert_eq!(
        p.call("GET", "/proxies/db", None).await.json()["listen"],
        addr.to_string()
    );
    echoes(addr).await;
    p.shutdown().await;
}

#[tokio::test]
async fn enabling_on_a_busy_port_leaves_the_proxy_disabled_as_it_was() {
    let p = spawn_proxy().await;
    let a = spawn_echo().await;
    let addr = p.create("db", a.addr).await;
    let r = p.call("POST", "/proxies/db", Some(r#"{"enabled":false}"#)).await;
    assert_eq!(r.status, 200);
    let before = p.call("GET", "/proxies/db", None).await.body;
    // Someone else takes the port while the proxy is down.
    let squatter = tokio::net::TcpListener::bind(addr).await.expect("take the port");
    let r = p.call("POST", "/proxies/db", Some(r#"{"enabled":true}"#)).await;
    assert_bind_failure(&r);
    assert_eq!(p.call("GET", "/proxies/db", None).await.body, before);
    // /reset reports the same failure and changes nothing else; once the
    // port is free again it works.
    assert_bind_failure(&p.call("POST", "/reset", None).await);
    drop(squatter);
    assert_eq!(p.call("POST", "/reset", None).await.status, 204);
    echoes(addr).await;
    p.shutdown().await;
}

#[tokio::test]
async fn an_upstream_change_keeps_the_listening_socket() {
    let p = spawn_proxy().await;
    let a = spawn_echo().await;
    let b = spawn_echo().await;
    let addr = p.create("db", a.addr).await;
    let mut old = connect(addr).await;
    old.write_all(b"o").await.expect("write");
    assert_eq!(read_n(&mut old, 1).await, b"o");
    let body = json!({"upstream": b.addr.to_string()}).to_string();
    let r = p.call("POST", "/proxies/db", Some(&body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["listen"], addr.to_string());
    // toxiproxy closes the connections of a changed proxy; new ones go to b.
    assert_eq!(read_to_end(&mut old).await, End::Eof(Vec::new()));
    echoes(addr).await;
    assert_eq!(b.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    p.shutdown().await;
}

#[tokio::test]
async fn a_failed_create_changes_nothing() {
    let p = spawn_proxy().await;
    let (_busy, busy) = busy_port().await;
    let body = json!({"name":"a","listen": busy,"upstream":"127.0.0.1:9"}).to_string();
    assert_bind_failure(&p.call("POST", "/proxies", Some(&body)).await);
    assert_eq!(p.call("GET", "/proxies", None).await.body, "{}");
    assert_eq!(p.call("POST", "/reset", None).await.status, 204);
    p.shutdown().await;
}

/// The whole proxy list.
async fn snapshot(p: &TestProxy) -> Value {
    let r = p.call("GET", "/proxies", None).await;
    assert_eq!(r.status, 200);
    r.json()
}

#[tokio::test]
async fn populate_is_all_or_nothing() {
    let p = spawn_proxy().await;
    let a = spawn_echo().await;
    let b = spawn_echo().await;
    let keep = p.create("keep", a.addr).await;
    let moved = p.create("moved", a.addr).await;
    p.toxic("moved", json!({"type":"latency","attributes":{"latency":1}}))
        .await;
    let before = snapshot(&p).await;
    let (_busy, busy) = busy_port().await;

    // A replacement, a new proxy, then one that cannot bind.
    let fails_last = json!([
        {"name":"moved","listen":"127.0.0.1:0","upstream": b.addr.to_string()},
        {"name":"new","listen":"127.0.0.1:0","upstream": b.addr.to_string()},
        {"name":"bad","listen": busy,"upstream": b.addr.to_string()},
    ]);
    // Two new proxies on the same free port: the second bind fails.
    let free = {
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        probe.local_addr().expect("addr").to_string()
    };
    let same_port = json!([
        {"name":"x","listen": free,"upstream": b.addr.to_string()},
        {"name":"y","listen": free,"upstream": b.addr.to_string()},
    ]);
    for body in [fails_last, same_port] {
        let r = p.call("POST", "/populate", Some(&body.to_string())).await;
        assert_bind_failure(&r);
        assert_eq!(r.json()["proxies"], Value::Null);
        assert_eq!(snapshot(&p).await, before, "after {body}");
        echoes(keep).await;
        echoes(moved).await;
    }
    assert_eq!(b.connections.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(p.call("POST", "/reset", None).await.status, 204);
    // The same port is free again: its sockets were closed.
    let body = json!([{"name":"x","listen": free,"upstream": b.addr.to_string()}]);
    assert_eq!(p.call("POST", "/populate", Some(&body.to_string())).await.status, 201);
    p.shutdown().await;
}
