//! `DELETE /payments` swaps a fresh database file in (O(1)) instead of
//! deleting every row: the ledger reads empty after the 200, nothing
//! acknowledged after it is lost, and the lock and file watch keep working.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::{Value, json};

use crate::{BODY, TestApp, WAIT, assert_problem, db_path, spawn_app, spawn_app_in};

fn inode(app_dir: &tempfile::TempDir) -> u64 {
    std::fs::metadata(db_path(app_dir)).expect("the database").ino()
}

async fn delete(app: &TestApp) -> Value {
    let response = app.client.delete(app.url("/payments")).send().await.expect("DELETE");
    assert_eq!(response.status(), 200);
    response.json().await.expect("JSON")
}

/// `<db>.next`, where the old ledger waits to be removed.
fn next_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("payments.db.next")
}

#[tokio::test]
async fn delete_swaps_in_a_fresh_file_and_the_service_goes_on_with_it() {
    crate::sqlite_only!(
        "the O(1) DELETE swaps SQLite files (PostgreSQL truncates in one transaction: wipe::reads_and_payments_during_deletes_never_fail_and_the_figures_agree)"
    );
    let app = spawn_app(|_| {}).await;
    for key in ["a", "b"] {
        assert_eq!(app.pay(Some(key), BODY).await.status(), 201);
    }
    let before = inode(&app.dir);
    assert_eq!(
        delete(&app).await,
        json!({"deleted": {"payments": 2, "accounts": 2, "keys": 2}})
    );
    assert_ne!(inode(&app.dir), before, "a fresh file, not the old one emptied");
    let stats = app.stats().await;
    assert_eq!(
        (stats["payments"].as_i64(), stats["accounts"].as_i64()),
        (Some(0), Some(0))
    );
    // The old key is new again; the ledger goes on in the fresh file.
    let paid = app.pay(Some("a"), BODY).await;
    assert_eq!(
        (paid.status().as_u16(), crate::header(&paid, "location")),
        (201, Some("/payments/1"))
    );
    assert_eq!(app.get_json("/health").await["status"], "ok");
    // The old ledger is removed in the background.
    let deadline = Instant::now() + WAIT;
    while next_file(&app.dir).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!next_file(&app.dir).exists());
    // What was acknowledged after the DELETE survives a restart.
    let dir = app.stop_keeping_dir().await;
    let app = spawn_app_in(dir, |_| {}).await;
    let stats = app.stats().await;
    assert_eq!(
        (stats["payments"].as_i64(), stats["keyed_payments"].as_i64()),
        (Some(1), Some(1))
    );
    app.stop().await;
}

#[tokio::test]
async fn the_file_watch_follows_the_fresh_file() {
    crate::sqlite_only!("the file watch of SQLite's swap");
    let app = spawn_app(|_| {}).await;
    assert_eq!(app.pay(Some("a"), BODY).await.status(), 201);
    delete(&app).await;
    assert_eq!(app.pay(Some("b"), BODY).await.status(), 201);
    // Now the fresh file is renamed away: noticed like the first one.
    std::fs::rename(db_path(&app.dir), app.dir.path().join("moved.db")).expect("rename");
    assert_problem(app.pay(Some("c"), BODY).await, 503, "database-replaced").await;
    let health = app.client.get(app.url("/health")).send().await.expect("GET /health");
    assert_problem(health, 503, "database-replaced").await;
}

#[tokio::test]
async fn with_another_process_on_the_file_the_ledger_is_deleted_in_place() {
    crate::sqlite_only!("another process on the SQLite file (its -wal and -shm)");
    let app = spawn_app(|_| {}).await;
    for key in ["a", "b", "c"] {
        assert_eq!(app.pay(Some(key), BODY).await.status(), 201);
    }
    let other = Connection::open(db_path(&app.dir)).expect("open");
    let seen: i64 = other
        .query_row("SELECT count(*) FROM payments", [], |r| r.get(0))
        .expect("read");
    assert_eq!(seen, 3);
    let before = inode(&app.dir);
    assert_eq!(delete(&app).await["deleted"]["payments"], 3);
    assert_eq!(inode(&app.dir), before, "the same file, emptied");
    assert_eq!(app.stats().await["payments"], 0);
    assert_eq!(app.pay(Some("a"), BODY).await.status(), 201);
    let seen: i64 = other
        .query_row("SELECT count(*) FROM payments", [], |r| r.get(0))
        .expect("read");
    assert_eq!(seen, 1);
    assert!(!next_file(&app.dir).exists());
    app.stop().await;
}

#[tokio::test]
async fn leftovers_of_an_interrupted_delete_are_removed_at_start() {
    crate::sqlite_only!("the leftovers of SQLite's file swap");
    let app = spawn_app(|_| {}).await;
    assert_eq!(app.pay(Some("a"), BODY).await.status(), 201);
    let dir = app.stop_keeping_dir().await;
    for name in ["payments.db.next", "payments.db.next-wal"] {
        std::fs::write(dir.path().join(name), b"an old ledger").expect("leftover");
    }
    let app = spawn_app_in(dir, |_| {}).await;
    assert!(!next_file(&app.dir).exists() && !app.dir.path().join("payments.db.next-wal").exists());
    assert_eq!(app.stats().await["payments"], 1);
    app.stop().await;
}

#[tokio::test]
async fn reads_and_payments_during_deletes_never_fail_and_the_figures_agree() {
    let app = spawn_app(|_| {}).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for path in [
        "/stats",
        "/payments?key=k-1",
        "/payments?after_id=0&limit=10",
        "/health",
    ] {
        let (client, url, stop) = (app.client.clone(), app.url(path), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && reads < 100_000 {
                let response = client.get(&url).send().await.expect("GET");
                assert_eq!(response.status(), 200, "{url}");
                reads += 1;
            }
            reads
        }));
    }
    for round in 0..5 {
        for i in 0..10 {
            let key = format!("k-{i}");
            assert_eq!(app.pay(Some(&key), BODY).await.status(), 201, "round {round}");
        }
        assert_eq!(delete(&app).await["deleted"]["payments"], 10);
    }
    assert_eq!(app.pay(Some("last"), BODY).await.status(), 201);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        assert!(reader.await.expect("reader") > 0);
    }
    let audit = app.get_json("/audit").await;
    assert_eq!(audit["verdict"], "agree", "{audit:#}");
    assert_eq!(audit["recomputed"]["payments"], 1);
    app.stop().await;
}
