//! Concurrent deliveries of one event: the writer serialises them, so the
//! inbox leaves exactly one receipt; the naive consumer leaves one each.

use receipts::DedupMode;
use serde_json::Value;

use crate::{TestApp, event, header, spawn_app};

/// Delivers `body` `n` times at once; returns the statuses and receipt ids.
async fn deliver_concurrently(app: &TestApp, bodies: Vec<Value>) -> Vec<(u16, i64)> {
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let (client, url) = (app.client.clone(), app.url("/receipts"));
            tokio::spawn(async move {
                let response = client.post(url).json(&body).send().await.expect("delivered");
                let status = response.status().as_u16();
                let replayed = header(&response, "idempotent-replayed").map(str::to_owned);
                let receipt: Value = response.json().await.expect("receipt");
                assert_eq!(replayed.as_deref(), Some(if status == 200 { "true" } else { "false" }));
                (status, receipt["id"].as_i64().expect("id"))
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("task"));
    }
    answers
}

#[tokio::test]
async fn thirty_two_concurrent_deliveries_of_one_event_leave_one_receipt() {
    let app = spawn_app(|_| {}).await;
    let answers = deliver_concurrently(&app, vec![event("storm", 1); 32]).await;
    let created = answers.iter().filter(|(s, _)| *s == 201).count();
    let replayed = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!((created, replayed), (1, 31), "{answers:?}");
    assert!(
        answers.iter().all(|(_, id)| *id == 1),
        "every answer names the one receipt: {answers:?}"
    );
    let stats = app.stats().await;
    assert_eq!(stats["receipts"], 1);
    assert_eq!(stats["duplicates_absorbed"], 31);
    assert_eq!(stats["invariants"]["one_receipt_per_event"], true);
    assert_eq!(app.lookup(&["storm:1".into()]).await[0]["receipts"], 1);
    app.stop_keeping_dir().await;
}

#[tokio::test]
async fn the_naive_consumer_issues_a_receipt_per_concurrent_delivery() {
    let app = spawn_app(|c| c.dedup = DedupMode::Off).await;
    let answers = deliver_concurrently(&app, vec![event("storm", 1); 32]).await;
    assert!(answers.iter().all(|(s, _)| *s == 201), "{answers:?}");
    let stats = app.stats().await;
    assert_eq!(stats["receipts"], 32);
    assert_eq!(stats["duplicate_receipts"], 31);
    assert_eq!(stats["invariants"]["one_receipt_per_event"], false);
    app.stop_keeping_dir().await;
}

#[tokio::test]
async fn many_events_each_delivered_four_times_at_once_are_receipted_once_each() {
    let app = spawn_app(|_| {}).await;
    // Interleaved: every event's four deliveries are spread over the burst.
    let bodies: Vec<Value> = (0..4).flat_map(|_| (1..=50).map(|n| event("many", n))).collect();
    let answers = deliver_concurrently(&app, bodies).await;
    assert_eq!(answers.iter().filter(|(s, _)| *s == 201).count(), 50);
    let stats = app.stats().await;
    assert_eq!(
        (stats["receipts"].as_i64(), stats["events"].as_i64()),
        (Some(50), Some(50))
    );
    assert_eq!(stats["duplicates_absorbed"], 150);
    let expected: i64 = (1..=50).map(|n| 100 + n).sum();
    assert_eq!(stats["total_amount_minor"], expected);
    app.stop_keeping_dir().await;
}

#[tokio::test]
async fn a_slow_consumer_outlives_the_senders_deadline_and_absorbs_the_redelivery() {
    let app = spawn_app(|c| c.processing_delay = std::time::Duration::from_millis(300)).await;
    let e = event("slow", 1);
    // The relay's attempt deadline expires before the consumer answers ...
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_millis(50))
        .build()
        .unwrap();
    let timed_out = impatient.post(app.url("/receipts")).json(&e).send().await;
    assert!(timed_out.is_err_and(|err| err.is_timeout()));
    // ... yet the delivery goes on to its commit (polled, bounded).
    let deadline = tokio::time::Instant::now() + crate::WAIT;
    while app.lookup(&["slow:1".into()]).await[0]["receipts"] == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first delivery never committed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The redelivery the timeout provokes is absorbed.
    let again = app.deliver(&e).await;
    assert_eq!(again.status(), 200);
    let stats = app.stats().await;
    assert_eq!(
        (stats["receipts"].as_i64(), stats["duplicates_absorbed"].as_i64()),
        (Some(1), Some(1))
    );
    app.stop_keeping_dir().await;
}
