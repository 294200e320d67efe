//! Each key strategy gives its known verdict under injected resets.

use client::reconcile::{self, Verdict};
use client::runner::{self, Sinks};
use client::strategy::{Backoff, KeyStrategy, Options, Retries};

use crate::faults::{self, spawn_proxy};
use crate::{baseline, judge, spawn_service, stats};

const PAYMENTS: usize = 50;
const SEED: u64 = 42;

/// Plays 50 payments of 1.00 through a proxy losing ~30 % of requests and ~30 %
/// of answers (seeded), and reconciles.
async fn play(key: KeyStrategy, retries: Retries) -> (reconcile::Reconciliation, runner::Summary, serde_json::Value) {
    let service = spawn_service(|_| {}).await;
    let proxy = spawn_proxy(service.addr, |i| faults::seeded(SEED, i)).await;
    let mut options = Options::new(SEED);
    options.key = key;
    options.retries = retries;
    options.backoff = Backoff::None;
    let intents = runner::repeat(PAYMENTS, "bianca", "marc", 100, SEED);
    let mode = baseline(&service).await;
    let report = runner::run(&proxy.url, intents.clone(), &options, Sinks::default())
        .await
        .expect("run");
    let r = judge(&service.url, mode, &intents, &report.attempts, key)
        .await
        .expect("reconcile");
    let stats = stats(&service).await;
    assert!(proxy.lost_requests.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert!(proxy.lost_answers.load(std::sync::atomic::Ordering::Relaxed) > 0);
    (r, report.summary, stats)
}

#[tokio::test]
async fn same_key_on_every_retry_pays_exactly_once() {
    let (r, summary, stats) = play(KeyStrategy::PerPayment, Retries::Unlimited).await;
    assert_eq!(r.verdict, Verdict::ExactlyOnce, "{r:?}");
    assert_eq!((r.exactly_once, r.lost, r.duplicated), (PAYMENTS as u64, 0, 0));
    assert_eq!(r.moved_minor, 100 * PAYMENTS as i128);
    assert_eq!(summary.confirmed, PAYMENTS as u64);
    assert!(summary.attempts > PAYMENTS as u64, "resets forced retries");
    assert!(summary.resets > 0);
    assert!(summary.replays_seen > 0, "lost answers come back as replays");
    assert_eq!(stats["payments"], PAYMENTS);
    assert_eq!(stats["invariants"]["one_payment_per_key"], true);
}

#[tokio::test]
async fn no_retry_pays_too_little() {
    let (r, summary, _) = play(KeyStrategy::None, Retries::Limited(0)).await;
    assert_eq!(r.verdict, Verdict::TooLittle, "{r:?}");
    assert_eq!(summary.attempts, PAYMENTS as u64, "one attempt each");
    assert!(r.lost > 0);
    assert!(!r.per_key);
}

#[tokio::test]
async fn retries_without_keys_pay_too_much() {
    let (r, summary, _) = play(KeyStrategy::None, Retries::Unlimited).await;
    assert_eq!(r.verdict, Verdict::TooMuch, "{r:?}");
    assert_eq!(summary.confirmed, PAYMENTS as u64);
    assert!(r.moved_minor > 100 * PAYMENTS as i128);
}

#[tokio::test]
async fn a_new_key_per_retry_pays_too_much_and_says_which() {
    let (r, _, stats) = play(KeyStrategy::PerAttempt, Retries::Unlimited).await;
    assert_eq!(r.verdict, Verdict::TooMuch, "{r:?}");
    assert!(r.duplicated > 0 && r.extra_payments >= r.duplicated);
    assert_eq!(r.lost, 0);
    assert!(r.issues.iter().any(|i| i.problem == "duplicated"));
    // The service sees only distinct keys: it cannot know they are retries.
    assert_eq!(stats["duplicate_keys"], 0);
}

#[tokio::test]
async fn the_same_seed_gives_the_same_history() {
    let run = || async {
        let service = spawn_service(|_| {}).await;
        let proxy = spawn_proxy(service.addr, |i| faults::seeded(SEED, i)).await;
        let mut options = Options::new(SEED);
        options.backoff = Backoff::FullJitter;
        options.backoff_base_ms = 1;
        options.backoff_cap_ms = 4;
        let intents = runner::repeat(20, "bianca", "marc", 100, SEED);
        let report = runner::run(&proxy.url, intents, &options, Sinks::default())
            .await
            .expect("run");
        report
            .attempts
            .iter()
            .map(|a| (a.intent, a.attempt, a.key.clone(), a.outcome, a.error))
            .collect::<Vec<_>>()
    };
    assert_eq!(run().await, run().await);
}

#[tokio::test]
async fn outcomes_judge_as_records_do_and_summary_only_keeps_no_records() {
    for (key, expected) in [
        (KeyStrategy::PerPayment, Verdict::ExactlyOnce),
        (KeyStrategy::PerAttempt, Verdict::TooMuch),
    ] {
        let service = spawn_service(|_| {}).await;
        let proxy = spawn_proxy(service.addr, |i| faults::seeded(SEED, i)).await;
        let mut options = Options::new(SEED);
        options.key = key;
        options.backoff = Backoff::None;
        let intents = runner::repeat(PAYMENTS, "bianca", "marc", 100, SEED);
        let mode = baseline(&service).await;
        let report = runner::run(&proxy.url, intents.clone(), &options, Sinks::default())
            .await
            .expect("run");
        let by_records = judge(&service.url, mode.clone(), &intents, &report.attempts, key)
            .await
            .expect("reconcile");
        let by_outcomes = judge(&service.url, mode.clone(), &intents, &report.outcomes, key)
            .await
            .expect("reconcile");
        assert_eq!(by_records.verdict, expected, "{key:?}: {by_records:?}");
        assert_eq!(
            serde_json::to_value(&by_records).expect("json"),
            serde_json::to_value(&by_outcomes).expect("json"),
            "{key:?}"
        );
        let made: u64 = report.outcomes.iter().map(|(_, o)| u64::from(o.attempts())).sum();
        assert_eq!(made, report.summary.attempts, "{key:?}");

        // The same payments again, keeping only outcomes: the judge needs no more.
        let sinks = Sinks {
            summary_only: true,
            ..Sinks::default()
        };
        let again = runner::run(&proxy.url, intents.clone(), &options, sinks)
            .await
            .expect("run");
        assert!(again.attempts.is_empty() && again.results.is_empty(), "{key:?}");
        assert_eq!(
            (again.outcomes.len(), again.summary.intents),
            (PAYMENTS, PAYMENTS as u64)
        );
        assert!(again.outcomes.iter().all(|(_, o)| o.finished() && o.attempts() >= 1));
    }
}
