//! Database failures, typed: a failure that would repeat (a rule of the
//! ledger, a balance out of range) is a 422 that stores nothing and that the
//! client must not retry; a failure of the moment (a busy database) is a 503
//! with Retry-After, and the retry succeeds.

use std::time::Duration;

use crate::raw::{Raw, no_mallory_trigger};
use payment_service::{Config, DedupMode};
use serde_json::json;
use tempfile::TempDir;

use crate::{BODY, TestApp, assert_problem, db_path, header, spawn_app, spawn_app_in};

/// Stops the service, changes its database behind its back, restarts it.
async fn edit_offline(app: TestApp, sql: &str, configure: impl FnOnce(&mut Config)) -> TestApp {
    let dir = app.stop_keeping_dir().await;
    Raw::open(&db_path(&dir)).execute_batch(sql);
    spawn_app_in(dir, configure).await
}

fn balances(dir: &TempDir) -> Vec<(String, i64)> {
    Raw::open(&db_path(dir)).pairs("SELECT name, balance_minor FROM accounts ORDER BY name")
}

/// A refusal that would repeat: 422 with the given type, no Retry-After.
async fn assert_final_refusal(response: reqwest::Response, slug: &str) -> serde_json::Value {
    assert_eq!(header(&response, "retry-after"), None, "{slug}: nothing to wait for");
    assert_problem(response, 422, slug).await
}

#[tokio::test]
async fn a_payment_that_would_overflow_a_balance_is_a_422_every_time_and_stores_nothing() {
    let app = spawn_app(|_| {}).await;
    assert_eq!(app.pay(Some("first"), BODY).await.status(), 201); // bianca -1.00, marc +1.00
    let seed = format!(
        "UPDATE accounts SET balance_minor = {} WHERE name = 'marc';
         UPDATE accounts SET balance_minor = {} WHERE name = 'bianca';",
        i64::MAX - 50,
        i64::MIN + 50
    );
    let app = edit_offline(app, &seed, |_| {}).await;
    // Credit side (marc) and debit side (bianca), keyed and keyless.
    let to_marc = r#"{"src": "carol", "dest": "marc", "amount": "1"}"#;
    let from_bianca = r#"{"src": "bianca", "dest": "carol", "amount": "1"}"#;
    for (key, body, account) in [
        (Some("to-marc"), to_marc, "marc"),
        (None, to_marc, "marc"),
        (Some("from-bianca"), from_bianca, "bianca"),
    ] {
        for attempt in 0..2 {
            let problem = assert_final_refusal(app.pay(key, body).await, "balance-out-of-range").await;
            let detail = problem["detail"].as_str().unwrap_or("");
            assert!(detail.contains(&format!("{account:?}")), "{attempt}: {problem}");
        }
    }
    let stats = app.stats().await;
    assert_eq!(
        (stats["payments"].as_i64(), stats["executed"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(
        (stats["rejected"].as_u64(), stats["mismatches_422"].as_u64()),
        (Some(6), Some(0))
    );
    // Nothing of it stored: not the payment, not the key, not a balance.
    let lookup = json!({"keys": ["to-marc", "from-bianca"]}).to_string();
    let found: serde_json::Value = app.lookup_raw(lookup).await.json().await.unwrap();
    assert_eq!(found["payments"], json!([]));
    let dir = app.stop_keeping_dir().await;
    assert_eq!(
        balances(&dir),
        vec![("bianca".to_owned(), i64::MIN + 50), ("marc".to_owned(), i64::MAX - 50)]
    );
    // The claim-then-complete path frees the key: the retry is a 422 again, not a 409.
    let app = spawn_app_in(dir, |c| c.processing_delay = Duration::from_millis(20)).await;
    for _ in 0..2 {
        assert_final_refusal(app.pay(Some("slow"), to_marc).await, "balance-out-of-range").await;
    }
    assert_eq!(app.stats().await["keys_in_flight"], 0);
    app.stop().await;
}

#[tokio::test]
async fn a_payment_the_ledger_refuses_is_a_422_that_repeats_and_stores_nothing() {
    let app = spawn_app(|_| {}).await;
    assert_eq!(app.pay(Some("first"), BODY).await.status(), 201);
    let trigger = no_mallory_trigger();
    let mallory = r#"{"src": "mallory", "dest": "marc", "amount": "1"}"#;
    let app = edit_offline(app, trigger, |c| c.dedup = DedupMode::Off).await;
    for key in [Some("m"), Some("m"), None] {
        let problem = assert_final_refusal(app.pay(key, mallory).await, "refused-by-ledger").await;
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("mallory may not pay")),
            "{problem}"
        );
        assert_eq!(problem["idempotency_key"].as_str(), key);
    }
    // The same under --dedup unique, in one step and in claim-then-complete.
    let app = edit_offline(app, "", |_| {}).await;
    for _ in 0..2 {
        assert_final_refusal(app.pay(Some("m"), mallory).await, "refused-by-ledger").await;
    }
    let app = edit_offline(app, "", |c| c.processing_delay = Duration::from_millis(20)).await;
    for _ in 0..2 {
        assert_final_refusal(app.pay(Some("m-slow"), mallory).await, "refused-by-ledger").await;
    }
    // Everyone else still pays; nothing of mallory's is stored.
    assert_eq!(app.pay(Some("second"), BODY).await.status(), 201);
    let stats = app.stats().await;
    assert_eq!(stats["payments"], 2);
    assert_eq!(
        (stats["stored_responses"].as_i64(), stats["keys_in_flight"].as_i64()),
        (Some(2), Some(0))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_busy_database_is_a_503_with_retry_after_and_the_retry_succeeds() {
    let app = spawn_app(|_| {}).await;
    // Another connection holds the write lock past the writer's busy timeout.
    let mut holder = Raw::open(&db_path(&app.dir));
    holder.hold_write_lock();
    let response = app.pay(Some("busy"), BODY).await;
    assert_eq!(header(&response, "retry-after"), Some("1"));
    let problem = assert_problem(response, 503, "temporarily-unavailable").await;
    assert!(
        problem["detail"].as_str().is_some_and(|d| d.contains("busy")),
        "{problem}"
    );
    holder.release_write_lock();
    let retry = app.pay(Some("busy"), BODY).await;
    assert_eq!(retry.status(), 201);
    assert_eq!(header(&retry, "idempotent-replayed"), Some("false"));
    assert_eq!(app.stats().await["payments"], 1);
    app.stop().await;
}
