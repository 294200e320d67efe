//! `GET /metrics` (an extension): Prometheus text of the proxy counters,
//! checked after known traffic; the toxiproxy routes are unchanged by it.

use serde_json::json;

use crate::harness::*;

/// The value of the sample `name` (labels included) in `text`.
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("sample {name} is not a whole number"))
}

#[tokio::test]
async fn metrics_count_connections_bytes_and_faults_per_toxic_and_direction() {
    let p = spawn_proxy().await;
    let http = spawn_counting_http().await;
    let addr = p.create("payment", http.addr).await;
    for _ in 0..3 {
        assert!(is_ok(&raw_payment(addr).await));
    }
    p.toxic(
        "payment",
        json!({"name":"down","type":"reset_peer","stream":"downstream","attributes":{"timeout":0}}),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(raw_payment(addr).await, End::Reset(Vec::new()));
    }
    let stats = p.stats("payment").await;
    let r = p.call("GET", "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.content_type.starts_with("application/openmetrics-text"),
        "{}",
        r.content_type
    );
    let text = &r.body;
    assert!(text.ends_with("# EOF\n"), "{text}");
    let proxy = r#"{proxy="payment"}"#;
    assert_eq!(
        sample(text, &format!("chaos_proxy_connections_accepted_total{proxy}")),
        5
    );
    assert_eq!(
        sample(text, &format!("chaos_proxy_connections_rejected_total{proxy}")),
        0
    );
    let faults = r#"chaos_proxy_faults_total{proxy="payment",toxic="down",type="reset_peer",direction="downstream"}"#;
    assert_eq!(sample(text, faults), 2);
    // Bytes: the same numbers as /proxies/payment/stats, per direction.
    for (direction, received, sent) in [
        ("upstream", "upstream_received", "upstream_sent"),
        ("downstream", "downstream_received", "downstream_sent"),
    ] {
        let labels = format!(r#"{{proxy="payment",direction="{direction}"}}"#);
        let read = sample(text, &format!("chaos_proxy_bytes_received_total{labels}"));
        assert_eq!(read, stats["bytes"][received].as_u64().expect("bytes"), "{direction}");
        assert!(read > 0, "{direction}");
        let written = sample(text, &format!("chaos_proxy_bytes_sent_total{labels}"));
        assert_eq!(written, stats["bytes"][sent].as_u64().expect("bytes"), "{direction}");
    }
    // The toxiproxy routes are what they were.
    assert_eq!(
        p.call("GET", "/version", None).await.body,
        "{\"version\": \"2.12.0\"}\n"
    );
    assert_eq!(p.call("GET", "/proxies", None).await.status, 200);
    assert_eq!(p.call("POST", "/metrics", None).await.status, 405);
    p.shutdown().await;
}
