//! Reconciliation reads everything it needs at any size: a same-seed re-run
//! of 10,500 payments (more than any old cap) and a resume of a ledger with
//! no `done` lines are exactly once, in about n / 1000 requests.

use crate::{args, client, spawn_service, stats};

const PAYMENTS: u64 = 10_500;

fn json(output: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{:?}: {stdout} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("a JSON report")
}

fn assert_all_exactly_once(report: &serde_json::Value, replayed: u64) {
    assert_eq!(report["verdict"], "exactly-once", "{report}");
    let r = &report["reconciliation"];
    assert_eq!(
        (r["intents"].as_u64(), r["exactly_once"].as_u64()),
        (Some(PAYMENTS), Some(PAYMENTS))
    );
    assert_eq!(
        (r["lost"].as_u64(), r["acknowledged_but_missing"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        report["summary"]["replays_seen"].as_u64(),
        Some(replayed),
        "{}",
        report["summary"]
    );
    // A window page and a lookup per 1000 payments, and a few more.
    let requests = report["reading"]["requests"].as_u64().expect("requests");
    assert!(requests <= 2 * PAYMENTS.div_ceil(1000) + 2, "{requests} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_seed_rerun_and_a_resume_without_done_lines_are_exactly_once() {
    let service = spawn_service(|_| {}).await;
    let dir = tempfile::tempdir().expect("dir");
    let ledger = dir.path().join("ledger.jsonl");
    let ledger_arg = ledger.display().to_string();
    let url = service.url.as_str();
    let count = PAYMENTS.to_string();
    let pay = args(&[
        "pay",
        "--count",
        &count,
        "--seed",
        "4242",
        "--json",
        "--concurrency",
        "32",
        "--connection",
        "reuse",
        "--target",
        url,
        "--service",
        url,
    ]);
    let first = json(&client([pay.clone(), args(&["--ledger", &ledger_arg])].concat()).await);
    assert_all_exactly_once(&first, 0);

    // The same seed names the same payments: every one is a replay.
    let second = json(&client(pay).await);
    assert_all_exactly_once(&second, PAYMENTS);
    assert_eq!(stats(&service).await["payments"], PAYMENTS);

    // A ledger whose `done` lines were never written (killed at once).
    let text = std::fs::read_to_string(&ledger).expect("ledger");
    let intents_only: String = text
        .lines()
        .filter(|l| !l.contains(r#""type":"done""#))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&ledger, intents_only).expect("write");
    let resume = args(&[
        "resume",
        "--json",
        "--concurrency",
        "32",
        "--connection",
        "reuse",
        "--target",
        url,
        "--service",
        url,
        "--ledger",
        &ledger_arg,
    ]);
    let third = json(&client(resume).await);
    assert_all_exactly_once(&third, PAYMENTS);
    assert_eq!(stats(&service).await["payments"], PAYMENTS);
}
