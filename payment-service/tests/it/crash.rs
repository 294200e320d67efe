//! Crash injection: the real binary as a child process, killed at a commit
//! point, restarted on the same database file.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{BODY, WAIT, client, header};

pub(crate) struct ServiceProcess {
    child: Child,
    pub(crate) base: String,
}

/// Starts `payment-service` on port 0 and reads the bound address from its
/// first stdout line.
pub(crate) fn start(db: &Path, extra: &[&str]) -> ServiceProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_payment-service"))
        .args(["--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .args(extra)
        .env("RUST_LOG", "payment_service=warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn payment-service");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let base = line.trim().rsplit(' ').next().expect("address").to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "unexpected first line {line:?}");
    ServiceProcess { child, base }
}

impl ServiceProcess {
    pub(crate) async fn pay(&self, key: &str) -> reqwest::Result<reqwest::Response> {
        client()
            .post(format!("{}/payments", self.base))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(BODY)
            .send()
            .await
    }

    pub(crate) async fn stats(&self) -> serde_json::Value {
        client()
            .get(format!("{}/stats", self.base))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json")
    }

    /// Waits (bounded) for the process to exit and returns whether it was
    /// killed by a signal rather than exiting normally.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the process did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(crate) fn kill(self) {
        drop(self);
    }
}

/// A failing assertion must not leave a service running behind the test.
impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test]
async fn crash_after_commit_then_restart_the_retry_replays() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let mut doomed = start(&db, &["--crash-after-commit", "1"]);
    let lost_ack = doomed.pay("crash-1").await;
    assert!(lost_ack.is_err(), "the process must die before answering: {lost_ack:?}");
    let status = doomed.wait_exit();
    assert!(!status.success(), "killed, not a clean exit");
    #[cfg(unix)]
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "kill -9, no core dump"
    );

    let revived = start(&db, &[]);
    let stats = revived.stats().await;
    assert_eq!(
        stats["payments"], 1,
        "the acknowledged-to-nobody payment was committed: {stats}"
    );
    let retry = revived.pay("crash-1").await.expect("retry");
    assert_eq!(retry.status(), 201);
    assert_eq!(header(&retry, "idempotent-replayed"), Some("true"));
    assert_eq!(revived.stats().await["payments"], 1);
    revived.kill();
}

#[tokio::test]
async fn crash_before_commit_then_restart_the_retry_executes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let mut doomed = start(&db, &["--crash-before-commit", "1"]);
    assert!(doomed.pay("crash-2").await.is_err());
    assert!(!doomed.wait_exit().success());

    let revived = start(&db, &[]);
    assert_eq!(revived.stats().await["payments"], 0, "nothing was committed");
    let retry = revived.pay("crash-2").await.expect("retry");
    assert_eq!(retry.status(), 201);
    assert_eq!(header(&retry, "idempotent-replayed"), Some("false"));
    assert_eq!(revived.stats().await["payments"], 1);
    revived.kill();
}

#[tokio::test]
async fn a_key_left_in_flight_by_a_dead_process_is_taken_over_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    // With a processing delay the key is claimed (committed) first; the crash
    // then hits the second commit, leaving the key in flight on disk.
    let mut doomed = start(
        &db,
        &[
            "--crash-before-commit",
            "1",
            "--processing-delay-ms",
            "50",
            "--key-lease",
            "1h",
        ],
    );
    assert!(doomed.pay("orphan").await.is_err());
    assert!(!doomed.wait_exit().success());

    let revived = start(&db, &["--key-lease", "1h"]);
    assert_eq!(revived.stats().await["keys_in_flight"], 1);
    // No hour-long wait: the dead process's lease was expired at startup.
    let retry = revived.pay("orphan").await.expect("retry");
    assert_eq!(retry.status(), 201);
    assert_eq!(header(&retry, "idempotent-replayed"), Some("false"));
    let stats = revived.stats().await;
    assert_eq!(
        (
            stats["payments"].as_i64(),
            stats["lease_takeovers"].as_i64(),
            stats["keys_in_flight"].as_i64()
        ),
        (Some(1), Some(1), Some(0))
    );
    revived.kill();
}

#[tokio::test]
async fn crash_injection_is_replayable_with_a_seed() {
    // The same seed and probability crash at the same payment, run after run.
    let mut crashed_at = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("seeded.db");
        let mut service = start(&db, &["--crash-after-commit", "0.3", "--seed", "42"]);
        let mut n = 0;
        loop {
            n += 1;
            assert!(n < 200, "a 30% crash never fired");
            if service.pay(&format!("s{n}")).await.is_err() {
                break;
            }
        }
        assert!(!service.wait_exit().success());
        crashed_at.push(n);
    }
    assert_eq!(crashed_at[0], crashed_at[1], "same seed, same crash point");
}
