//! Concurrent duplicates: one key sent 100 times at once.

use std::time::Duration;

use payment_service::{Config, DedupMode};

use crate::{BODY, header, spawn_app};

/// Sends `BODY` with `key` from `count` concurrent tasks; returns
/// (statuses, replayed flags).
async fn storm(app: &crate::TestApp, key: &str, count: usize) -> (Vec<u16>, Vec<bool>) {
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let (client, url, key) = (app.client.clone(), app.url("/payments"), key.to_owned());
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(BODY)
                .send()
                .await
                .expect("POST");
            (
                response.status().as_u16(),
                header(&response, "idempotent-replayed") == Some("true"),
            )
        }));
    }
    let mut statuses = Vec::with_capacity(count);
    let mut replayed = Vec::with_capacity(count);
    for task in tasks {
        let (status, was_replayed) = task.await.expect("task");
        statuses.push(status);
        replayed.push(was_replayed);
    }
    (statuses, replayed)
}

async fn payments_after_storm(configure: impl FnOnce(&mut Config)) -> (i64, Vec<u16>, Vec<bool>, serde_json::Value) {
    let app = spawn_app(configure).await;
    let (statuses, replayed) = storm(&app, "one-key", 100).await;
    let stats = app.stats().await;
    app.stop().await;
    (stats["payments"].as_i64().expect("payments"), statuses, replayed, stats)
}

#[tokio::test]
async fn unique_key_pays_exactly_once_under_100_concurrent_duplicates() {
    let (payments, statuses, replayed, stats) = payments_after_storm(|_| {}).await;
    assert_eq!(payments, 1, "{stats}");
    // Without a processing delay the single writer serialises them: one
    // execution, 99 replays, no conflicts.
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert_eq!(replayed.iter().filter(|r| !**r).count(), 1);
    assert_eq!(stats["invariants"]["one_payment_per_key"], true);
}

#[tokio::test]
async fn unique_key_with_a_processing_delay_pays_once_and_answers_409_meanwhile() {
    let (payments, statuses, replayed, stats) =
        payments_after_storm(|c| c.processing_delay = Duration::from_millis(200)).await;
    assert_eq!(payments, 1, "{stats}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 409), "{statuses:?}");
    assert_eq!(
        statuses
            .iter()
            .zip(&replayed)
            .filter(|(s, r)| **s == 201 && !**r)
            .count(),
        1,
        "exactly one execution"
    );
    assert!(
        statuses.contains(&409),
        "concurrent duplicates see the key in flight: {statuses:?}"
    );
    assert_eq!(
        stats["conflicts_409"].as_u64(),
        Some(statuses.iter().filter(|s| **s == 409).count() as u64)
    );
}

#[tokio::test]
async fn check_then_insert_with_a_processing_delay_pays_more_than_once() {
    let (payments, statuses, _, stats) = payments_after_storm(|c| {
        c.dedup = DedupMode::CheckThenInsert;
        c.processing_delay = Duration::from_millis(200);
    })
    .await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert!(
        payments > 1,
        "the lesson: the race pays twice or more ({payments} payments)"
    );
    assert_eq!(stats["duplicate_keys"], 1);
    assert_eq!(stats["invariants"]["one_payment_per_key"], false);
    // Money is still conserved: the bug duplicates payments, not money out of thin air.
    assert_eq!(stats["invariants"]["balances_conserved"], true);
    assert_eq!(stats["invariants"]["balances_match_ledger"], true);
}
