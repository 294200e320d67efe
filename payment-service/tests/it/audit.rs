//! `/stats` shows figures the database maintains (one row, O(1)); `GET /audit`
//! and `payment-service audit --db FILE` recompute them from the payments
//! (O(n)) and say whether they agree. A database of the previous version is
//! brought up to date at start.

use std::time::{Duration, Instant};

use crate::raw::{Raw, no_mallory_trigger};
use payment_service::{Config, DedupMode};
use serde_json::{Value, json};

use crate::{BODY, TestApp, WAIT, db_path, spawn_app, spawn_app_in};

/// Stops the service, runs `sql` on its database, restarts it with `configure`.
async fn restart_with(app: TestApp, sql: &str, configure: impl FnOnce(&mut Config)) -> TestApp {
    let dir = app.stop_keeping_dir().await;
    Raw::open(&db_path(&dir)).execute_batch(sql);
    spawn_app_in(dir, configure).await
}

impl TestApp {
    pub async fn audit(&self) -> Value {
        self.get_json("/audit").await
    }
}

/// The figures /stats shows, named as the audit names them.
fn stats_figures(stats: &Value) -> Value {
    let names = [
        "payments",
        "last_payment_id",
        "total_amount_minor",
        "keyed_payments",
        "distinct_keys",
        "duplicate_keys",
        "accounts",
        "stored_responses",
        "keys_in_flight",
    ];
    names.iter().map(|n| ((*n).to_owned(), stats[*n].clone())).collect()
}

/// The audit's maintained figures, less the one /stats shows as an invariant.
fn maintained_figures(audit: &Value) -> Value {
    let mut m = audit["maintained"].clone();
    m.as_object_mut()
        .expect("maintained figures")
        .remove("balance_sum_minor");
    m
}

pub(crate) fn assert_agrees(audit: &Value) {
    assert_eq!(audit["verdict"], "agree", "{audit:#}");
    assert_eq!(audit["maintained"], audit["recomputed"], "{audit:#}");
    assert_eq!(audit["findings"], json!([]), "{audit:#}");
}

const TO_CAROL: &str = r#"{"src": "marc", "dest": "carol", "amount": "2.50"}"#;
const MALLORY: &str = r#"{"src": "mallory", "dest": "marc", "amount": "1"}"#;

#[tokio::test]
async fn maintained_figures_equal_the_audit_after_a_mixed_workload() {
    let app = spawn_app(|_| {}).await;
    for key in ["a", "b", "c"] {
        assert_eq!(app.pay(Some(key), BODY).await.status(), 201);
    }
    assert_eq!(app.pay(Some("a"), BODY).await.status(), 201); // replay
    assert_eq!(app.pay(Some("a"), TO_CAROL).await.status(), 422); // key reused
    assert_eq!(app.pay(None, TO_CAROL).await.status(), 201);
    // A payment the ledger refuses (a rule added to the schema) changes nothing.
    let trigger = no_mallory_trigger();
    let app = restart_with(app, trigger, |c| c.dedup = DedupMode::Off).await;
    assert_eq!(app.pay(Some("m"), MALLORY).await.status(), 422);
    // Dedup off: a retry pays again, and an old key gets a second payment.
    for key in ["dup", "dup", "a"] {
        assert_eq!(app.pay(Some(key), TO_CAROL).await.status(), 201);
    }
    let app = restart_with(app, "", |c| c.dedup = DedupMode::CheckThenInsert).await;
    assert_eq!(app.pay(Some("cti"), BODY).await.status(), 201);
    assert_eq!(app.pay(Some("cti"), BODY).await.status(), 201); // replay from the ledger
    let app = restart_with(app, "", |c| c.processing_delay = Duration::from_millis(20)).await;
    assert_eq!(app.pay(Some("slow"), BODY).await.status(), 201);
    assert_eq!(app.pay(Some("m-slow"), MALLORY).await.status(), 422);
    let audit = app.audit().await;
    assert_agrees(&audit);
    let stats = app.stats().await;
    assert_eq!(stats_figures(&stats), maintained_figures(&audit));
    let r = &audit["recomputed"];
    assert_eq!(
        (r["payments"].as_i64(), r["duplicate_keys"].as_i64()),
        (Some(9), Some(2))
    );
    assert_eq!(stats["invariants"]["one_payment_per_key"], false);
    // After a DELETE the figures start afresh and still agree.
    let deleted = app.client.delete(app.url("/payments")).send().await.expect("DELETE");
    assert_eq!(deleted.status(), 200);
    assert_eq!(app.pay(Some("after"), BODY).await.status(), 201);
    assert_eq!(app.pay(None, TO_CAROL).await.status(), 201);
    let audit = app.audit().await;
    assert_agrees(&audit);
    assert_eq!(audit["recomputed"]["payments"], 2);
    assert_eq!(stats_figures(&app.stats().await), maintained_figures(&audit));
    app.stop().await;
}

/// Polls /stats until an audit's result that found `off_ledger` accounts
/// off the ledger is recorded.
async fn stats_after_audit(app: &TestApp, off_ledger: i64) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = app.stats().await;
        if stats["last_audit"]["accounts_off_ledger"] == off_ledger || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_audit_finds_a_tampered_totals_row_and_a_tampered_balance() {
    let app = spawn_app(|_| {}).await;
    for key in ["a", "b", "c"] {
        assert_eq!(app.pay(Some(key), BODY).await.status(), 201);
    }
    let app = restart_with(app, "UPDATE ledger_totals SET amount_lo = amount_lo + 1", |_| {}).await;
    let audit = app.audit().await;
    assert_eq!(audit["verdict"], "disagree", "{audit:#}");
    assert_eq!(
        audit["findings"],
        json!(["total_amount_minor: maintained 301, recomputed 300"])
    );
    // /stats shows what is maintained; the audit is what checks it.
    let stats = stats_after_audit(&app, 0).await;
    assert_eq!(stats["total_amount_minor"], 301);
    assert_eq!(stats["last_audit"]["verdict"], "disagree");
    assert_eq!(stats["invariants"]["balances_match_ledger"], true);

    let fix_and_tamper = "UPDATE ledger_totals SET amount_lo = amount_lo - 1;
                          UPDATE accounts SET balance_minor = balance_minor + 5 WHERE name = 'marc';";
    let app = restart_with(app, fix_and_tamper, |_| {}).await;
    let audit = app.audit().await;
    assert_eq!(audit["verdict"], "disagree", "{audit:#}");
    assert_eq!(audit["accounts_off_ledger"], 1);
    assert_eq!(
        audit["findings"],
        json!([
            "balance_sum_minor: maintained 0, recomputed 5",
            "1 accounts have a balance that is not their credits minus debits"
        ])
    );
    assert_eq!(audit["invariants"]["balances_match_ledger"], false);
    assert_eq!(audit["invariants"]["balances_conserved"], false);
    let stats = stats_after_audit(&app, 1).await;
    assert_eq!(stats["invariants"]["balances_match_ledger"], false);
    assert_eq!(stats["last_audit"]["accounts_off_ledger"], 1);
    app.stop().await;
}

/// The schema of the version before maintained figures, as it wrote files.
const PREVIOUS_SCHEMA: &str = "
CREATE TABLE payments (
    id INTEGER PRIMARY KEY, src TEXT NOT NULL, dest TEXT NOT NULL CHECK (dest <> src),
    amount_minor INTEGER NOT NULL CHECK (typeof(amount_minor) = 'integer' AND amount_minor > 0 AND amount_minor <= 100000000000),
    idem_key TEXT, dedup_key TEXT UNIQUE, created_at_ms INTEGER NOT NULL);
CREATE INDEX payments_by_idem_key ON payments(idem_key) WHERE idem_key IS NOT NULL;
CREATE TABLE accounts (name TEXT PRIMARY KEY, balance_minor INTEGER NOT NULL CHECK (typeof(balance_minor) = 'integer')) WITHOUT ROWID;
CREATE TABLE idempotency_keys (
    idem_key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, state TEXT NOT NULL CHECK (state IN ('in_progress', 'completed')),
    lock_owner INTEGER, locked_until_ms INTEGER, payment_id INTEGER REFERENCES payments(id), response_status INTEGER,
    response_body TEXT, created_at_ms INTEGER NOT NULL, completed_at_ms INTEGER);
CREATE INDEX idempotency_keys_by_completion ON idempotency_keys(completed_at_ms) WHERE state = 'completed';
PRAGMA journal_mode = WAL;
INSERT INTO payments (src, dest, amount_minor, idem_key, dedup_key, created_at_ms) VALUES
    ('bianca', 'marc', 100, 'k1', 'k1', 0), ('marc', 'carol', 250, NULL, NULL, 0),
    ('bianca', 'marc', 100, 'k2', NULL, 0), ('bianca', 'marc', 100, 'k2', NULL, 0);
INSERT INTO accounts VALUES ('bianca', -300), ('marc', 50), ('carol', 250);
INSERT INTO idempotency_keys (idem_key, fingerprint, state, payment_id, response_status, response_body, created_at_ms, completed_at_ms)
    VALUES ('k1', 'bianca\u{1f}marc\u{1f}100', 'completed', 1, 201, '{}', 0, 0);
INSERT INTO idempotency_keys (idem_key, fingerprint, state, lock_owner, locked_until_ms, created_at_ms)
    VALUES ('k9', 'bianca\u{1f}marc\u{1f}100', 'in_progress', 7, 9999999999999, 0);
";

#[tokio::test]
async fn a_database_of_the_previous_version_is_brought_up_to_date_at_start() {
    crate::sqlite_only!("a file of SQLite's older schema; a PostgreSQL database starts at the current one");
    let dir = tempfile::tempdir().expect("temp dir");
    Raw::open(&db_path(&dir)).execute_batch(PREVIOUS_SCHEMA);
    let app = spawn_app_in(dir, |_| {}).await;
    let stats = app.stats().await;
    let expected = json!({
        "payments": 4, "last_payment_id": 4, "total_amount_minor": 550, "keyed_payments": 3,
        "distinct_keys": 2, "duplicate_keys": 1, "accounts": 3, "stored_responses": 1, "keys_in_flight": 1
    });
    assert_eq!(stats_figures(&stats), expected);
    assert_eq!(stats["invariants"]["balances_conserved"], true);
    // The lease of the dead process was expired at start: its retry takes over.
    assert_eq!(app.pay(Some("k9"), BODY).await.status(), 201);
    assert_eq!(app.stats().await["lease_takeovers"], 1);
    assert_agrees(&app.audit().await);
    // A second start finds the file current: the figures are not computed again.
    let app = restart_with(app, "UPDATE ledger_totals SET payments = payments + 100", |_| {}).await;
    assert_eq!(app.stats().await["payments"], 105);
    app.stop().await;
}

fn audit_command(db: &std::path::Path) -> (i32, Value) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_payment-service"))
        .arg("audit")
        .arg("--db")
        .arg(db)
        .output()
        .expect("run payment-service audit");
    let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output.status.code().unwrap_or(-1), report)
}

#[tokio::test]
async fn the_audit_subcommand_audits_a_file_and_exits_with_its_verdict() {
    let app = spawn_app(|_| {}).await;
    for key in ["a", "b"] {
        assert_eq!(app.pay(Some(key), BODY).await.status(), 201);
    }
    // While the service runs on the file, and after it stopped.
    let (status, report) = audit_command(&db_path(&app.dir));
    assert_eq!(status, 0, "{report:#}");
    assert_agrees(&report);
    let dir = app.stop_keeping_dir().await;
    let (status, report) = audit_command(&db_path(&dir));
    assert_eq!((status, report["recomputed"]["payments"].as_i64()), (0, Some(2)));
    Raw::open(&db_path(&dir)).execute_batch("UPDATE ledger_totals SET duplicate_keys = 1");
    let (status, report) = audit_command(&db_path(&dir));
    assert_eq!((status, &report["verdict"]), (1, &json!("disagree")), "{report:#}");
    let (status, _) = audit_command(&dir.path().join("missing.db"));
    assert_ne!(status, 0);
}
