//! Replicas: several services on one SQLite file (`--replica`). Two services
//! in this test process are two writers with their own connections, locks and
//! liveness files, as two processes would be; a replica that must die for
//! real is the binary, killed with SIGKILL.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use payment_service::{Config, Service};
use serde_json::{Value, json};

use crate::audit::assert_agrees;
use crate::crash::{ServiceProcess, start};
use crate::{BODY, TestApp, WAIT, db_path, header, spawn_app};

/// A replica on the database file `db` (its own temporary directory unused).
async fn replica(db: &Path, configure: impl FnOnce(&mut Config)) -> TestApp {
    let db = db.to_owned();
    spawn_app(move |c| {
        c.db = db;
        c.replica = true;
        configure(c);
    })
    .await
}

fn shared_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = db_path(&dir);
    (dir, db)
}

/// Polls `stats` until `field` equals `want`, within [`WAIT`].
async fn wait_for_stat(app: &TestApp, field: &str, want: i64) {
    let deadline = Instant::now() + WAIT;
    while app.stats().await[field].as_i64() != Some(want) {
        assert!(Instant::now() < deadline, "{field} never became {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn replicas_share_a_file_each_with_its_id_and_an_exclusive_service_is_refused() {
    let (_dir, db) = shared_db();
    let a = replica(&db, |_| {}).await;
    let b = replica(&db, |_| {}).await;
    let (ha, hb) = (a.get_json("/health").await, b.get_json("/health").await);
    assert_eq!((&ha["status"], &hb["status"]), (&json!("ok"), &json!("ok")));
    let id = |v: &Value| v["replica"].as_str().unwrap_or_default().to_owned();
    assert_eq!(id(&ha).len(), 8, "{ha}");
    assert_ne!(id(&ha), id(&hb), "each process its own id");
    assert_eq!(id(&a.stats().await), id(&ha));
    let refused = Service::open(Config::new(&db))
        .await
        .err()
        .expect("an exclusive service is refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("shared by payment-service replicas") && message.contains("--replica"),
        "{message}"
    );
    assert_eq!(liveness_files(&db).len(), 2, "one per live replica");
    a.stop().await;
    b.stop().await;
    assert_eq!(
        liveness_files(&db),
        Vec::<String>::new(),
        "a clean stop removes its own"
    );
}

/// The liveness files next to `db` (on PostgreSQL: the replicas' rows).
fn liveness_files(db: &Path) -> Vec<String> {
    if crate::postgres_admin().is_some() {
        let mut raw = crate::raw::Raw::open(db);
        return raw
            .pairs("SELECT CAST(id AS TEXT), started_at_ms FROM replicas")
            .into_iter()
            .map(|(id, _)| id)
            .collect();
    }
    std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.contains(".replica-"))
        .collect()
}

/// Pays `key` through `app` until a 2xx (409 means the other replica holds it).
async fn pay_until_answered(app: &TestApp, key: &str) -> reqwest::Response {
    let deadline = Instant::now() + WAIT;
    loop {
        let response = app.pay(Some(key), BODY).await;
        if response.status() != 409 {
            return response;
        }
        assert!(Instant::now() < deadline, "{key} stayed in flight");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every key sent at once through both replicas: one payment per key, and
/// the figures both maintain in the shared file equal the audit's.
async fn same_keys_through_two_replicas(delay: Duration) {
    const KEYS: usize = 60;
    let (_dir, db) = shared_db();
    let a = replica(&db, |c| c.processing_delay = delay).await;
    let b = replica(&db, |c| c.processing_delay = delay).await;
    let mut answers = Vec::new();
    for i in 0..KEYS {
        let key = format!("k{i}");
        let (x, y) = tokio::join!(pay_until_answered(&a, &key), pay_until_answered(&b, &key));
        answers.push((x.status().as_u16(), y.status().as_u16()));
        let replayed = [header(&x, "idempotent-replayed"), header(&y, "idempotent-replayed")];
        assert_eq!(
            replayed.iter().filter(|r| **r == Some("false")).count(),
            1,
            "{key}: {replayed:?}"
        );
    }
    assert!(answers.iter().all(|a| *a == (201, 201)), "{answers:?}");
    let (sa, sb) = (a.stats().await, b.stats().await);
    assert_eq!(
        (sa["payments"].as_u64(), sb["payments"].as_u64()),
        (Some(KEYS as u64), Some(KEYS as u64))
    );
    assert_eq!(
        sa["executed"].as_u64().unwrap() + sb["executed"].as_u64().unwrap(),
        KEYS as u64
    );
    assert_eq!((&sa["duplicate_keys"], &sa["keys_in_flight"]), (&json!(0), &json!(0)));
    assert_agrees(&a.audit().await);
    assert_agrees(&b.audit().await);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_same_keys_through_two_replicas_pay_once_and_stats_equal_the_audit() {
    same_keys_through_two_replicas(Duration::ZERO).await;
}

#[tokio::test]
async fn claim_then_complete_across_replicas_pays_once_and_stats_equal_the_audit() {
    same_keys_through_two_replicas(Duration::from_millis(20)).await;
}

#[tokio::test]
async fn a_live_replicas_lease_survives_another_replicas_start() {
    let (_dir, db) = shared_db();
    let slow = |c: &mut Config| {
        // Far longer than B's start, so A is surely still working when B asks.
        c.processing_delay = Duration::from_millis(4000);
        c.key_lease = Duration::from_secs(60);
    };
    let a = replica(&db, slow).await;
    let first = tokio::spawn({
        let (client, url) = (a.client.clone(), a.url("/payments"));
        async move {
            let request = client.post(url).header("content-type", "application/json");
            request.header("idempotency-key", "k").body(BODY).send().await
        }
    });
    wait_for_stat(&a, "keys_in_flight", 1).await;
    // A start-up that expired every lease would hand A's key to B's retry.
    let b = replica(&db, slow).await;
    assert_eq!(
        b.pay(Some("k"), BODY).await.status(),
        409,
        "A is alive: its key stays A's"
    );
    let first = first.await.unwrap().expect("A answers");
    assert_eq!(
        (first.status().as_u16(), header(&first, "idempotent-replayed")),
        (201, Some("false"))
    );
    let retry = b.pay(Some("k"), BODY).await;
    assert_eq!(
        (retry.status().as_u16(), header(&retry, "idempotent-replayed")),
        (201, Some("true"))
    );
    let stats = b.stats().await;
    assert_eq!((&stats["payments"], &stats["lease_takeovers"]), (&json!(1), &json!(0)));
    a.stop().await;
    b.stop().await;
}

/// The binary as a replica with a slow payment and an hour-long lease,
/// holding `key` in flight (claimed and committed), and the request waiting
/// for its answer.
async fn replica_holding(
    db: &Path,
    key: &str,
) -> (
    ServiceProcess,
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) {
    let holder = start(db, &["--replica", "--processing-delay-ms", "5000", "--key-lease", "1h"]);
    let in_flight = tokio::spawn({
        let (client, url, key) = (crate::client(), format!("{}/payments", holder.base), key.to_owned());
        async move {
            let request = client.post(url).header("content-type", "application/json");
            request.header("idempotency-key", key).body(BODY).send().await
        }
    });
    let deadline = Instant::now() + WAIT;
    while holder.stats().await["keys_in_flight"] != 1 {
        assert!(Instant::now() < deadline, "the key was never claimed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (holder, in_flight)
}

#[tokio::test]
async fn a_dead_replicas_lease_is_taken_over_by_a_running_replica() {
    let (_dir, db) = shared_db();
    let b = replica(&db, |c| c.key_lease = Duration::from_secs(3600)).await;
    let (holder, in_flight) = replica_holding(&db, "orphan").await;
    assert_eq!(
        b.pay(Some("orphan"), BODY).await.status(),
        409,
        "alive: its lease holds"
    );
    holder.kill();
    assert!(in_flight.await.unwrap().is_err(), "killed before answering");
    // No hour-long wait: B's watcher finds the dead replica within a second or so.
    let retry = pay_until_answered(&b, "orphan").await;
    assert_eq!(
        (retry.status().as_u16(), header(&retry, "idempotent-replayed")),
        (201, Some("false"))
    );
    let stats = b.stats().await;
    let figures = (&stats["payments"], &stats["lease_takeovers"], &stats["keys_in_flight"]);
    assert_eq!(figures, (&json!(1), &json!(1), &json!(0)));
    assert_agrees(&b.audit().await);
    b.stop().await;
}

#[tokio::test]
async fn a_dead_replicas_lease_is_taken_over_at_the_next_start() {
    let (_dir, db) = shared_db();
    // No replica runs when it dies: only a start-up can notice.
    let (holder, in_flight) = replica_holding(&db, "orphan").await;
    holder.kill();
    assert!(in_flight.await.unwrap().is_err(), "killed before answering");
    let c = replica(&db, |c| c.key_lease = Duration::from_secs(3600)).await;
    let retry = c.pay(Some("orphan"), BODY).await;
    assert_eq!(
        (retry.status().as_u16(), header(&retry, "idempotent-replayed")),
        (201, Some("false"))
    );
    assert_eq!(c.stats().await["lease_takeovers"], 1);
    let leftovers = liveness_files(&db);
    assert_eq!(
        leftovers.len(),
        1,
        "only the live replica's liveness file: {leftovers:?}"
    );
    c.stop().await;
}

#[tokio::test]
async fn delete_with_replicas_empties_the_shared_file_in_place() {
    let (_dir, db) = shared_db();
    let a = replica(&db, |_| {}).await;
    let b = replica(&db, |_| {}).await;
    for (app, key) in [(&a, "x"), (&b, "y"), (&a, "z")] {
        assert_eq!(app.pay(Some(key), BODY).await.status(), 201);
    }
    // A file's identity; PostgreSQL has no file of ours (always the same).
    let inode = || match crate::postgres_admin() {
        Some(_) => 0,
        None => std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&db).unwrap()),
    };
    let before = inode();
    let deleted = a.client.delete(b.url("/payments")).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    let deleted: Value = deleted.json().await.unwrap();
    assert_eq!(deleted["deleted"]["payments"], 3, "{deleted}");
    assert_eq!(inode(), before, "the same file, emptied: A keeps working on it");
    for app in [&a, &b] {
        assert_eq!(app.get_json("/health").await["status"], "ok");
        assert_eq!(app.stats().await["payments"], 0);
    }
    let again = a.pay(Some("x"), BODY).await;
    assert_eq!(
        (again.status().as_u16(), header(&again, "idempotent-replayed")),
        (201, Some("false"))
    );
    assert_eq!(b.pay(Some("x"), BODY).await.status(), 201);
    assert_eq!(b.stats().await["payments"], 1);
    assert_agrees(&b.audit().await);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn replicas_starting_together_on_a_new_database_all_start() {
    // One of them creates the schema; the others wait for it and find it.
    let (_dir, db) = shared_db();
    let (a, b, c) = tokio::join!(replica(&db, |_| {}), replica(&db, |_| {}), replica(&db, |_| {}));
    for (app, key) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        assert_eq!(app.pay(Some(key), BODY).await.status(), 201);
    }
    assert_eq!(c.stats().await["payments"], 3);
    assert_agrees(&c.audit().await);
    for app in [a, b, c] {
        app.stop().await;
    }
}
