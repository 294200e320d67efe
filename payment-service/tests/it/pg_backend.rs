//! What only the PostgreSQL backend has: its setup mistake, and a connection
//! the server closes under the service. (Everything else is the shared suite
//! run with `EO_TEST_POSTGRES_URL`.)

use std::time::Instant;

use crate::raw::Raw;
use crate::{BODY, WAIT, db_path, spawn_app};

#[test]
fn an_unreachable_postgres_url_exits_2_with_the_fix() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_payment-service"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--db",
            "postgres://nobody@127.0.0.1:1/ledger",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is the server running? try .ci/postgres.sh start"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_service_reconnects_after_the_server_closed_its_connections() {
    if crate::postgres_admin().is_none() {
        eprintln!(
            "skipped without {}: a PostgreSQL server's connections",
            crate::POSTGRES_ENV
        );
        return;
    }
    let app = spawn_app(|_| {}).await;
    assert_eq!(app.pay(Some("before"), BODY).await.status(), 201);
    // What a server restart or a network cut does to the writer and readers.
    let mut admin = Raw::open(&db_path(&app.dir));
    let killed = admin.count(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name IN ('payment-service writer', 'payment-service reader')",
    );
    assert!(killed >= 1, "the writer's connection at least");
    // The request that meets the break is refused (503, nothing stored);
    // the next ones are paid on a new connection.
    let deadline = Instant::now() + WAIT;
    let mut statuses = Vec::new();
    loop {
        let status = app.pay(Some("after"), BODY).await.status().as_u16();
        statuses.push(status);
        if status == 201 {
            break;
        }
        assert_eq!(status, 503, "{statuses:?}");
        assert!(Instant::now() < deadline, "never reconnected: {statuses:?}");
    }
    let stats = app.stats().await;
    assert_eq!(stats["payments"], 2, "{stats}");
    let audit = app.get_json("/audit").await;
    assert_eq!(audit["verdict"], "agree", "{audit}");
    app.stop().await;
}
