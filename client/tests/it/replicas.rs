//! Several targets: two real payment-service replicas on one database file;
//! the client spreads attempts over them and a retry goes to the next one,
//! as a load balancer without affinity would.

use client::reconcile::Verdict;
use client::runner::{self, Sinks};
use client::strategy::{KeyStrategy, Options};
use payment_service::{Config, DedupMode};

use crate::faults::{Fault, spawn_proxy};
use crate::{Service, args, baseline, client, judge, spawn_service, stats};

/// `count` replicas of one service on one database file, with `dedup`.
async fn replicas(count: usize, dedup: DedupMode) -> (tempfile::TempDir, Vec<Service>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut services = Vec::new();
    for _ in 0..count {
        let db = dir.path().join("shared.db");
        services.push(
            spawn_service(move |c: &mut Config| {
                c.db = db;
                c.replica = true;
                c.dedup = dedup;
            })
            .await,
        );
    }
    (dir, services)
}

#[tokio::test]
async fn client_pay_spreads_attempts_over_the_targets_and_judges_exactly_once() {
    let (_dir, services) = replicas(2, DedupMode::Unique).await;
    let targets = format!("{},{}", services[0].url, services[1].url);
    let output = client(args(&[
        "pay",
        "--count",
        "20",
        "--seed",
        "7",
        "--target",
        &targets,
        "--service",
        &services[1].url,
        "--json",
        "--expect",
        "exactly-once",
    ]))
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Payment i's one attempt went to target i mod 2: ten each.
    for service in &services {
        let s = stats(service).await;
        assert_eq!(
            (&s["executed"], &s["received"], &s["payments"]),
            (&10.into(), &10.into(), &20.into()),
            "{s}"
        );
    }
}

/// Target 0 loses every answer (after its replica committed); target 1 is
/// direct. Payment i starts at target i mod 2, so every even payment is
/// retried, on the other replica.
async fn lost_answers_retried_on_the_other_replica(dedup: DedupMode) -> client::reconcile::Reconciliation {
    let (_dir, services) = replicas(2, dedup).await;
    let lossy = spawn_proxy(services[0].addr, |_| Fault::LoseAnswer).await;
    let targets = [lossy.url.clone(), services[1].url.clone()];
    let intents = runner::repeat(10, "bianca", "marc", 100, 5);
    let mode = baseline(&services[1]).await;
    let report = runner::run_spread(&targets, intents.clone(), &Options::new(5), Sinks::default())
        .await
        .expect("run");
    assert_eq!(report.summary.confirmed, 10);
    let retried: Vec<_> = report
        .attempts
        .iter()
        .filter(|a| a.attempt == 2)
        .map(|a| a.intent)
        .collect();
    assert_eq!(
        retried,
        vec![0, 2, 4, 6, 8],
        "one retry for each payment that started on the lossy target"
    );
    assert_eq!(
        stats(&services[1]).await["received"],
        10,
        "5 first attempts and 5 retries"
    );
    judge(
        &services[1].url,
        mode,
        &intents,
        &report.attempts,
        KeyStrategy::PerPayment,
    )
    .await
    .expect("reconcile")
}

#[tokio::test]
async fn a_retry_goes_to_the_next_target_where_only_a_shared_key_holds() {
    let memory = lost_answers_retried_on_the_other_replica(DedupMode::Memory).await;
    assert_eq!((memory.verdict, memory.duplicated), (Verdict::TooMuch, 5), "{memory:?}");
    let unique = lost_answers_retried_on_the_other_replica(DedupMode::Unique).await;
    assert_eq!(unique.verdict, Verdict::ExactlyOnce, "{unique:?}");
}
