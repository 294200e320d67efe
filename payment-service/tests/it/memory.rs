//! `--dedup memory`: keys remembered by one process. It replays what this
//! process answered, refuses a key in flight (409) or reused (422), and
//! forgets everything at a restart or in another replica: the lesson.

use std::path::Path;
use std::time::Duration;

use crate::raw::Raw;
use payment_service::{Config, DedupMode};
use serde_json::json;

use crate::audit::assert_agrees;
use crate::{BODY, db_path, header, spawn_app, spawn_app_in};

fn memory(c: &mut Config) {
    c.dedup = DedupMode::Memory;
}

/// The database never learned about keys: no key rows, no UNIQUE key column;
/// the key is on each payment, for the judge.
fn assert_no_key_rows(db: &Path, payments: i64) {
    let mut conn = Raw::open(db);
    let mut count = |sql: &str| conn.count(sql);
    assert_eq!(count("SELECT count(*) FROM idempotency_keys"), 0);
    assert_eq!(count("SELECT count(*) FROM payments WHERE dedup_key IS NOT NULL"), 0);
    assert_eq!(
        count("SELECT count(*) FROM payments WHERE idem_key IS NOT NULL"),
        payments
    );
}

#[tokio::test]
async fn a_key_seen_by_this_process_replays_its_answer_and_a_mismatch_is_422() {
    let app = spawn_app(memory).await;
    let first = app.pay(Some("k"), BODY).await;
    assert_eq!(
        (first.status().as_u16(), header(&first, "idempotent-replayed")),
        (201, Some("false"))
    );
    let first_body = first.text().await.unwrap();
    let retry = app.pay(Some("k"), BODY).await;
    assert_eq!(
        (retry.status().as_u16(), header(&retry, "idempotent-replayed")),
        (201, Some("true"))
    );
    assert_eq!(retry.text().await.unwrap(), first_body, "byte-identical");
    let other = app
        .pay(Some("k"), r#"{"src": "bianca", "dest": "marc", "amount": "2"}"#)
        .await;
    crate::assert_problem(other, 422, "idempotency-key-reused").await;
    let stats = app.stats().await;
    assert_eq!(stats["dedup"], "memory");
    let seen = (
        &stats["payments"],
        &stats["replayed"],
        &stats["mismatches_422"],
        &stats["stored_responses"],
    );
    assert_eq!(seen, (&json!(1), &json!(1), &json!(1), &json!(0)));
    let dir = app.stop_keeping_dir().await;
    assert_no_key_rows(&db_path(&dir), 1);
}

#[tokio::test]
async fn a_key_in_flight_in_this_process_is_409() {
    let app = spawn_app(|c| {
        memory(c);
        // Far longer than sending two requests takes.
        c.processing_delay = Duration::from_millis(1000);
    })
    .await;
    // Whichever arrives first pays; the other finds it in flight.
    let (x, y) = tokio::join!(app.pay(Some("k"), BODY), app.pay(Some("k"), BODY));
    let mut statuses = [x.status().as_u16(), y.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [201, 409]);
    assert_eq!(app.stats().await["payments"], 1);
    app.stop().await;
}

#[tokio::test]
async fn a_restart_forgets_the_keys_and_pays_again() {
    let app = spawn_app(memory).await;
    assert_eq!(app.pay(Some("k"), BODY).await.status(), 201);
    let dir = app.stop_keeping_dir().await;
    let app = spawn_app_in(dir, memory).await;
    let retry = app.pay(Some("k"), BODY).await;
    assert_eq!(
        (retry.status().as_u16(), header(&retry, "idempotent-replayed")),
        (201, Some("false"))
    );
    let stats = app.stats().await;
    assert_eq!((&stats["payments"], &stats["duplicate_keys"]), (&json!(2), &json!(1)));
    assert_eq!(stats["invariants"]["one_payment_per_key"], false);
    assert_agrees(&app.audit().await);
    app.stop().await;
}

#[tokio::test]
async fn two_replicas_each_pay_the_same_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_path(&dir);
    let on_shared = |db: std::path::PathBuf| {
        move |c: &mut Config| {
            memory(c);
            c.db = db;
            c.replica = true;
        }
    };
    let a = spawn_app(on_shared(db.clone())).await;
    let b = spawn_app(on_shared(db.clone())).await;
    for app in [&a, &b, &a, &b] {
        assert_eq!(app.pay(Some("k"), BODY).await.status(), 201);
    }
    let (sa, sb) = (a.stats().await, b.stats().await);
    assert_eq!((&sa["executed"], &sa["replayed"]), (&json!(1), &json!(1)));
    assert_eq!((&sb["executed"], &sb["replayed"]), (&json!(1), &json!(1)));
    assert_eq!((&sb["payments"], &sb["duplicate_keys"]), (&json!(2), &json!(1)));
    assert_agrees(&b.audit().await);
    a.stop().await;
    b.stop().await;
    assert_no_key_rows(&db, 2);
}
