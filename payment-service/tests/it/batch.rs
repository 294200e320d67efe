//! `POST /payments/batch`: all or nothing, replayed whole, item keys
//! `KEY:ITEM_ID` on payments and events, and the behaviour per `--dedup`.

use std::time::{Duration, Instant};

use payment_service::DedupMode;
use serde_json::Value;

use crate::outbox::{events_and_payments, outbox_to};
use crate::receiver::{FakeReceiver, outbox_until};
use crate::{BODY, TestApp, WAIT, assert_problem, db_path, header, spawn_app, spawn_app_in};

fn batch_body(items: &[(&str, &str, &str)]) -> String {
    let items: Vec<String> = items
        .iter()
        .map(|(id, src, amount)| {
            format!(r#"{{"item_id": "{id}", "src": "{src}", "dest": "marc", "amount": "{amount}"}}"#)
        })
        .collect();
    format!(r#"{{"items": [{}]}}"#, items.join(","))
}

const THREE: [(&str, &str, &str); 3] = [("t1", "bianca", "1"), ("t2", "bianca", "2.50"), ("t3", "carol", "3")];

async fn post_batch(app: &TestApp, key: Option<&str>, body: &str) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/payments/batch"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.expect("POST /payments/batch")
}

#[tokio::test]
async fn a_batch_pays_every_item_under_its_item_key_and_replays_byte_identical() {
    let app = spawn_app(|_| {}).await;
    let first = post_batch(&app, Some("order-1"), &batch_body(&THREE)).await;
    assert_eq!(first.status(), 201);
    assert_eq!(header(&first, "idempotent-replayed"), Some("false"));
    let first = first.text().await.unwrap();
    let answer: Value = serde_json::from_str(&first).unwrap();
    let keys: Vec<&str> = answer["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["payment"]["idempotency_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["order-1:t1", "order-1:t2", "order-1:t3"]);
    let replay = post_batch(&app, Some("order-1"), &batch_body(&THREE)).await;
    assert_eq!(
        (replay.status().as_u16(), header(&replay, "idempotent-replayed")),
        (201, Some("true"))
    );
    assert_eq!(replay.text().await.unwrap(), first, "byte-identical");
    let stats = app.stats().await;
    assert_eq!(
        (stats["payments"].as_i64(), stats["total_amount_minor"].as_i64()),
        (Some(3), Some(650))
    );
    assert_eq!(stats["executed"], 3);
    // The item keys are ordinary keys of the ledger.
    let page = app.get_json("/payments?key=order-1:t2").await;
    assert_eq!(page["payments"][0]["amount_minor"], 250);
    let single = app
        .pay(Some("order-1:t3"), r#"{"src": "carol", "dest": "marc", "amount": "3"}"#)
        .await;
    assert_eq!(
        (single.status().as_u16(), header(&single, "idempotent-replayed")),
        (201, Some("true"))
    );
    // The same key with another batch: 422, nothing stored.
    let other = post_batch(&app, Some("order-1"), &batch_body(&THREE[..2])).await;
    assert_problem(other, 422, "idempotency-key-reused").await;
    assert_eq!(app.stats().await["payments"], 3);
    let audit = app.get_json("/audit").await;
    assert_eq!(
        audit["verdict"], "agree",
        "the maintained figures include the batch's: {audit}"
    );
    app.stop().await;
}

#[tokio::test]
async fn one_refused_item_stores_nothing_of_the_batch() {
    let receiver = FakeReceiver::start().await;
    let app = spawn_app(outbox_to(&receiver.url())).await;
    let dir = app.stop_keeping_dir().await;
    crate::raw::Raw::open(&db_path(&dir)).execute_batch(crate::raw::no_mallory_trigger());
    let app = spawn_app_in(dir, outbox_to(&receiver.url())).await;
    let items = [("a", "bianca", "1"), ("b", "mallory", "1"), ("c", "carol", "1")];
    for _ in 0..2 {
        let refused = post_batch(&app, Some("all-or-nothing"), &batch_body(&items)).await;
        assert_problem(refused, 422, "refused-by-ledger").await;
    }
    let stats = app.stats().await;
    assert_eq!(
        (stats["payments"].as_i64(), stats["stored_responses"].as_i64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        (stats["accounts"].as_i64(), stats["outbox"]["pending"].as_i64()),
        (Some(0), Some(0))
    );
    // The key was not used up: the corrected batch pays, with its events.
    let ok = post_batch(&app, Some("all-or-nothing"), &batch_body(&[items[0], items[2]])).await;
    assert_eq!(ok.status(), 201);
    outbox_until(&app, |o| o["delivered"] == 2).await;
    assert_eq!(app.get_json("/audit").await["verdict"], "agree");
    let mut keys: Vec<_> = receiver.events().into_iter().filter_map(|e| e.key).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["all-or-nothing:a", "all-or-nothing:c"],
        "events carry the item keys"
    );
    let dir = app.stop_keeping_dir().await;
    assert_eq!(events_and_payments(&dir), (2, 2, 0, 0));
}

#[tokio::test]
async fn a_late_retry_is_rebuilt_from_the_item_payments() {
    let app = spawn_app(|c| c.key_retention = Duration::ZERO).await;
    let first = post_batch(&app, Some("late"), &batch_body(&THREE)).await;
    assert_eq!(first.status(), 201);
    let first = first.text().await.unwrap();
    let replay = post_batch(&app, Some("late"), &batch_body(&THREE)).await;
    assert_eq!(header(&replay, "idempotent-replayed"), Some("true"));
    assert_eq!(replay.text().await.unwrap(), first);
    assert_problem(
        post_batch(&app, Some("late"), &batch_body(&THREE[1..])).await,
        422,
        "idempotency-key-reused",
    )
    .await;
    assert_eq!(app.stats().await["payments"], 3);
    app.stop().await;
}

#[tokio::test]
async fn a_batch_in_flight_is_409_then_completes() {
    let app = spawn_app(|c| c.processing_delay = Duration::from_millis(400)).await;
    let first = {
        let (client, url, body) = (app.client.clone(), app.url("/payments/batch"), batch_body(&THREE));
        tokio::spawn(async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", "slow")
                .body(body)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        })
    };
    let deadline = Instant::now() + WAIT;
    while app.stats().await["keys_in_flight"] != 1 {
        assert!(Instant::now() < deadline, "the batch never claimed its key");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_problem(
        post_batch(&app, Some("slow"), &batch_body(&THREE)).await,
        409,
        "idempotency-key-in-use",
    )
    .await;
    assert_eq!(first.await.unwrap(), 201);
    assert_eq!(app.stats().await["payments"], 3);
    app.stop().await;
}

#[tokio::test]
async fn dedup_off_pays_every_batch_and_other_modes_refuse_batches() {
    let off = spawn_app(|c| c.dedup = DedupMode::Off).await;
    for _ in 0..2 {
        assert_eq!(post_batch(&off, Some("twice"), &batch_body(&THREE)).await.status(), 201);
    }
    let stats = off.stats().await;
    assert_eq!(
        (stats["payments"].as_i64(), stats["duplicate_keys"].as_i64()),
        (Some(6), Some(3))
    );
    off.stop().await;
    let racy = spawn_app(|c| c.dedup = DedupMode::CheckThenInsert).await;
    assert_problem(
        post_batch(&racy, Some("k"), &batch_body(&THREE)).await,
        422,
        "batch-unsupported",
    )
    .await;
    assert_eq!(racy.stats().await["payments"], 0);
    racy.stop().await;
}

#[tokio::test]
async fn bad_batches_are_precise_4xx_and_store_nothing() {
    let app = spawn_app(|_| {}).await;
    assert_problem(
        post_batch(&app, None, &batch_body(&THREE)).await,
        400,
        "idempotency-key-missing",
    )
    .await;
    let twice = batch_body(&[("x", "bianca", "1"), ("x", "carol", "1")]);
    assert_problem(post_batch(&app, Some("k"), &twice).await, 400, "invalid-batch").await;
    let colon = batch_body(&[("a:b", "bianca", "1")]);
    assert_problem(post_batch(&app, Some("k"), &colon).await, 400, "invalid-batch").await;
    let long_key = "k".repeat(254);
    assert_problem(
        post_batch(&app, Some(&long_key), &batch_body(&THREE)).await,
        400,
        "invalid-batch",
    )
    .await;
    let same = batch_body(&[("a", "marc", "1")]);
    let problem = assert_problem(post_batch(&app, Some("k"), &same).await, 400, "same-account").await;
    assert!(
        problem["detail"].as_str().unwrap().starts_with("items[0]:"),
        "{problem}"
    );
    assert_problem(
        post_batch(&app, Some("k"), r#"{"items": []}"#).await,
        400,
        "invalid-batch",
    )
    .await;
    assert_problem(post_batch(&app, Some("k"), BODY).await, 400, "invalid-batch").await;
    assert_eq!(app.stats().await["payments"], 0);
    app.stop().await;
}
