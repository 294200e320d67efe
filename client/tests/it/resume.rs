//! A client killed mid-run resumes from its ledger with the same keys and
//! ends exactly once.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{WAIT, spawn_service, stats};

/// Starts `client pay` against `url` with a ledger, stdout discarded.
pub fn spawn_pay(
    client: &str,
    url: &str,
    ledger: &std::path::Path,
    count: &str,
    seed: &str,
    stderr: Stdio,
) -> KillOnDrop {
    let child = Command::new(client)
        .args([
            "pay",
            "--count",
            count,
            "--seed",
            seed,
            "--json",
            "--target",
            url,
            "--service",
            url,
        ])
        .arg("--ledger")
        .arg(ledger)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn client");
    KillOnDrop(child)
}

/// Runs `client resume --json --expect exactly-once` on `ledger` with `extra`
/// flags, off the test's runtime (the service runs on it).
pub async fn resume(client: &str, url: &str, ledger: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut command = Command::new(client);
    command
        .args([
            "resume",
            "--json",
            "--expect",
            "exactly-once",
            "--target",
            url,
            "--service",
            url,
        ])
        .args(extra)
        .arg("--ledger")
        .arg(ledger);
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run resume")
}

/// Waits (bounded) until the service holds `count` payments.
async fn wait_for_payments(service: &crate::Service, count: u64) {
    let deadline = Instant::now() + WAIT;
    while stats(service).await["payments"].as_u64().unwrap_or(0) < count {
        assert!(Instant::now() < deadline, "the client never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A failing assertion must not leave a client process running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn resume_after_a_client_crash_finishes_with_the_same_keys() {
    // A slow service so the client is surely mid-run when it is killed.
    let service = spawn_service(|c| c.processing_delay = Duration::from_millis(20)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger.jsonl");
    let client = env!("CARGO_BIN_EXE_client");
    let mut doomed = spawn_pay(client, &service.url, &ledger, "60", "77", Stdio::null());
    wait_for_payments(&service, 10).await;
    doomed.0.kill().expect("kill the client"); // SIGKILL: no cleanup, no flush
    doomed.0.wait().expect("reap");
    let paid_before = stats(&service).await["payments"].as_u64().unwrap_or(0);
    assert!(paid_before < 60, "killed mid-run ({paid_before} paid)");

    let output = resume(client, &service.url, &ledger, &[]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "resume failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON report");
    assert_eq!(report["reconciliation"]["verdict"], "exactly-once");
    assert_eq!(report["reconciliation"]["intents"], 60);
    assert_eq!(report["reconciliation"]["exactly_once"], 60);
    // The payments made before the crash came back as replays: same keys.
    assert!(
        report["summary"]["replays_seen"].as_u64().unwrap_or(0) >= paid_before,
        "{report}"
    );
    let after = stats(&service).await;
    assert_eq!(after["payments"], 60, "no payment twice, none lost");
    assert_eq!(after["duplicate_keys"], 0);
}

#[tokio::test]
async fn resume_refuses_other_key_strategies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger.jsonl");
    std::fs::write(&ledger, "").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_client"))
        .args([
            "resume",
            "--key",
            "per-attempt",
            "--target",
            "http://127.0.0.1:9",
            "--service",
            "http://127.0.0.1:9",
        ])
        .arg("--ledger")
        .arg(&ledger)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("per-payment"));
}

#[tokio::test]
async fn expect_sets_the_exit_status() {
    let service = spawn_service(|_| {}).await;
    let mut pay = Command::new(env!("CARGO_BIN_EXE_client"));
    pay.args([
        "pay",
        "--count",
        "3",
        "--key",
        "none",
        "--retries",
        "0",
        "--json",
        "--expect",
        "too-much",
    ])
    .args(["--target", &service.url, "--service", &service.url]);
    let output = tokio::task::spawn_blocking(move || pay.output())
        .await
        .expect("join")
        .expect("run");
    assert_eq!(output.status.code(), Some(1), "the verdict differs from --expect");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("expected PAID TOO MUCH, got EXACTLY ONCE"), "{stderr}");
}

#[cfg(unix)]
#[tokio::test]
async fn ctrl_c_winds_down_flushes_the_ledger_and_resume_finishes() {
    let service = spawn_service(|c| c.processing_delay = Duration::from_millis(20)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger.jsonl");
    let client = env!("CARGO_BIN_EXE_client");
    let mut child = spawn_pay(client, &service.url, &ledger, "200", "78", Stdio::piped());
    wait_for_payments(&service, 5).await;
    let interrupted = Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(interrupted.success());
    let mut stderr = child.0.stderr.take().expect("stderr");
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .expect("join")
        .expect("wait");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut text).expect("read stderr");
    assert_eq!(status.code(), Some(i32::from(client::flow::EXIT_INTERRUPTED)), "{text}");
    assert!(
        text.contains("interrupted") && text.contains("client resume --ledger"),
        "{text}"
    );
    let done = std::fs::read_to_string(&ledger)
        .expect("ledger")
        .lines()
        .filter(|l| l.contains("\"done\""))
        .count();
    let paid = stats(&service).await["payments"].as_u64().unwrap_or(0) as usize;
    assert_eq!(done, paid, "every payment made was recorded as done before exiting");
    assert!(paid < 200, "it stopped early ({paid} paid)");

    let output = resume(client, &service.url, &ledger, &["--concurrency", "16"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stats(&service).await["payments"], 200);
}
