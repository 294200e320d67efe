//! Every API route's status and body, the error cases included.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn proxy_crud_statuses_and_shapes() {
    let p = spawn_proxy().await;
    let echo = spawn_echo().await;

    let r = p.call("GET", "/proxies", None).await;
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));
    assert_eq!(r.content_type, "application/json");

    // Create: 201, the real port echoed, toxics always present, key order.
    let body = format!(r#"{{"name":"db","listen":"127.0.0.1:0","upstream":"{}"}}"#, echo.addr);
    let r = p.call("POST", "/proxies", Some(&body)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    let listen = v["listen"].as_str().expect("listen").to_owned();
    assert!(listen.starts_with("127.0.0.1:") && !listen.ends_with(":0"), "{listen}");
    assert_eq!(
        r.body,
        format!(
            r#"{{"name":"db","listen":"{listen}","upstream":"{}","enabled":true,"toxics":[]}}"#,
            echo.addr
        )
    );

    // Duplicate: 409 in the error shape, as text/plain with a newline.
    let r = p.call("POST", "/proxies", Some(&body)).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body, "{\"error\":\"proxy already exists\",\"status\":409}\n");
    assert!(r.content_type.starts_with("text/plain"));

    let r = p.call("GET", "/proxies/db", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["listen"], listen.as_str());
    let r = p.call("GET", "/proxies", None).await;
    assert_eq!(r.json()["db"]["name"], "db");

    // Update with POST (all third-party clients) and PATCH (the Go CLI).
    let r = p.call("POST", "/proxies/db", Some(r#"{"enabled":false}"#)).await;
    assert_eq!((r.status, r.json()["enabled"].clone()), (200, json!(false)));
    let r = p.call("PATCH", "/proxies/db", Some(r#"{"enabled":true}"#)).await;
    assert_eq!((r.status, r.json()["enabled"].clone()), (200, json!(true)));
    // The same listen (what the Go CLI's toggle posts back) keeps the port.
    assert_eq!(r.json()["listen"], listen.as_str());

    let r = p.call("DELETE", "/proxies/db", None).await;
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    let r = p.call("DELETE", "/proxies/db", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, "{\"error\":\"proxy not found\",\"status\":404}\n");
    for (m, path) in [
        ("GET", "/proxies/db"),
        ("POST", "/proxies/db"),
        ("PATCH", "/proxies/db"),
    ] {
        let r = p.call(m, path, Some("{}")).await;
        assert_eq!(r.status, 404, "{m} {path}");
    }
    p.shutdown().await;
}

#[tokio::test]
async fn proxy_create_errors() {
    let p = spawn_proxy().await;
    let cases = [
        ("", 400, "bad request body: EOF"),
        ("{", 400, ""),
        ("[1]", 400, ""),
        (r#"{"upstream":"127.0.0.1:1"}"#, 400, "missing required field: name"),
        (r#"{"name":"a"}"#, 400, "missing required field: upstream"),
        (r#"{"name":"a","upstream":"http://x:80"}"#, 400, ""),
        (r#"{"name":"a","upstream":"127.0.0.1"}"#, 400, ""),
        (r#"{"name":"a","upstream":"10.1.2.3:80"}"#, 400, ""),
        (
            r#"{"name":"a","upstream":"127.0.0.1:1","listen":"10.1.2.3:80"}"#,
            400,
            "",
        ),
        (r#"{"name":"a","upstream":"127.0.0.1:1","enabled":"yes"}"#, 400, ""),
    ];
    for (body, status, msg) in cases {
        let r = p.call("POST", "/proxies", Some(body)).await;
        assert_eq!(r.status, status, "{body} -> {}", r.body);
        let v = r.json();
        assert_eq!(v["status"], status, "{body}");
        assert!(
            v["error"].as_str().expect("error").contains(msg),
            "{body} -> {}",
            r.body
        );
    }
    // Nothing was created, and the server still serves.
    assert_eq!(p.call("GET", "/proxies", None).await.body, "{}");

    // A busy port is toxiproxy's plain 500.
    let busy = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let body = format!(
        r#"{{"name":"a","listen":"{}","upstream":"127.0.0.1:1"}}"#,
        busy.local_addr().expect("addr")
    );
    let r = p.call("POST", "/proxies", Some(&body)).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.json()["error"].as_str().expect("error").starts_with("listen tcp"));
    p.shutdown().await;
}

#[tokio::test]
async fn toxic_crud_defaults_order_and_errors() {
    let p = spawn_proxy().await;
    let echo = spawn_echo().await;
    p.create("db", echo.addr).await;

    // Create is 200 (not 201) with toxiproxy's defaults filled in.
    let r = p
        .call(
            "POST",
            "/proxies/db/toxics",
            Some(r#"{"type":"latency","attributes":{"latency":10}}"#),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        r#"{"attributes":{"latency":10,"jitter":0},"name":"latency_downstream","type":"latency","stream":"downstream","toxicity":1}"#
    );
    // Names are unique across both directions.
    let r = p
        .call(
            "POST",
            "/proxies/db/toxics",
            Some(r#"{"type":"latency","name":"latency_downstream","stream":"upstream"}"#),
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body, "{\"error\":\"toxic already exists\",\"status\":409}\n");
    p.toxic(
        "db",
        json!({"type":"reset_peer","stream":"upstream","toxicity":0.3,"attributes":{"timeout":1}}),
    )
    .await;

    // Listing: upstream toxics first, then downstream ones.
    let r = p.call("GET", "/proxies/db/toxics", None).await;
    let names: Vec<String> = r
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|t| t["name"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(names, ["reset_peer_upstream", "latency_downstream"]);
    assert_eq!(
        p.call("GET", "/proxies/db", None).await.json()["toxics"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // Get / update (POST and PATCH merge attributes; name/type/stream fixed).
    let r = p.call("GET", "/proxies/db/toxics/reset_peer_upstream", None).await;
    assert_eq!(r.json()["toxicity"], json!(0.3));
    let r = p
        .call(
            "PATCH",
            "/proxies/db/toxics/latency_downstream",
            Some(r#"{"attributes":{"jitter":5},"type":"noop","stream":"upstream"}"#),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["attributes"], json!({"latency":10,"jitter":5}));
    assert_eq!(r.json()["stream"], "downstream");
    let r = p
        .call(
            "POST",
            "/proxies/db/toxics/latency_downstream",
            Some(r#"{"toxicity":0.5,"toxicity_scope":"request"}"#),
        )
        .await;
    assert_eq!(r.json()["toxicity"], json!(0.5));
    assert_eq!(r.json()["toxicity_scope"], "request");

    // Errors.
    let cases = [
        (
            "POST",
            "/proxies/nope/toxics",
            r#"{"type":"latency"}"#,
            404,
            "proxy not found",
        ),
        (
            "POST",
            "/proxies/db/toxics",
            r#"{"type":"down"}"#,
            400,
            "invalid toxic type",
        ),
        (
            "POST",
            "/proxies/db/toxics",
            r#"{"type":"latency","stream":"both"}"#,
            400,
            "stream was invalid, can be either upstream or downstream",
        ),
        (
            "POST",
            "/proxies/db/toxics",
            r#"{"type":"latency","name":"x","attributes":{"latency":100.0}}"#,
            400,
            "bad request body",
        ),
        (
            "POST",
            "/proxies/db/toxics",
            r#"{"type":"latency","name":"x","attributes":{"latency":"100"}}"#,
            400,
            "bad request body",
        ),
        ("POST", "/proxies/db/toxics", "", 400, "bad request body: EOF"),
        ("GET", "/proxies/db/toxics/nope", "", 404, "toxic not found"),
        ("GET", "/proxies/nope/toxics/x", "", 404, "proxy not found"),
        ("GET", "/proxies/nope/toxics", "", 404, "proxy not found"),
        ("PATCH", "/proxies/db/toxics/nope", "{}", 404, "toxic not found"),
        (
            "PATCH",
            "/proxies/db/toxics/latency_downstream",
            "",
            400,
            "bad request body: EOF",
        ),
        (
            "PATCH",
            "/proxies/db/toxics/latency_downstream",
            r#"{"attributes":{"latency":1.5}}"#,
            400,
            "bad request body",
        ),
        ("DELETE", "/proxies/db/toxics/nope", "", 404, "toxic not found"),
    ];
    for (m, path, body, status, msg) in cases {
        let r = p.call(m, path, Some(body)).await;
        assert_eq!(r.status, status, "{m} {path} {body} -> {}", r.body);
        assert!(
            r.json()["error"].as_str().expect("error").contains(msg),
            "{m} {path} -> {}",
            r.body
        );
    }
    // A rejected update changed nothing.
    let r = p.call("GET", "/proxies/db/toxics/latency_downstream", None).await;
    assert_eq!(r.json()["attributes"], json!({"latency":10,"jitter":5}));

    let r = p.call("DELETE", "/proxies/db/toxics/latency_downstream", None).await;
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    assert_eq!(
        p.call("GET", "/proxies/db/toxics", None)
            .await
            .json()
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    p.shutdown().await;
}

#[tokio::test]
async fn workshop_requests_work_unmodified() {
    // toxi.http, byte for byte, except the listen port (a random one here,
    // so that tests never collide) and the upstream port.
    let p = spawn_proxy().await;
    let http = spawn_counting_http().await;
    let port = http.addr.port();
    let r = p.call("GET", "/proxies", None).await;
    assert_eq!(r.status, 200);
    let populate =
        format!(r#"[{{"name": "payment", "listen": "0.0.0.0:0", "upstream": "payment:{port}", "enabled": true}}]"#);
    let r = p.call("POST", "/populate", Some(&populate)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    let listen = v["proxies"][0]["listen"].as_str().expect("listen").to_owned();
    // The wildcard was bound on loopback, and the real port is echoed.
    assert!(listen.starts_with("127.0.0.1:"), "{listen}");
    assert_eq!(v["proxies"][0]["upstream"], format!("payment:{port}"));

    // Traffic reaches the service through the `payment` alias.
    let proxy: std::net::SocketAddr = listen.parse().expect("addr");
    assert!(is_ok(&raw_payment(proxy).await));

    let up = r#"{"name": "reset-peer-upstream", "type": "reset_peer", "stream": "upstream", "toxicity": 0.3, "attributes": {"timeout": 1}}"#;
    let down = r#"{"name": "reset-peer-downstream", "type": "reset_peer", "stream": "downstream", "toxicity": 0.3, "attributes": {"timeout": 1}}"#;
    let r = p.call("POST", "/proxies/payment/toxics", Some(up)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        r#"{"attributes":{"timeout":1},"name":"reset-peer-upstream","type":"reset_peer","stream":"upstream","toxicity":0.3}"#
    );
    assert_eq!(p.call("POST", "/proxies/payment/toxics", Some(down)).await.status, 200);
    // Sending a toxic twice gives 409, as the workshop README warns.
    assert_eq!(p.call("POST", "/proxies/payment/toxics", Some(down)).await.status, 409);

    // Populating again with the same proxy keeps it (and its toxics).
    let r = p
        .call("POST", "/populate", Some(&populate.replace("0.0.0.0:0", &listen)))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["proxies"][0]["toxics"].as_array().map(Vec::len), Some(2));

    let r = p.call("POST", "/reset", None).await;
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    let r = p.call("GET", "/proxies/payment", None).await;
    assert_eq!(r.json()["toxics"], json!([]));
    assert_eq!(r.json()["enabled"], true);
    p.shutdown().await;
}

#[tokio::test]
async fn populate_shapes_and_errors() {
    let p = spawn_proxy().await;
    let r = p.call("POST", "/populate", Some("[]")).await;
    assert_eq!((r.status, r.body.as_str()), (201, r#"{"proxies":[]}"#));

    // Validated up front: nothing is created when item 2 is bad.
    let body = r#"[{"name":"a","upstream":"127.0.0.1:1","listen":"127.0.0.1:0"},{"upstream":"127.0.0.1:1"}]"#;
    let r = p.call("POST", "/populate", Some(body)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.content_type, "application/json");
    assert_eq!(
        r.body,
        r#"{"error":"missing required field: name at proxy 2","status":400,"proxies":null}"#
    );
    assert_eq!(p.call("GET", "/proxies", None).await.body, "{}");
    let r = p.call("POST", "/populate", Some(r#"{"name":"a"}"#)).await;
    assert_eq!(r.status, 400);

    // Extension: toxics in populate items.
    let body = r#"[{"name":"a","upstream":"127.0.0.1:1","listen":"127.0.0.1:0","toxics":[{"type":"latency","attributes":{"latency":5}}]},
                   {"name":"b","upstream":"127.0.0.1:1","listen":"127.0.0.1:0","enabled":false}]"#;
    let r = p.call("POST", "/populate", Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    assert_eq!(v["proxies"][0]["toxics"][0]["name"], "latency_downstream");
    // A disabled proxy keeps the listen string it was given.
    assert_eq!(v["proxies"][1]["listen"], "127.0.0.1:0");
    assert_eq!(v["proxies"][1]["enabled"], false);
    // A bad toxic in an item is a 400 naming the item.
    let body = r#"[{"name":"c","upstream":"127.0.0.1:1","toxics":[{"type":"nope"}]}]"#;
    let r = p.call("POST", "/populate", Some(body)).await;
    assert_eq!(r.json()["error"], "invalid toxic type at proxy 1");

    // A start failure mid-list: toxiproxy's 500 in populate's JSON shape,
    // but all or nothing (toxiproxy keeps the proxies created before it).
    let busy = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let body = format!(
        r#"[{{"name":"c","upstream":"127.0.0.1:1","listen":"127.0.0.1:0"}},{{"name":"d","upstream":"127.0.0.1:1","listen":"{}"}}]"#,
        busy.local_addr().expect("addr")
    );
    let r = p.call("POST", "/populate", Some(&body)).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.content_type, "application/json");
    assert!(r.json()["error"].as_str().expect("error").starts_with("listen tcp"));
    assert_eq!(r.json()["proxies"], serde_json::Value::Null);
    assert_eq!(p.call("GET", "/proxies/c", None).await.status, 404);

    // /reset enables proxies created disabled.
    assert_eq!(p.call("POST", "/reset", Some("ignored")).await.status, 204);
    assert_eq!(p.call("GET", "/proxies/b", None).await.json()["enabled"], true);
    p.shutdown().await;
}

#[tokio::test]
async fn version_guards_and_unknown_routes() {
    let p = spawn_proxy().await;
    let r = p.call("GET", "/version", None).await;
    assert_eq!((r.status, r.body.as_str()), (200, "{\"version\": \"2.12.0\"}\n"));
    assert_eq!(r.content_type, "application/json;charset=utf-8");

    let r = p.call("GET", "/chaos", None).await;
    assert_eq!(r.json()["seed"], 42);

    let r = p.call("GET", "/nope", None).await;
    assert_eq!((r.status, r.body.as_str()), (404, "404 page not found\n"));
    let r = p.call("GET", "/proxies/", None).await;
    assert_eq!(r.status, 404);
    let r = p.call("DELETE", "/proxies", None).await;
    assert_eq!((r.status, r.body.as_str()), (405, ""));
    let r = p.call("GET", "/reset", None).await;
    assert_eq!(r.status, 405);

    // The CSRF guard: browsers are refused, everything else is served.
    let r = guard(
        "browser",
        p.http
            .get(p.url("/proxies"))
            .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")
            .send(),
    )
    .await
    .expect("send");
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.headers().contains_key("x-toxiproxy-request-id"));
    assert_eq!(guard("body", r.text()).await.expect("body"), "User agent not allowed\n");

    // An oversized body is refused with a precise 413 in the error shape.
    let big = format!("[{}]", "1,".repeat(600_000) + "1");
    let r = p.call("POST", "/populate", Some(&big)).await;
    assert_eq!(r.status, 413, "{}", &r.body[..r.body.len().min(200)]);
    p.shutdown().await;
}

#[tokio::test]
async fn stats_extension() {
    let p = spawn_proxy().await;
    let echo = spawn_echo().await;
    let addr = p.create("db", echo.addr).await;
    let mut s = connect(addr).await;
    tokio::io::AsyncWriteExt::write_all(&mut s, b"hello")
        .await
        .expect("write");
    assert_eq!(read_n(&mut s, 5).await, b"hello");
    drop(s);
    let v = p.stats("db").await;
    assert_eq!(v["proxy"], "db");
    assert_eq!(v["seed"], 42);
    assert_eq!(v["connections"]["accepted"], 1);
    assert_eq!(v["bytes"]["upstream_sent"], 5);
    assert_eq!(v["bytes"]["downstream_sent"], 5);
    assert_eq!(v["faults"], json!([]));
    let r = p.call("DELETE", "/proxies/db/stats", None).await;
    assert_eq!(r.status, 204);
    assert_eq!(p.stats("db").await["connections"]["accepted"], 0);
    assert_eq!(p.call("GET", "/proxies/nope/stats", None).await.status, 404);
    p.shutdown().await;
}

/// toxiproxy-cli's `toggle` and the Go client's `Save()` post the whole proxy
/// back (toxics included) to `POST /proxies/{p}`: the port and the toxics stay.
#[tokio::test]
async fn go_client_save_round_trip() {
    let p = spawn_proxy().await;
    let echo = spawn_echo().await;
    let addr = p.create("db", echo.addr).await;
    p.toxic("db", json!({"type":"latency","attributes":{"latency":1}}))
        .await;
    let mut proxy = p.call("GET", "/proxies/db", None).await.json();
    proxy["enabled"] = json!(false);
    let r = p.call("POST", "/proxies/db", Some(&proxy.to_string())).await;
    assert_eq!(r.status, 200);
    proxy["enabled"] = json!(true);
    let r = p.call("POST", "/proxies/db", Some(&proxy.to_string())).await;
    let v = r.json();
    assert_eq!(v["listen"], addr.to_string());
    assert_eq!(v["enabled"], true);
    assert_eq!(v["toxics"].as_array().map(Vec::len), Some(1));
    p.shutdown().await;
}

/// Extension: a proxy may be created with its toxics (toxiproxy #447).
#[tokio::test]
async fn create_with_toxics() {
    let p = spawn_proxy().await;
    let body = r#"{"name":"a","listen":"127.0.0.1:0","upstream":"localhost:9","toxics":[
        {"type":"latency","attributes":{"latency":5}},{"type":"reset_peer","stream":"upstream"}]}"#;
    let r = p.call("POST", "/proxies", Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let names: Vec<String> = r.json()["toxics"]
        .as_array()
        .expect("toxics")
        .iter()
        .map(|t| t["name"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(names, ["reset_peer_upstream", "latency_downstream"]);
    // Duplicate names inside the body are refused and nothing is created.
    let dup = r#"{"name":"b","upstream":"127.0.0.1:9","toxics":[{"type":"noop"},{"type":"noop"}]}"#;
    assert_eq!(p.call("POST", "/proxies", Some(dup)).await.status, 409);
    assert_eq!(p.call("GET", "/proxies/b", None).await.status, 404);
    p.shutdown().await;
}

/// `/populate` answers with proxy and toxic objects in toxiproxy's key order,
/// byte for byte like every other route (it once went through a sorted map).
#[tokio::test]
async fn populate_body_keeps_toxiproxy_key_order() {
    let p = spawn_proxy().await;
    let body = r#"[{"name":"a","upstream":"127.0.0.1:1","listen":"127.0.0.1:0","enabled":false,
                    "toxics":[{"type":"latency","attributes":{"latency":5}}]}]"#;
    let r = p.call("POST", "/populate", Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.body,
        concat!(
            r#"{"proxies":[{"name":"a","listen":"127.0.0.1:0","upstream":"127.0.0.1:1","enabled":false,"toxics":["#,
            r#"{"attributes":{"latency":5,"jitter":0},"name":"latency_downstream","type":"latency","stream":"downstream","toxicity":1}]}]}"#
        )
    );
    // The same proxy object as GET /proxies/{p} returns.
    let single = p.call("GET", "/proxies/a", None).await.body;
    assert_eq!(r.body, format!(r#"{{"proxies":[{single}]}}"#));
    p.shutdown().await;
}

/// The exact bodies toxiproxy's Go client and toxiproxy-cli send: `toxics:null`
/// on create and populate, `name:""` and no `stream` on toxic add, and
/// `attributes:null` on an update that keeps the toxicity (`-1`).
#[tokio::test]
async fn go_client_request_shapes() {
    let p = spawn_proxy().await;
    let r = p
        .call(
            "POST",
            "/proxies",
            Some(r#"{"name":"cli","listen":"127.0.0.1:0","upstream":"127.0.0.1:9","enabled":true,"toxics":null}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["toxics"], json!([]));
    let add =
        r#"{"name":"","type":"latency","stream":"upstream","toxicity":1,"attributes":{"jitter":5,"latency":100}}"#;
    let r = p.call("POST", "/proxies/cli/toxics", Some(add)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["name"], "latency_upstream");
    let add = r#"{"name":"rp","type":"reset_peer","toxicity":0.5,"attributes":null}"#;
    let r = p.call("POST", "/proxies/cli/toxics", Some(add)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        r#"{"attributes":{"timeout":0},"name":"rp","type":"reset_peer","stream":"downstream","toxicity":0.5}"#
    );
    let r = p
        .call("PATCH", "/proxies/cli/toxics/rp", Some(r#"{"attributes":null}"#))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["toxicity"], 0.5);
    let r = p
        .call(
            "PATCH",
            "/proxies/cli/toxics/rp",
            Some(r#"{"attributes":{},"toxicity":0.25}"#),
        )
        .await;
    assert_eq!(
        (r.json()["toxicity"].clone(), r.json()["attributes"].clone()),
        (json!(0.25), json!({"timeout":0}))
    );
    let r = p
        .call(
            "POST",
            "/populate",
            Some(r#"[{"name":"pop","listen":"127.0.0.1:0","upstream":"127.0.0.1:9","enabled":true,"toxics":null}]"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["proxies"][0]["toxics"], json!([]));
    p.shutdown().await;
}
