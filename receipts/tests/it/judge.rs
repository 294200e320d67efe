//! The client's second-hop judge (`client::receipts`) against this service:
//! exact, missing, duplicated (the naive consumer), more ids than one lookup
//! holds, and a service that is gone (inconclusive, never a verdict).

use std::time::Duration;

use client::receipts::{LOOKUP_KEYS_MAX, ReceiptOutcome, ReceiptsReader, check};
use receipts::DedupMode;

use crate::{event, spawn_app};

/// The run's executed payments: event id and propagated key.
fn executed(ledger: &str, n: i64) -> Vec<(String, Option<String>)> {
    (1..=n)
        .map(|i| (format!("{ledger}:{i}"), Some(format!("pay-{i}"))))
        .collect()
}

fn reader(base: &str) -> ReceiptsReader {
    ReceiptsReader::new(base, Duration::from_secs(10)).expect("reader")
}

#[tokio::test]
async fn exact_then_missing_over_more_ids_than_one_lookup_holds() {
    let app = spawn_app(|_| {}).await;
    let n = LOOKUP_KEYS_MAX as i64 + 5;
    let run = executed("j", n);
    // Every event but two; one delivered twice (absorbed by the inbox).
    for i in (1..=n).filter(|i| *i != 17 && *i != n) {
        app.deliver(&event("j", i)).await;
    }
    app.deliver(&event("j", 3)).await;
    let reader = reader(&app.base);
    let verdict = check(&reader, &run).await;
    assert_eq!(verdict.outcome, ReceiptOutcome::Missing, "{verdict}");
    assert_eq!(verdict.checked, n as u64);
    assert_eq!(
        verdict.to_string(),
        format!("RECEIPTS MISSING 2 of {n}: pay-17, pay-{n}")
    );
    assert_eq!(reader.requests(), 2, "two lookups, no retry");
    app.deliver(&event("j", 17)).await;
    app.deliver(&event("j", n)).await;
    let verdict = check(&reader, &run).await;
    assert_eq!(verdict.to_string(), format!("RECEIPTS EXACT {n}/{n}"));
    let stats = reader.stats().await.expect("stats");
    assert_eq!((stats.receipts, stats.duplicates_absorbed), (n as u64, 1));
    assert_eq!(stats.invariants.get("one_receipt_per_event"), Some(&true));
    app.stop_keeping_dir().await;
}

#[tokio::test]
async fn the_naive_consumer_is_judged_duplicated() {
    let app = spawn_app(|c| c.dedup = DedupMode::Off).await;
    let run = executed("naive", 10);
    for i in 1..=10 {
        app.deliver(&event("naive", i)).await;
    }
    app.deliver(&event("naive", 4)).await;
    app.deliver(&event("naive", 4)).await;
    let verdict = check(&reader(&app.base), &run).await;
    assert_eq!(verdict.to_string(), "RECEIPTS DUPLICATED 1 of 10 (2 extra): pay-4 ×3");
    app.stop_keeping_dir().await;
}

#[tokio::test]
async fn a_receipts_service_that_is_gone_is_inconclusive() {
    let app = spawn_app(|_| {}).await;
    let base = app.base.clone();
    app.stop_keeping_dir().await;
    let reader = ReceiptsReader::new(&base, Duration::from_millis(300)).expect("reader");
    let verdict = check(&reader, &executed("gone", 3)).await;
    assert_eq!(verdict.outcome, ReceiptOutcome::Inconclusive);
    assert!(
        verdict
            .to_string()
            .starts_with("RECEIPTS INCONCLUSIVE: POST /receipts/lookup"),
        "{verdict}"
    );
    assert!(reader.requests() > 1, "retried within the deadline");
}
