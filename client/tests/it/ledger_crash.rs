//! The ledger is crash-safe: a client killed while creating it leaves
//! nothing that `resume` would half-pay, and a torn last line (killed
//! mid-append) is cut off on resume instead of breaking every later one.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::resume::{KillOnDrop, resume, spawn_pay};
use crate::{WAIT, args, client, spawn_service, stats};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_while_creating_its_ledger_leaves_nothing_to_resume() {
    let service = spawn_service(|_| {}).await;
    let dir = tempfile::tempdir().expect("dir");
    let ledger = dir.path().join("big.jsonl");
    let partial = dir.path().join("big.jsonl.partial");
    let client_exe = env!("CARGO_BIN_EXE_client");
    let mut doomed = KillOnDrop(
        Command::new(client_exe)
            .args([
                "pay",
                "--count",
                "1000000",
                "--seed",
                "5",
                "--json",
                "--target",
                &service.url,
                "--service",
                &service.url,
            ])
            .arg("--ledger")
            .arg(&ledger)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn client"),
    );
    // Kill it as soon as it has written some of a million intents.
    let deadline = Instant::now() + WAIT;
    let started = |p: &std::path::Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
    while !started(&partial) {
        assert!(
            doomed.0.try_wait().expect("poll").is_none(),
            "the client exited before writing its ledger"
        );
        assert!(Instant::now() < deadline, "the client never started its ledger");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    doomed.0.kill().expect("kill"); // SIGKILL: no cleanup
    doomed.0.wait().expect("reap");
    assert!(!ledger.exists(), "no ledger until it is complete");
    assert!(std::fs::metadata(&partial).expect("partial").len() > 0);

    let output = resume(client_exe, &service.url, &ledger, &[]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for needle in [
        "no ledger at",
        "big.jsonl.partial",
        "was killed",
        "never sent a payment",
        "start again",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing: {stderr}");
    }
    assert_eq!(stats(&service).await["payments"], 0, "nothing was paid");

    // Starting again with the same ledger says what is in the way.
    let ledger_arg = ledger.display().to_string();
    let again = client(args(&[
        "pay",
        "--count",
        "3",
        "--target",
        &service.url,
        "--service",
        &service.url,
        "--ledger",
        &ledger_arg,
    ]))
    .await;
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("was killed") && stderr.contains("Remove"), "{stderr}");
    std::fs::remove_file(&partial).expect("remove the partial ledger");
    let clean = client(args(&[
        "pay",
        "--count",
        "3",
        "--target",
        &service.url,
        "--service",
        &service.url,
        "--ledger",
        &ledger_arg,
    ]))
    .await;
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_line_is_cut_off_and_every_later_resume_works() {
    let service = spawn_service(|_| {}).await;
    let dir = tempfile::tempdir().expect("dir");
    let ledger = dir.path().join("ledger.jsonl");
    let client_exe = env!("CARGO_BIN_EXE_client");
    let mut pay = spawn_pay(client_exe, &service.url, &ledger, "20", "91", Stdio::null());
    let status = tokio::task::spawn_blocking(move || pay.0.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success());
    // Killed in the middle of appending the last `done` line.
    let bytes = std::fs::read(&ledger).expect("ledger");
    assert!(bytes.ends_with(b"\"outcome\":\"confirmed\"}\n"));
    std::fs::write(&ledger, &bytes[..bytes.len() - 12]).expect("tear the last line");

    let output = resume(client_exe, &service.url, &ledger, &[]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("removed a torn last line"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(
        report["summary"]["intents"], 1,
        "only the payment whose line was torn is sent again"
    );
    assert_eq!(report["summary"]["replays_seen"], 1, "and it is replayed");
    assert_eq!(report["reconciliation"]["exactly_once"], 20);

    let later = resume(client_exe, &service.url, &ledger, &[]).await;
    let stderr = String::from_utf8_lossy(&later.stderr);
    assert!(later.status.success(), "{stderr}");
    assert!(!stderr.contains("torn"), "{stderr}");
    assert_eq!(stats(&service).await["payments"], 20);
}
