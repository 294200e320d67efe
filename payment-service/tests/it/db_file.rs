//! The database file under a running service: removed or renamed, the
//! service stops acknowledging and says why; in use by another service, it
//! does not start; a failed or abandoned start leaves nothing running.

use std::time::{Duration, Instant};

use payment_service::{Config, Service};

use crate::{BODY, WAIT, assert_problem, db_path, spawn_app};

#[tokio::test]
async fn a_database_file_removed_or_renamed_under_the_service_is_never_acknowledged_again() {
    crate::sqlite_only!("a SQLite file removed or renamed under the service (PostgreSQL has no file of ours)");
    for (change, writes_first) in [("rename", true), ("remove", true), ("rename", false)] {
        let app = spawn_app(|_| {}).await;
        assert_eq!(app.pay(Some("before"), BODY).await.status(), 201);
        let db = db_path(&app.dir);
        match change {
            "rename" => std::fs::rename(&db, db.with_extension("moved")).expect("rename"),
            _ => std::fs::remove_file(&db).expect("remove"),
        }
        let what = format!("{change}, writes first: {writes_first}");
        if writes_first {
            // A new payment and a replay: neither claims success.
            for key in ["after", "before"] {
                let problem = assert_problem(app.pay(Some(key), BODY).await, 503, "database-replaced").await;
                let detail = problem["detail"].as_str().unwrap_or("");
                assert!(detail.contains("payments.db"), "{what}: {problem}");
            }
        }
        let health = app.client.get(app.url("/health")).send().await.expect("health");
        assert_problem(health, 503, "database-replaced").await;
        let stats = app.client.get(app.url("/stats")).send().await.expect("stats");
        assert_problem(stats, 503, "database-replaced").await;
        assert_problem(app.pay(Some("later"), BODY).await, 503, "database-replaced").await;
        app.stop().await;
    }
}

#[tokio::test]
async fn a_second_service_on_the_same_database_refuses_to_start_and_says_why() {
    let app = spawn_app(|_| {}).await;
    assert_eq!(
        app.pay(Some("first"), BODY).await.status(),
        201,
        "the first service is up"
    );
    let db = db_path(&app.dir);
    let refused = Service::open(Config::new(&db))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(refused.contains(&db.display().to_string()), "{refused}");
    assert!(refused.contains("in use by another payment-service"), "{refused}");
    assert!(refused.contains("Stop the other service first"), "{refused}");
    // The running one is untouched.
    assert_eq!(app.pay(Some("still"), BODY).await.status(), 201);
    // The real binary says so and exits non-zero.
    let binary = std::process::Command::new(env!("CARGO_BIN_EXE_payment-service"))
        .args(["--listen", "127.0.0.1:0", "--db"])
        .arg(&db)
        .stdin(std::process::Stdio::null())
        .output();
    let output = tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || binary))
        .await
        .expect("the second service exits at once")
        .expect("task")
        .expect("run the binary");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use by another payment-service"), "{stderr}");
    // Once the first has stopped, the file is free.
    let dir = app.stop_keeping_dir().await;
    let service = Service::open(Config::new(db_path(&dir))).await.expect("free");
    service.stop().await;
}

#[tokio::test]
async fn a_failed_start_leaves_no_writer_behind() {
    crate::sqlite_only!("a SQLite file that is not a database, and its lock file");
    let dir = tempfile::tempdir().expect("dir");
    let db = db_path(&dir);
    std::fs::write(&db, vec![b'x'; 4096]).expect("garbage");
    let failed = Service::open(Config::new(&db))
        .await
        .err()
        .expect("not a database")
        .to_string();
    assert!(failed.contains("cannot open the database"), "{failed}");
    // The writer thread took the lock; it is gone, and the lock with it, by
    // the time the error is returned: a start on a good file works at once.
    std::fs::remove_file(&db).expect("remove");
    let service = Service::open(Config::new(&db)).await.expect("lock released");
    service.stop().await;
}

#[tokio::test]
async fn a_service_dropped_without_stop_still_stops_its_writer() {
    let dir = tempfile::tempdir().expect("dir");
    let db = db_path(&dir);
    // What an early `?` after the start does: drop it.
    drop(Service::open(Config::new(&db)).await.expect("start"));
    // The drop guard stops the writer, which releases the lock.
    let deadline = Instant::now() + WAIT;
    let service = loop {
        match Service::open(Config::new(&db)).await {
            Ok(service) => break service,
            Err(e) => assert!(Instant::now() < deadline, "the writer is still running: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    service.stop().await;
}
