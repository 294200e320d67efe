//! The second hop: the transactional outbox and its relay against a fake
//! receipts service, the notify modes, and the redelivery route.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::raw::{Raw, no_mallory_trigger};
use payment_service::{Config, NotifyMode};
use serde_json::{Value, json};

use crate::receiver::{Answer, FakeReceiver, free_addr, outbox_until};
use crate::{BODY, TestApp, assert_problem, db_path, spawn_app, spawn_app_in};

/// The outbox on, towards `url`, with short backoffs so tests run quickly.
pub fn outbox_to(url: &str) -> impl FnOnce(&mut Config) {
    let url = url.to_owned();
    move |c: &mut Config| {
        c.receipts_url = Some(url);
        c.notify = NotifyMode::Outbox;
        c.relay.backoff_cap_ms = 200;
        c.relay.idle_poll_ms_max = 200;
    }
}

fn body(src: &str, amount: &str) -> String {
    format!(r#"{{"src": "{src}", "dest": "marc", "amount": "{amount}"}}"#)
}

/// Events and payments of the file, read after the service stopped:
/// (payments, events, payments without an event, events without a payment).
pub fn events_and_payments(dir: &tempfile::TempDir) -> (i64, i64, i64, i64) {
    let mut conn = Raw::open(&db_path(dir));
    let mut count = |sql: &str| conn.count(sql);
    (
        count("SELECT count(*) FROM payments"),
        count("SELECT count(*) FROM outbox"),
        count("SELECT count(*) FROM payments WHERE id NOT IN (SELECT payment_id FROM outbox)"),
        count("SELECT count(*) FROM outbox WHERE payment_id NOT IN (SELECT id FROM payments)"),
    )
}

async fn all_payments(app: &TestApp) -> Vec<Value> {
    let page = app.get_json("/payments?limit=1000").await;
    page["payments"].as_array().unwrap().clone()
}

#[tokio::test]
async fn the_relay_delivers_every_event_exactly_as_committed() {
    let receiver = FakeReceiver::start().await;
    let app = spawn_app(outbox_to(&receiver.url())).await;
    for i in 0..20 {
        let key = format!("e-{i}");
        let amount = format!("{}.{:02}", i + 1, i);
        assert_eq!(app.pay(Some(&key), &body("bianca", &amount)).await.status(), 201);
    }
    assert_eq!(app.pay(None, &body("carol", "3")).await.status(), 201);
    let stats = outbox_until(&app, |o| o["delivered"] == 21).await;
    assert_eq!(
        stats["outbox"],
        json!({"pending": 0, "delivered": 21, "refused": 0, "oldest_pending_age_ms": 0,
               "delivery_attempts": 21, "redelivered": 0})
    );
    assert_eq!(stats["notify"], "outbox");
    let ledger = stats["ledger_id"].as_str().unwrap().to_owned();
    assert!(
        ledger.len() == 16 && ledger.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{ledger}"
    );
    let events: BTreeMap<i64, _> = receiver.events().into_iter().map(|e| (e.payment_id, e)).collect();
    assert_eq!(events.len(), 21, "each event once");
    for payment in all_payments(&app).await {
        let id = payment["id"].as_i64().unwrap();
        let event = &events[&id];
        assert_eq!(event.event_id, format!("{ledger}:{id}"));
        assert_eq!(event.key.as_deref(), payment["idempotency_key"].as_str());
        assert_eq!(event.src, payment["src"].as_str().unwrap());
        assert_eq!(event.dest, payment["dest"].as_str().unwrap());
        assert_eq!(event.amount_minor, payment["amount_minor"].as_i64().unwrap());
        assert!(event.paid_at_ms > 1_600_000_000_000);
    }
    app.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured_then_the_event_is_delivered() {
    let receiver = FakeReceiver::start().await;
    receiver.script(&[Answer::Unavailable { retry_after_s: 1 }]);
    let app = spawn_app(outbox_to(&receiver.url())).await;
    assert_eq!(app.pay(Some("r-1"), BODY).await.status(), 201);
    let stats = outbox_until(&app, |o| o["delivered"] == 1).await;
    assert_eq!(stats["outbox"]["delivery_attempts"], 2);
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].0, received[1].0, "the same event, sent again");
    let gap = received[1].1 - received[0].1;
    assert!(
        gap >= Duration::from_millis(1000),
        "Retry-After: 1 honoured, waited {gap:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_permanent_refusal_is_a_visible_dead_letter_and_a_timeout_is_retried() {
    let receiver = FakeReceiver::start().await;
    receiver.script(&[Answer::Status(422), Answer::Late(Duration::from_millis(800))]);
    let app = spawn_app(|c| {
        outbox_to(&receiver.url())(c);
        c.relay.in_flight_max = 1;
        c.relay.attempt_ms_max = 300;
    })
    .await;
    assert_eq!(app.pay(Some("dead"), BODY).await.status(), 201);
    let stats = outbox_until(&app, |o| o["refused"] == 1).await;
    assert_eq!(
        (
            stats["outbox"]["pending"].as_i64(),
            stats["outbox"]["delivered"].as_i64()
        ),
        (Some(0), Some(0))
    );
    // The second payment's first answer comes after the relay's deadline:
    // unknown, so it is sent again and delivered.
    assert_eq!(
        app.pay(Some("late"), BODY.replace('1', "2").as_str()).await.status(),
        201
    );
    let stats = outbox_until(&app, |o| o["delivered"] == 1).await;
    assert_eq!(stats["outbox"]["refused"], 1, "a dead letter stays refused");
    assert_eq!(stats["outbox"]["delivery_attempts"], 3);
    assert_eq!(receiver.events().len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn while_the_receiver_is_down_events_wait_and_go_once_it_is_up() {
    let addr = free_addr().await;
    let app = spawn_app(outbox_to(&format!("http://{addr}"))).await;
    for i in 0..5 {
        assert_eq!(app.pay(Some(&format!("d-{i}")), BODY).await.status(), 201);
    }
    let stats = outbox_until(&app, |o| {
        o["delivery_attempts"].as_i64() >= Some(10) && o["oldest_pending_age_ms"].as_i64() > Some(0)
    })
    .await;
    assert_eq!(
        (
            stats["outbox"]["pending"].as_i64(),
            stats["outbox"]["delivered"].as_i64()
        ),
        (Some(5), Some(0))
    );
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(crate::metrics::sample(&metrics, "outbox_pending"), 5.0);
    assert!(crate::metrics::sample(&metrics, "outbox_oldest_pending_age_ms") > 0.0);
    // Payments go on meanwhile.
    assert_eq!(app.pay(Some("d-5"), BODY).await.status(), 201);
    let receiver = FakeReceiver::start_on(addr).await;
    let stats = outbox_until(&app, |o| o["delivered"] == 6).await;
    assert_eq!(
        (
            stats["outbox"]["pending"].as_i64(),
            stats["outbox"]["oldest_pending_age_ms"].as_i64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(receiver.events().len(), 6);
    app.stop().await;
}

#[tokio::test]
async fn pending_events_are_sent_after_a_restart() {
    let down = free_addr().await;
    let app = spawn_app(outbox_to(&format!("http://{down}"))).await;
    for i in 0..3 {
        assert_eq!(app.pay(Some(&format!("s-{i}")), BODY).await.status(), 201);
    }
    assert_eq!(app.stats().await["outbox"]["pending"], 3);
    let dir = app.stop_keeping_dir().await;
    let receiver = FakeReceiver::start().await;
    let app = spawn_app_in(dir, outbox_to(&receiver.url())).await;
    outbox_until(&app, |o| o["delivered"] == 3).await;
    let mut keys: Vec<_> = receiver.events().into_iter().filter_map(|e| e.key).collect();
    keys.sort();
    assert_eq!(keys, ["s-0", "s-1", "s-2"]);
    app.stop().await;
}

#[tokio::test]
async fn the_redelivery_route_sends_delivered_events_again() {
    let receiver = FakeReceiver::start().await;
    let app = spawn_app(outbox_to(&receiver.url())).await;
    for i in 0..4 {
        assert_eq!(app.pay(Some(&format!("x-{i}")), BODY).await.status(), 201);
    }
    outbox_until(&app, |o| o["delivered"] == 4).await;
    let redeliver = |body: &'static str| {
        app.client
            .post(app.url("/outbox/redeliver"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let answer: Value = redeliver(r#"{"window_ms": 60000}"#)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer, json!({"redelivered": 4, "window_ms": 60000}));
    let stats = outbox_until(&app, |o| o["delivered"] == 4 && o["redelivered"] == 4).await;
    assert_eq!(stats["outbox"]["delivery_attempts"], 8);
    let events = receiver.wait_for(8).await;
    let mut ids: Vec<_> = events.iter().map(|e| e.event_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "every event twice, no other");
    for bad in [
        r#"{"window_ms": 0}"#,
        r#"{"window_ms": 3600001}"#,
        r#"{"window": 5}"#,
        "[]",
    ] {
        assert_problem(redeliver(bad).await.unwrap(), 400, "invalid-redelivery").await;
    }
    app.stop().await;
    let plain = spawn_app(|_| {}).await;
    let response = plain
        .client
        .post(plain.url("/outbox/redeliver"))
        .header("content-type", "application/json")
        .body(r#"{"window_ms": 1000}"#)
        .send()
        .await
        .unwrap();
    assert_problem(response, 422, "outbox-off").await;
    plain.stop().await;
}

#[tokio::test]
async fn an_event_exists_if_and_only_if_its_payment_does() {
    let receiver = FakeReceiver::start().await;
    receiver.otherwise(Answer::Status(503));
    let app = spawn_app(outbox_to(&receiver.url())).await;
    assert_eq!(app.pay(Some("k"), BODY).await.status(), 201);
    assert_eq!(
        app.pay(Some("k"), BODY).await.status(),
        201,
        "a replay: no second event"
    );
    assert_eq!(app.pay(Some("k"), &body("bianca", "9")).await.status(), 422);
    assert_eq!(
        app.pay(Some("same"), r#"{"src": "a", "dest": "a", "amount": "1"}"#)
            .await
            .status(),
        400
    );
    assert_eq!(app.pay(None, BODY).await.status(), 201);
    let stats = app.stats().await;
    assert_eq!(
        (stats["payments"].as_i64(), stats["outbox"]["pending"].as_i64()),
        (Some(2), Some(2))
    );
    let dir = app.stop_keeping_dir().await;
    assert_eq!(events_and_payments(&dir), (2, 2, 0, 0));
    // A payment the ledger refuses leaves no event either.
    Raw::open(&db_path(&dir)).execute_batch(no_mallory_trigger());
    let app = spawn_app_in(dir, outbox_to(&receiver.url())).await;
    assert_eq!(app.pay(Some("m"), &body("mallory", "1")).await.status(), 422);
    // A DELETE starts a new ledger (and ledger id) with no events.
    let before = app.stats().await["ledger_id"].clone();
    assert_eq!(
        app.client.delete(app.url("/payments")).send().await.unwrap().status(),
        200
    );
    let stats = app.stats().await;
    assert_ne!(stats["ledger_id"], before);
    assert_eq!(stats["outbox"]["pending"], 0);
    let dir = app.stop_keeping_dir().await;
    assert_eq!(events_and_payments(&dir), (0, 0, 0, 0));
}

#[tokio::test]
async fn without_a_url_there_is_no_outbox_and_after_commit_calls_once_before_the_answer() {
    let app = spawn_app(|_| {}).await;
    assert_eq!(app.pay(Some("n"), BODY).await.status(), 201);
    let stats = app.stats().await;
    assert_eq!(
        (stats["notify"].as_str(), stats["outbox"]["pending"].as_i64()),
        (Some("none"), Some(0))
    );
    let dir = app.stop_keeping_dir().await;
    assert_eq!(events_and_payments(&dir), (1, 0, 1, 0));
    let receiver = FakeReceiver::start().await;
    let app = spawn_app_in(dir, |c| {
        c.receipts_url = Some(receiver.url());
        c.notify = NotifyMode::AfterCommit;
    })
    .await;
    assert_eq!(app.pay(Some("a"), BODY).await.status(), 201);
    // Called before the answer: already there, no waiting.
    let events = receiver.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].key.as_deref(), Some("a"));
    assert_eq!(
        events[0].event_id,
        format!("{}:2", app.stats().await["ledger_id"].as_str().unwrap())
    );
    assert_eq!(app.pay(Some("a"), BODY).await.status(), 201);
    assert_eq!(receiver.events().len(), 1, "a replay calls nobody");
    let stats = app.stats().await;
    assert_eq!(
        (stats["notify"].as_str(), stats["outbox"]["pending"].as_i64()),
        (Some("after-commit"), Some(0))
    );
    app.stop().await;
}

/// Turns a current file back into one of schema version 1 (before the
/// ledger id and the outbox).
const TO_VERSION_1: &str = "
DROP TABLE outbox;
DROP TABLE ledger_meta;
ALTER TABLE ledger_totals DROP COLUMN outbox_pending;
ALTER TABLE ledger_totals DROP COLUMN outbox_delivered;
ALTER TABLE ledger_totals DROP COLUMN outbox_refused;
ALTER TABLE ledger_totals DROP COLUMN outbox_attempts;
ALTER TABLE ledger_totals DROP COLUMN outbox_redelivered;
PRAGMA user_version = 1;
";

#[tokio::test]
async fn a_file_of_schema_1_gets_a_ledger_id_and_an_outbox_at_start() {
    crate::sqlite_only!("a file of SQLite's schema 1; a PostgreSQL database starts at the current schema");
    let app = spawn_app(|_| {}).await;
    assert_eq!(app.pay(Some("old-1"), BODY).await.status(), 201);
    assert_eq!(app.pay(Some("old-2"), BODY).await.status(), 201);
    let dir = app.stop_keeping_dir().await;
    Raw::open(&db_path(&dir)).execute_batch(TO_VERSION_1);
    let receiver = FakeReceiver::start().await;
    let app = spawn_app_in(dir, outbox_to(&receiver.url())).await;
    let stats = app.stats().await;
    assert_eq!(
        (stats["payments"].as_i64(), stats["outbox"]["pending"].as_i64()),
        (Some(2), Some(0))
    );
    let ledger = stats["ledger_id"].clone();
    assert_eq!(ledger.as_str().map(str::len), Some(16));
    assert_eq!(app.pay(Some("new"), BODY).await.status(), 201);
    outbox_until(&app, |o| o["delivered"] == 1).await;
    assert_eq!(
        receiver.events()[0].key.as_deref(),
        Some("new"),
        "payments before the outbox have no events"
    );
    assert_eq!(app.get_json("/audit").await["verdict"], "agree");
    let dir = app.stop_keeping_dir().await;
    let app = spawn_app_in(dir, |_| {}).await;
    assert_eq!(app.stats().await["ledger_id"], ledger, "the ledger id is the file's");
    app.stop().await;
}
