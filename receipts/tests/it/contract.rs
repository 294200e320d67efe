//! Every status of `POST /receipts`, and that a refusal stores nothing.

use serde_json::{Value, json};

use crate::{assert_problem, event, header, spawn_app};

#[tokio::test]
async fn first_delivery_is_201_a_duplicate_200_replayed_and_one_receipt() {
    let app = spawn_app(|_| {}).await;
    let e = event("a1b2c3d4e5f60718", 7);
    let first = app.deliver(&e).await;
    assert_eq!(first.status(), 201);
    assert_eq!(header(&first, "location"), Some("/receipts/1"));
    assert_eq!(header(&first, "idempotent-replayed"), Some("false"));
    let receipt: Value = first.json().await.unwrap();
    assert_eq!(receipt["event_id"], e["event_id"]);
    assert_eq!(receipt["key"], "pay-7");
    assert_eq!(receipt["amount_minor"], 107);
    // A redelivery, even with another paid_at_ms: the same receipt.
    let mut again = e.clone();
    again["paid_at_ms"] = json!(1);
    let second = app.deliver(&again).await;
    assert_eq!(second.status(), 200);
    assert_eq!(header(&second, "idempotent-replayed"), Some("true"));
    assert_eq!(header(&second, "location"), Some("/receipts/1"));
    assert_eq!(second.json::<Value>().await.unwrap(), receipt);
    let stats = app.stats().await;
    assert_eq!(stats["receipts"], 1);
    assert_eq!(stats["events"], 1);
    assert_eq!(stats["duplicate_receipts"], 0);
    assert_eq!(stats["duplicates_absorbed"], 1);
    assert_eq!(stats["total_amount_minor"], 107);
    assert_eq!(stats["dedup"], "inbox");
    assert_eq!(stats["requests"]["created"], 1);
    assert_eq!(stats["requests"]["replayed"], 1);
    assert_eq!(stats["invariants"]["one_receipt_per_event"], true);
    assert_eq!(app.get_json("/receipts/1").await, receipt);
    app.stop_keeping_dir().await;
}

#[tokio::test]
async fn the_same_event_id_with_other_content_is_a_422_mismatch_and_stores_nothing() {
    let app = spawn_app(|_| {}).await;
    let e = event("ledger", 1);
    assert_eq!(app.deliver(&e).await.status(), 201);
    for (field, value) in [
        ("amount_minor", json!(999)),
        ("src", json!("carol")),
        ("dest", json!("dave")),
        ("key", json!("another-key")),
        ("key", Value::Null),
        ("payment_id", json!(2)),
    ] {
        let mut other = e.clone();
        other[field] = value;
        let body = assert_problem(app.deliver(&other).await, 422, "event-mismatch").await;
        assert!(body["detail"].as_str().unwrap().contains(field), "{body}");
        assert_eq!(body["event_id"], "ledger:1");
    }
    let stats = app.stats().await;
    assert_eq!(
        (stats["receipts"].as_i64(), stats["duplicates_absorbed"].as_i64()),
        (Some(1), Some(0))
    );
    assert_eq!(stats["requests"]["mismatches"], 6);
    assert_eq!(stats["total_amount_minor"], 101);
    app.stop_keeping_dir().await;
}

/// Each refused body with the status and problem it must get.
fn refusals() -> Vec<(String, String, u16, &'static str)> {
    let json_type = "application/json".to_owned();
    let with = |field: &str, value: Value| {
        let mut e = event("bad", 1);
        e[field] = value;
        e.to_string()
    };
    let mut unknown = event("bad", 1);
    unknown["surprise"] = json!(1);
    let mut missing = event("bad", 1);
    missing.as_object_mut().unwrap().remove("amount_minor");
    vec![
        (
            "text/plain".into(),
            event("bad", 1).to_string(),
            415,
            "unsupported-media-type",
        ),
        (
            json_type.clone(),
            format!(r#"{{"event_id": "{}"}}"#, "x".repeat(20_000)),
            413,
            "body-too-large",
        ),
        (json_type.clone(), "{not json".into(), 400, "malformed-json"),
        (json_type.clone(), unknown.to_string(), 400, "malformed-json"),
        (json_type.clone(), missing.to_string(), 400, "malformed-json"),
        (
            json_type.clone(),
            with("amount_minor", json!("1.00")),
            400,
            "malformed-json",
        ),
        (json_type.clone(), with("event_id", json!("")), 400, "invalid-event-id"),
        (
            json_type.clone(),
            with("event_id", json!("e".repeat(129))),
            400,
            "invalid-event-id",
        ),
        (
            json_type.clone(),
            with("event_id", json!("a\u{7}b")),
            400,
            "invalid-event-id",
        ),
        (json_type.clone(), with("amount_minor", json!(0)), 422, "invalid-amount"),
        (
            json_type.clone(),
            with("amount_minor", json!(-5)),
            422,
            "invalid-amount",
        ),
        (
            json_type.clone(),
            with("amount_minor", json!(100_000_000_001i64)),
            422,
            "invalid-amount",
        ),
        (json_type.clone(), with("dest", json!("alice")), 422, "same-account"),
        (
            json_type.clone(),
            with("src", json!("a".repeat(65))),
            422,
            "invalid-account",
        ),
        (
            json_type.clone(),
            with("key", json!("k".repeat(513))),
            422,
            "invalid-key",
        ),
        (json_type.clone(), with("payment_id", json!(0)), 422, "invalid-payment"),
    ]
}

#[tokio::test]
async fn every_refusal_has_its_status_and_problem_and_stores_nothing() {
    let app = spawn_app(|_| {}).await;
    for (content_type, body, status, slug) in refusals() {
        let response = app.deliver_raw(&content_type, body).await;
        assert_problem(response, status, slug).await;
        let doc = app.get_json(&format!("/problems/{slug}")).await;
        assert_eq!(doc["status"], status, "{slug}");
    }
    let stats = app.stats().await;
    assert_eq!(stats["receipts"], 0);
    assert_eq!(stats["events"], 0);
    assert_eq!(stats["requests"]["rejected"], refusals().len());
    // The event refused above is still deliverable: nothing of it was kept.
    assert_eq!(app.deliver(&event("bad", 1)).await.status(), 201);
    let one = app.get_json("/receipts?after=0").await;
    assert_eq!(one["receipts"].as_array().unwrap().len(), 1);
    app.stop_keeping_dir().await;
}

#[tokio::test]
async fn dedup_off_stores_every_delivery_and_stats_say_so() {
    let app = spawn_app(|c| c.dedup = receipts::DedupMode::Off).await;
    let e = event("naive", 3);
    for expected_id in 1..=3 {
        let response = app.deliver(&e).await;
        assert_eq!(response.status(), 201);
        assert_eq!(
            header(&response, "location"),
            Some(format!("/receipts/{expected_id}").as_str())
        );
    }
    assert_eq!(app.deliver(&event("naive", 4)).await.status(), 201);
    let stats = app.stats().await;
    assert_eq!(stats["dedup"], "off");
    assert_eq!(stats["receipts"], 4);
    assert_eq!(stats["events"], 2);
    assert_eq!(stats["duplicate_receipts"], 2);
    assert_eq!(stats["duplicates_absorbed"], 0);
    assert_eq!(stats["total_amount_minor"], 3 * 103 + 104);
    assert_eq!(stats["invariants"]["one_receipt_per_event"], false);
    let found = app.lookup(&["naive:3".into(), "naive:4".into()]).await;
    assert_eq!(found[0]["receipts"], 3);
    assert_eq!(found[0]["receipt_ids"], json!([1, 2, 3]));
    assert_eq!(found[1]["receipts"], 1);
    app.stop_keeping_dir().await;
}

#[tokio::test]
async fn a_file_written_naively_is_deduplicated_once_the_inbox_is_on() {
    let app = spawn_app(|c| c.dedup = receipts::DedupMode::Off).await;
    let e = event("switch", 1);
    app.deliver(&e).await;
    app.deliver(&e).await;
    let dir = app.stop_keeping_dir().await;
    let app = crate::spawn_app_in(dir, |_| {}).await;
    let again = app.deliver(&e).await;
    assert_eq!(again.status(), 200, "the first receipt of the naive run is the inbox's");
    assert_eq!(header(&again, "location"), Some("/receipts/1"));
    let stats = app.stats().await;
    assert_eq!(
        (stats["receipts"].as_i64(), stats["events"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        stats["invariants"]["one_receipt_per_event"], false,
        "the naive run's duplicate stays"
    );
    app.stop_keeping_dir().await;
}

#[tokio::test]
async fn small_routes_answer() {
    let app = spawn_app(|_| {}).await;
    let index = app.get_json("/").await;
    assert_eq!(index["service"], "receipts");
    assert_eq!(index["settings"]["dedup"], "inbox");
    assert_eq!(app.get_json("/health").await["status"], "ok");
    let missing = app.client.get(app.url("/nowhere")).send().await.unwrap();
    assert_problem(missing, 404, "not-found").await;
    let missing = app.client.get(app.url("/problems/nonsense")).send().await.unwrap();
    assert_problem(missing, 404, "not-found").await;
    app.stop_keeping_dir().await;
}
