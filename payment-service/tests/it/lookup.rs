//! `POST /payments/lookup`: many keys in one call, paged by id.

use payment_service::{DedupMode, Synchronous};
use payment_service::{LOOKUP_KEYS_MAX, LOOKUP_ROWS_MAX};
use serde_json::{Value, json};

use crate::{BODY, TestApp, assert_problem, spawn_app};

impl TestApp {
    /// `POST /payments/lookup` with a raw body.
    pub async fn lookup_raw(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url("/payments/lookup"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST /payments/lookup")
    }

    pub async fn lookup(&self, keys: &[&str], after_id: i64) -> Value {
        let response = self
            .lookup_raw(json!({"keys": keys, "after_id": after_id}).to_string())
            .await;
        assert_eq!(response.status(), 200);
        response.json().await.expect("lookup JSON")
    }
}

fn ids(page: &Value) -> Vec<i64> {
    page["payments"]
        .as_array()
        .expect("payments array")
        .iter()
        .map(|p| p["id"].as_i64().expect("id"))
        .collect()
}

#[tokio::test]
async fn finds_the_payments_of_the_keys_asked_for_and_nothing_else() {
    let app = spawn_app(|_| {}).await;
    for key in ["a", "b", "c"] {
        assert_eq!(app.pay(Some(key), BODY).await.status(), 201);
    }
    assert_eq!(app.pay(None, BODY).await.status(), 201);
    let page = app.lookup(&["c", "missing", "a", "c"], 0).await;
    assert_eq!(ids(&page), vec![1, 3]);
    assert_eq!(page["next_after_id"], Value::Null);
    // Each document is exactly what GET /payments/{id} serves.
    for payment in page["payments"].as_array().unwrap() {
        assert_eq!(&app.get_json(&format!("/payments/{}", payment["id"])).await, payment);
    }
    assert_eq!(ids(&app.lookup(&["c", "a"], 1).await), vec![3]);
    let none = app.lookup(&["missing"], 0).await;
    assert_eq!((ids(&none), &none["next_after_id"]), (vec![], &Value::Null));
    // The largest lookup fits: 1000 keys of 255 characters, every one escaped.
    let widest: Vec<String> = (0..LOOKUP_KEYS_MAX)
        .map(|n| format!("{n:04}{}", "\"".repeat(251)))
        .collect();
    let response = app.lookup_raw(json!({ "keys": widest }).to_string()).await;
    assert_eq!(response.status(), 200);
    // after_id may be left out.
    let response = app.lookup_raw(r#"{"keys": ["b"]}"#).await;
    assert_eq!(ids(&response.json().await.unwrap()), vec![2]);
    app.stop().await;
}

/// `count` payments with `key` under `--dedup off`, 50 at a time.
async fn pay_many(app: &TestApp, key: &'static str, count: usize) {
    let mut left = count;
    while left > 0 {
        let batch = left.min(50);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let (client, url) = (app.client.clone(), app.url("/payments"));
            tasks.spawn(async move {
                let request = client.post(url).header("Idempotency-Key", key).body(BODY);
                request.send().await.expect("POST").status().as_u16()
            });
        }
        while let Some(status) = tasks.join_next().await {
            assert_eq!(status.expect("task"), 201);
        }
        left -= batch;
    }
}

#[tokio::test]
async fn duplicates_of_a_key_are_paged_through_with_next_after_id() {
    let app = spawn_app(|c| {
        c.dedup = DedupMode::Off;
        c.synchronous = Synchronous::Normal;
    })
    .await;
    pay_many(&app, "other", 1).await; // id 1
    pay_many(&app, "dup", LOOKUP_ROWS_MAX).await; // ids 2..=1001
    pay_many(&app, "other", 1).await; // id 1002
    let first = app.lookup(&["dup", "other"], 0).await;
    assert_eq!(ids(&first), (1..=1000).collect::<Vec<_>>());
    assert_eq!(first["next_after_id"], 1000);
    let second = app.lookup(&["dup", "other"], 1000).await;
    assert_eq!(ids(&second), vec![1001, 1002]);
    assert_eq!(second["next_after_id"], Value::Null);
    // A page filled exactly: the cursor is given, and the next page is empty.
    let exact = app.lookup(&["dup"], 0).await;
    assert_eq!(ids(&exact), (2..=1001).collect::<Vec<_>>());
    assert_eq!(exact["next_after_id"], 1001);
    let after = app.lookup(&["dup"], 1001).await;
    assert_eq!((ids(&after), &after["next_after_id"]), (vec![], &Value::Null));
    app.stop().await;
}

/// Bad lookups: what, body, problem type, field.
fn bad_lookups() -> Vec<(&'static str, Vec<u8>, &'static str, Option<&'static str>)> {
    let too_many = json!({ "keys": vec!["a"; LOOKUP_KEYS_MAX + 1] }).to_string();
    let long = json!({ "keys": ["k".repeat(256)] }).to_string();
    vec![
        ("not JSON", b"keys=a".to_vec(), "malformed-json", None),
        ("truncated", br#"{"keys": ["a"]"#.to_vec(), "malformed-json", None),
        (
            "unknown field",
            br#"{"keys": ["a"], "limit": 1}"#.to_vec(),
            "malformed-json",
            None,
        ),
        (
            "missing keys",
            br#"{"after_id": 0}"#.to_vec(),
            "missing-field",
            Some("keys"),
        ),
        ("no keys", br#"{"keys": []}"#.to_vec(), "invalid-lookup", Some("keys")),
        ("too many keys", too_many.into_bytes(), "invalid-lookup", Some("keys")),
        (
            "keys not an array",
            br#"{"keys": "a"}"#.to_vec(),
            "invalid-lookup",
            Some("keys"),
        ),
        (
            "empty key",
            br#"{"keys": ["a", ""]}"#.to_vec(),
            "idempotency-key-invalid",
            Some("keys"),
        ),
        ("long key", long.into_bytes(), "idempotency-key-invalid", Some("keys")),
        (
            "non-ASCII key",
            r#"{"keys": ["café"]}"#.as_bytes().to_vec(),
            "idempotency-key-invalid",
            Some("keys"),
        ),
        (
            "control in key",
            br#"{"keys": ["a\tb"]}"#.to_vec(),
            "idempotency-key-invalid",
            Some("keys"),
        ),
        (
            "invalid UTF-8",
            b"{\"keys\": [\"a\xff\"]}".to_vec(),
            "malformed-json",
            None,
        ),
        (
            "negative after_id",
            br#"{"keys": ["a"], "after_id": -1}"#.to_vec(),
            "invalid-lookup",
            Some("after_id"),
        ),
        (
            "fractional after_id",
            br#"{"keys": ["a"], "after_id": 0.5}"#.to_vec(),
            "invalid-lookup",
            Some("after_id"),
        ),
    ]
}

#[tokio::test]
async fn every_bad_lookup_is_a_400_naming_its_field() {
    let app = spawn_app(|_| {}).await;
    assert_eq!(app.pay(Some("a"), BODY).await.status(), 201);
    for (what, body, slug, field) in bad_lookups() {
        let problem = assert_problem(app.lookup_raw(body).await, 400, slug).await;
        assert_eq!(problem["field"].as_str(), field, "{what}: {problem}");
    }
    let wrong_type = app
        .client
        .post(app.url("/payments/lookup"))
        .header("content-type", "text/plain")
        .body(r#"{"keys": ["a"]}"#)
        .send()
        .await
        .unwrap();
    assert_problem(wrong_type, 415, "unsupported-media-type").await;
    let huge = format!(r#"{{"keys": ["{}"]}}"#, " ".repeat(1 << 20));
    assert_problem(app.lookup_raw(huge).await, 413, "body-too-large").await;
    // Nothing was written, and the service still answers.
    assert_eq!(app.stats().await["payments"], 1);
    assert_eq!(ids(&app.lookup(&["a"], 0).await), vec![1]);
    app.stop().await;
}
