//! A proxy whose upstream leads back to itself is refused (before, one
//! connection through it fanned out into 1,024), alone or through other
//! proxies of the server, with a 400 in toxiproxy's error shape, and the
//! refused change changes nothing.

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::harness::*;

/// A loopback port nobody listens on (bound, then released).
async fn free_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

fn assert_loop_refused(r: &Resp, expected: &str) {
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.content_type.starts_with("text/plain"), "{}", r.content_type);
    let v = r.json();
    assert_eq!(v["status"], 400);
    let error = v["error"].as_str().expect("error");
    assert!(error.starts_with("proxy loop") && error.contains(expected), "{error}");
}

async fn proxies(p: &TestProxy) -> Value {
    p.call("GET", "/proxies", None).await.json()
}

#[tokio::test]
async fn an_upstream_that_is_the_proxy_itself_is_refused() {
    let p = spawn_proxy().await;
    let port = free_port().await;
    for (listen, upstream) in [
        ("127.0.0.1", "127.0.0.1"),
        ("localhost", "127.0.0.1"),
        ("0.0.0.0", "localhost"),
        ("127.0.0.1", "payment"),
        ("", "127.0.0.1"),
    ] {
        let body = json!({"name":"me","listen": format!("{listen}:{port}"),"upstream": format!("{upstream}:{port}")});
        let r = p.call("POST", "/proxies", Some(&body.to_string())).await;
        assert_loop_refused(&r, "is its own listen address");
        let r = p.call("POST", "/populate", Some(&json!([body]).to_string())).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(proxies(&p).await, json!({}));
    }
    // Nothing holds the port.
    drop(
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("port still free"),
    );

    // Updating an existing proxy onto itself, by upstream or by listen.
    let echo = spawn_echo().await;
    let addr = p.create("db", echo.addr).await;
    let before = proxies(&p).await;
    let other = free_port().await;
    for body in [
        json!({"upstream": addr.to_string()}),
        json!({"upstream": format!("localhost:{}", addr.port())}),
        json!({"listen": format!("127.0.0.1:{other}"), "upstream": format!("127.0.0.1:{other}")}),
        json!({"listen": format!("127.0.0.1:{}", echo.addr.port())}),
    ] {
        let r = p.call("POST", "/proxies/db", Some(&body.to_string())).await;
        if body.get("upstream").is_some() {
            assert_loop_refused(&r, "is its own listen address");
        } else {
            // The echo server's port is busy: a bind failure, not a loop.
            assert_eq!(r.status, 500, "{}", r.body);
        }
        assert_eq!(proxies(&p).await, before, "after {body}");
    }
    let mut c = connect(addr).await;
    c.write_all(b"x").await.expect("write");
    assert_eq!(read_n(&mut c, 1).await, b"x");
    p.shutdown().await;
}

#[tokio::test]
async fn a_cycle_through_other_proxies_is_refused() {
    let p = spawn_proxy().await;
    let echo = spawn_echo().await;
    let a = p.create("a", echo.addr).await;
    let b = p.create("b", a).await;
    // A chain is fine: b -> a -> echo.
    let mut c = connect(b).await;
    c.write_all(b"chain").await.expect("write");
    assert_eq!(read_n(&mut c, 5).await, b"chain");
    drop(c);

    let before = proxies(&p).await;
    let body = json!({"upstream": b.to_string()}).to_string();
    assert_loop_refused(&p.call("POST", "/proxies/a", Some(&body)).await, "a -> b -> a");
    assert_eq!(proxies(&p).await, before);

    // Through a disabled proxy as well: enabling it later must not close a
    // loop unchecked.
    let r = p.call("POST", "/proxies/b", Some(r#"{"enabled":false}"#)).await;
    assert_eq!(r.status, 200);
    let before = proxies(&p).await;
    assert_loop_refused(&p.call("POST", "/proxies/a", Some(&body)).await, "a -> b -> a");
    assert_eq!(proxies(&p).await, before);

    // Within one populate, and through an existing proxy.
    let (pc, pd) = (free_port().await, free_port().await);
    let pair = json!([
        {"name":"c","listen": format!("127.0.0.1:{pc}"),"upstream": format!("127.0.0.1:{pd}")},
        {"name":"d","listen": format!("127.0.0.1:{pd}"),"upstream": format!("127.0.0.1:{pc}")},
    ]);
    let into_a = json!([{"name":"e","listen": format!("127.0.0.1:{pc}"),"upstream": a.to_string()},
                        {"name":"a","listen": a.to_string(),"upstream": format!("127.0.0.1:{pc}")}]);
    for body in [pair, into_a] {
        let r = p.call("POST", "/populate", Some(&body.to_string())).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            r.json()["error"].as_str().expect("error").starts_with("proxy loop"),
            "{}",
            r.body
        );
        assert_eq!(proxies(&p).await, before, "after {body}");
    }
    p.shutdown().await;
}
