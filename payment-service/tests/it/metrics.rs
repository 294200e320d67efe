//! `GET /metrics`: Prometheus text whose values follow known traffic.

use crate::{BODY, spawn_app};

/// The value of the sample `name` (with its labels, if any) in `text`.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("sample {name} is not a number"))
}

#[tokio::test]
async fn metrics_count_known_traffic() {
    let app = spawn_app(|_| {}).await;
    for key in ["m-1", "m-2", "m-3"] {
        assert_eq!(app.pay(Some(key), BODY).await.status(), 201);
    }
    assert_eq!(app.pay(Some("m-1"), BODY).await.status(), 201, "a replay");
    let other = r#"{"src": "bianca", "dest": "marc", "amount": "2"}"#;
    assert_eq!(app.pay(Some("m-1"), other).await.status(), 422);
    let bad = r#"{"src": "bianca", "dest": "marc", "amount": "-1"}"#;
    for key in ["m-4", "m-5"] {
        assert_eq!(app.pay(Some(key), bad).await.status(), 400);
    }
    assert_eq!(app.pay(None, "{").await.status(), 400);

    let response = app.client.get(app.url("/metrics")).send().await.expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ascii").to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.expect("text");
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(sample(&text, "payment_requests_total"), 8.0);
    assert_eq!(sample(&text, "payments_executed_total"), 3.0);
    assert_eq!(sample(&text, "payments_replayed_total"), 1.0);
    assert_eq!(sample(&text, "payment_mismatches_422_total"), 1.0);
    assert_eq!(sample(&text, "payment_conflicts_409_total"), 0.0);
    assert_eq!(sample(&text, r#"payment_rejected_total{cause="invalid-amount"}"#), 2.0);
    assert_eq!(sample(&text, r#"payment_rejected_total{cause="malformed-json"}"#), 1.0);
    // The three payments reached the writer (the replay, certain, was
    // answered by the replay desk in front of it), plus whatever the reaper
    // queued: every batch is counted once in both histograms.
    let batches = sample(&text, "writer_batch_size_count");
    assert!(sample(&text, "writer_batch_size_sum") >= 3.0, "{text}");
    assert!(batches >= 1.0);
    assert_eq!(sample(&text, "writer_commit_seconds_count"), batches);
    assert!(sample(&text, "writer_commit_seconds_sum") > 0.0);
    assert_eq!(sample(&text, "writer_queue_depth"), 0.0);
    assert_eq!(sample(&text, "writer_queue_depth_max"), 4096.0);
    assert!(text.contains("# TYPE writer_commit_seconds histogram"), "{text}");
    app.stop().await;
}
