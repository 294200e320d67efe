//! Input the API refuses with a 400 in toxiproxy's error shape, changing
//! nothing: out-of-range toxicity, a name twice in one populate, names that
//! are not printable.

use serde_json::{Value, json};

use crate::harness::*;

fn assert_400(r: &Resp, expected: &str) {
    assert_eq!(r.status, 400, "{}", r.body);
    let v = r.json();
    assert_eq!(v["status"], 400, "{}", r.body);
    let error = v["error"].as_str().expect("error");
    assert!(error.contains(expected), "{error:?} does not contain {expected:?}");
}

/// toxiproxy stores a toxicity of 7 or -1 and clamps its effect; here it
/// must be a finite number in [0, 1], on create and on update.
#[tokio::test]
async fn toxicity_must_be_a_probability() {
    let p = spawn_proxy().await;
    p.create("db", "127.0.0.1:9".parse().expect("addr")).await;
    let t = p
        .toxic("db", json!({"type":"latency","name":"lat","toxicity":0.5}))
        .await;
    let bad: [(&str, &str); 6] = [
        ("-0.1", "toxicity must be a number from 0 to 1"),
        ("-1", "toxicity must be a number from 0 to 1"),
        ("1.0001", "toxicity must be a number from 0 to 1"),
        ("7", "toxicity must be a number from 0 to 1"),
        // Not numbers JSON can hold: the decoder refuses them.
        ("1e999", "bad request body"),
        ("\"NaN\"", "bad request body"),
    ];
    for (value, expected) in bad {
        let create = format!(r#"{{"type":"latency","name":"new","toxicity":{value}}}"#);
        assert_400(&p.call("POST", "/proxies/db/toxics", Some(&create)).await, expected);
        let update = format!(r#"{{"toxicity":{value}}}"#);
        assert_400(&p.call("POST", "/proxies/db/toxics/lat", Some(&update)).await, expected);
        let listed = p.call("GET", "/proxies/db/toxics", None).await.json();
        assert_eq!(listed, json!([t]), "after toxicity {value}");
    }
    let populate = json!([{"name":"cfg","upstream":"127.0.0.1:9","listen":"127.0.0.1:0",
                           "toxics":[{"type":"latency","toxicity":1.5}]}]);
    assert_400(
        &p.call("POST", "/populate", Some(&populate.to_string())).await,
        "toxicity must be a number from 0 to 1",
    );
    assert_eq!(p.call("GET", "/proxies/cfg", None).await.status, 404);
    // The ends of the range are fine.
    for value in [0, 1] {
        let r = p
            .call(
                "PATCH",
                "/proxies/db/toxics/lat",
                Some(&format!(r#"{{"toxicity":{value}}}"#)),
            )
            .await;
        assert_eq!((r.status, r.json()["toxicity"].clone()), (200, json!(value)));
    }
    p.shutdown().await;
}

async fn proxies(p: &TestProxy) -> Value {
    p.call("GET", "/proxies", None).await.json()
}

/// The same name twice in one populate is a 400 naming the second item, in
/// populate's JSON error shape, and nothing is created or replaced.
#[tokio::test]
async fn populate_refuses_a_name_given_twice() {
    let p = spawn_proxy().await;
    let echo = spawn_echo().await;
    p.create("x", echo.addr).await;
    let before = proxies(&p).await;
    let item = |name: &str, upstream: &str| json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream});
    for body in [
        json!([
            item("a", "127.0.0.1:9"),
            item("b", "127.0.0.1:9"),
            item("a", "127.0.0.1:9")
        ]),
        json!([item("x", &echo.addr.to_string()), item("x", "127.0.0.1:9")]),
    ] {
        let r = p.call("POST", "/populate", Some(&body.to_string())).await;
        assert_eq!(r.content_type, "application/json");
        assert_400(&r, "given twice at proxy");
        assert_eq!(r.json()["proxies"], Value::Null);
        assert_eq!(proxies(&p).await, before, "after {body}");
    }
    p.shutdown().await;
}

/// Names are printable: at most 256 bytes, no control characters; any
/// other character (spaces, non-ASCII) is fine.
#[tokio::test]
async fn names_are_printable() {
    let p = spawn_proxy().await;
    let long = "n".repeat(257);
    let bad = [
        "a\nb",
        "nul\u{0}",
        "tab\there",
        "del\u{7f}",
        "nel\u{85}",
        "esc\u{1b}[2J",
        long.as_str(),
    ];
    let proxy = |name: &str| json!({"name": name, "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"});
    for name in bad {
        let expected = if name.len() > 256 {
            "name longer than 256 bytes"
        } else {
            "name must be printable"
        };
        assert_400(
            &p.call("POST", "/proxies", Some(&proxy(name).to_string())).await,
            expected,
        );
        let r = p
            .call("POST", "/populate", Some(&json!([proxy(name)]).to_string()))
            .await;
        assert_400(&r, expected);
        assert_eq!(proxies(&p).await, json!({}), "after {name:?}");
    }
    for name in ["my proxy", "päyment-ü", "redis:6379", &"n".repeat(256)] {
        let r = p.call("POST", "/proxies", Some(&proxy(name).to_string())).await;
        assert_eq!(r.status, 201, "{name:?}: {}", r.body);
    }

    let before = p.call("GET", "/proxies/my%20proxy/toxics", None).await.json();
    for name in bad {
        let toxic = json!({"type": "latency", "name": name});
        let expected = if name.len() > 256 {
            "name longer than 256 bytes"
        } else {
            "name must be printable"
        };
        assert_400(
            &p.call("POST", "/proxies/my%20proxy/toxics", Some(&toxic.to_string()))
                .await,
            expected,
        );
        let with_toxic = json!([{"name": "t", "upstream": "127.0.0.1:9", "toxics": [toxic]}]);
        assert_400(
            &p.call("POST", "/populate", Some(&with_toxic.to_string())).await,
            expected,
        );
    }
    assert_eq!(p.call("GET", "/proxies/my%20proxy/toxics", None).await.json(), before);
    assert_eq!(p.call("GET", "/proxies/t", None).await.status, 404);
    p.shutdown().await;
}
