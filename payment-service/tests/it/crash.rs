//! Crash injection: the real binary as a child process, killed at a commit
//! point, restarted on the same database file.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::receiver::FakeReceiver;
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
    let db = crate::db_at(&dir, "crash.db");
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
    let db = crate::db_at(&dir, "crash.db");
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
    let db = crate::db_at(&dir, "crash.db");
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
        let db = crate::db_at(&dir, "seeded.db");
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

/// Polls the child's `/stats` until `done` holds for its outbox (bounded).
async fn outbox_until(service: &ServiceProcess, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = service.stats().await;
        if done(&stats["outbox"]) {
            return stats;
        }
        assert!(Instant::now() < deadline, "outbox never got there: {stats}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// Multi-threaded: the fake receiver must answer while the test blocks on the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_killed_between_send_and_mark_sends_again_after_restart() {
    let receiver = FakeReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = crate::db_at(&dir, "relay.db");
    let url = receiver.url();
    let mut doomed = start(&db, &["--receipts-url", &url, "--crash-relay-after-send", "1"]);
    // The answer may or may not beat the crash: the payment committed either way.
    let _ = doomed.pay("relay-1").await;
    let status = doomed.wait_exit();
    #[cfg(unix)]
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    assert_eq!(receiver.events().len(), 1, "sent once, then killed before marking");

    let revived = start(&db, &["--receipts-url", &url]);
    let stats = outbox_until(&revived, |o| o["delivered"] == 1).await;
    assert_eq!(
        (stats["payments"].as_i64(), stats["outbox"]["pending"].as_i64()),
        (Some(1), Some(0))
    );
    let events = receiver.events();
    assert_eq!(
        events.len(),
        2,
        "re-sent after the restart: the receiver sees a duplicate"
    );
    assert_eq!(events[0], events[1]);
    assert_eq!(events[0].key.as_deref(), Some("relay-1"));
    revived.kill();
}

// Multi-threaded: the fake receiver must answer while the test blocks on the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_outbox_a_crash_at_either_commit_point_keeps_payment_and_event_together() {
    let receiver = FakeReceiver::start().await;
    let url = receiver.url();
    let dir = tempfile::tempdir().unwrap();
    let db = crate::db_at(&dir, "outbox.db");
    let mut doomed = start(&db, &["--receipts-url", &url, "--crash-before-commit", "1"]);
    assert!(doomed.pay("before").await.is_err());
    assert!(!doomed.wait_exit().success());
    let mut doomed = start(&db, &["--receipts-url", &url, "--crash-after-commit", "1"]);
    let stats = doomed.stats().await;
    assert_eq!(
        (stats["payments"].as_i64(), stats["outbox"]["pending"].as_i64()),
        (Some(0), Some(0)),
        "neither"
    );
    assert!(doomed.pay("after").await.is_err());
    assert!(!doomed.wait_exit().success());

    let revived = start(&db, &["--receipts-url", &url]);
    let stats = outbox_until(&revived, |o| o["delivered"] == 1).await;
    assert_eq!(stats["payments"], 1, "both: the payment and its event");
    assert!(receiver.events().iter().all(|e| e.key.as_deref() == Some("after")));
    revived.kill();
    drop(dir);
}

// Multi-threaded: the fake receiver must answer while the test blocks on the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_commit_loses_the_receipt_when_the_process_dies_between_commit_and_call() {
    let receiver = FakeReceiver::start().await;
    let url = receiver.url();
    let dir = tempfile::tempdir().unwrap();
    let db = crate::db_at(&dir, "dual.db");
    let notify = ["--receipts-url", url.as_str(), "--notify", "after-commit"];
    let mut doomed = start(&db, &[&notify[..], &["--crash-after-commit", "1"]].concat());
    assert!(doomed.pay("dual").await.is_err());
    assert!(!doomed.wait_exit().success());

    let revived = start(&db, &notify);
    let retry = revived.pay("dual").await.expect("retry");
    assert_eq!(header(&retry, "idempotent-replayed"), Some("true"));
    let stats = revived.stats().await;
    assert_eq!(
        (stats["payments"].as_i64(), stats["outbox"]["pending"].as_i64()),
        (Some(1), Some(0))
    );
    assert!(
        receiver.events().is_empty(),
        "paid, never receipted: nothing remembers the call"
    );
    revived.kill();
}
