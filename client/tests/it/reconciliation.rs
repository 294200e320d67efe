//! The checker flags what it must: planted duplicates, lost and orphaned
//! payments, and acknowledged payments the service does not have.

use client::classify::Outcome;
use client::history::AttemptRecord;
use client::reconcile::{Mode, Verdict};
use client::runner::{self, Sinks};
use client::strategy::{KeyStrategy, Options};
use payment_service::DedupMode;

use crate::{baseline, judge, spawn_service};

async fn post(url: &str, key: &str) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .post(format!("{url}/payments"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(r#"{"src":"bianca","dest":"marc","amount":"1.00"}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn planted_duplicate_lost_and_orphan_are_flagged() {
    // dedup off, so the service accepts the planted duplicate.
    let service = spawn_service(|c| c.dedup = DedupMode::Off).await;
    let seed = 9;
    let intents = runner::repeat(11, "bianca", "marc", 100, seed);
    let (sent, never_sent) = intents.split_at(10);
    let mode = baseline(&service).await;
    let report = runner::run(&service.url, sent.to_vec(), &Options::new(seed), Sinks::default())
        .await
        .expect("run");
    let clean = judge(
        &service.url,
        mode.clone(),
        sent,
        &report.attempts,
        KeyStrategy::PerPayment,
    )
    .await
    .expect("reconcile");
    assert_eq!(clean.verdict, Verdict::ExactlyOnce, "{clean:?}");

    post(&service.url, &sent[3].key).await; // a duplicate of payment 3
    post(&service.url, &runner::key_for(seed, 999)).await; // this run's key, no intent
    let r = judge(&service.url, mode, &intents, &report.attempts, KeyStrategy::PerPayment)
        .await
        .expect("reconcile");
    assert_eq!(r.verdict, Verdict::Both, "{r:?}");
    assert_eq!(
        (r.exactly_once, r.duplicated, r.extra_payments, r.lost, r.orphaned),
        (9, 1, 1, 1, 1)
    );
    assert_eq!(r.expected_minor, 1100);
    assert_eq!(r.moved_minor, 1200);
    let problems: Vec<(&str, &str)> = r.issues.iter().map(|i| (i.problem, i.key.as_str())).collect();
    assert!(problems.contains(&("duplicated", sent[3].key.as_str())), "{problems:?}");
    assert!(problems.contains(&("lost", never_sent[0].key.as_str())), "{problems:?}");
    assert!(problems.iter().any(|(p, _)| *p == "orphaned"), "{problems:?}");
    assert_eq!(r.acknowledged_but_missing, 0);
}

#[tokio::test]
async fn an_acknowledged_payment_the_service_lacks_is_a_violation() {
    let service = spawn_service(|_| {}).await;
    let intents = runner::repeat(1, "bianca", "marc", 100, 5);
    // A history claiming an ok attempt that never reached this service.
    let forged = AttemptRecord {
        intent: 0,
        key: Some(intents[0].key.clone()),
        attempt: 1,
        start_us: 0,
        end_us: 1,
        outcome: Outcome::Ok,
        status: Some(201),
        error: None,
        replayed: Some(false),
        at_unix_us: 0,
        request_id: None,
    };
    let r = judge(
        &service.url,
        Mode::Fresh { baseline_id: 0 },
        &intents,
        &[forged],
        KeyStrategy::PerPayment,
    )
    .await
    .expect("reconcile");
    assert_eq!((r.lost, r.acknowledged_but_missing), (1, 1));
    assert_eq!(r.verdict, Verdict::TooLittle);
    assert_eq!(r.issues[0].problem, "acknowledged but missing");
}

/// Runs `client pay` (one payment, seed 61) against a target that refuses
/// every attempt with 422, reconciled against the real service.
async fn refused_everywhere(service: &crate::Service) -> serde_json::Value {
    let (target, _) = crate::spawn_stub(|_| (422, r#"{"type": "/problems/refused"}"#.to_owned())).await;
    let output = crate::client(crate::args(&[
        "pay",
        "--count",
        "1",
        "--seed",
        "61",
        "--json",
        "--target",
        &target,
        "--service",
        &service.url,
    ]))
    .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_refused_every_time_that_landed_anyway_is_paid_too_much() {
    let service = spawn_service(|_| {}).await;
    let key = runner::key_for(61, 0);
    post(&service.url, &key).await; // the same payment, already in the service's ledger
    let report = refused_everywhere(&service).await;
    let r = &report["reconciliation"];
    assert_eq!(report["summary"]["refused_4xx"], 1, "{report}");
    assert_eq!(report["verdict"], "too-much", "{report}");
    assert_eq!(
        (r["failed_but_landed"].as_u64(), r["exactly_once"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(r["issues"][0]["problem"], "failed but landed");
    assert_eq!(r["issues"][0]["key"], key.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_for_another_amount_is_not_this_payment() {
    let service = spawn_service(|_| {}).await;
    let key = runner::key_for(61, 0);
    let response = reqwest::Client::new()
        .post(format!("{}/payments", service.url))
        .header("idempotency-key", key.as_str())
        .header("content-type", "application/json")
        .body(r#"{"src":"bianca","dest":"marc","amount":"2.00"}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 201);
    let report = refused_everywhere(&service).await;
    let r = &report["reconciliation"];
    assert_eq!(report["verdict"], "too-little", "{report}");
    assert_eq!(
        (
            r["failed_but_landed"].as_u64(),
            r["lost"].as_u64(),
            r["reused_before"].as_u64()
        ),
        (Some(0), Some(1), Some(1))
    );
    assert_eq!(r["moved_minor"], 0, "the earlier payment is not this run's money");
}

#[tokio::test]
async fn ids_with_gaps_are_each_read_once() {
    // Ids 5, 1500, 2400, 2500: the id ranges are read side by side, and a
    // page for (0, 1000] also returns later ids, which must not count twice.
    // The stub answers pages as the service does (`limit`, `next_after_id`).
    let ids = [5, 1500, 2400, 2500];
    let (url, _) = crate::spawn_stub(move |line| {
        let number = |name: &str| -> Option<i64> {
            let rest = line.split(name).nth(1)?;
            rest.split(['&', ' ']).next()?.parse().ok()
        };
        let (after, limit) = (number("after_id=").unwrap_or(i64::MAX), number("limit=").unwrap_or(100));
        let page: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| *id > after)
            .take(limit as usize)
            .collect();
        let next = match page.last() {
            Some(last) if page.len() == limit as usize => last.to_string(),
            _ => "null".to_owned(),
        };
        let payments: Vec<String> = page
            .iter()
            .map(|id| {
                format!(r#"{{"id":{id},"src":"bianca","dest":"marc","amount_minor":100,"idempotency_key":null}}"#)
            })
            .collect();
        (
            200,
            format!(r#"{{"payments":[{}],"next_after_id":{next}}}"#, payments.join(",")),
        )
    })
    .await;
    let intents = runner::repeat(4, "bianca", "marc", 100, 2);
    let r = judge(&url, Mode::Fresh { baseline_id: 0 }, &intents, &[], KeyStrategy::None)
        .await
        .expect("reconcile");
    assert_eq!(
        (r.payments, r.moved_minor, r.verdict),
        (4, 400, Verdict::ExactlyOnce),
        "{r:?}"
    );
}

/// `GET /payments?key=` read page by page, for services without the batch
/// lookup: every payment under the key and only those, in id order.
#[tokio::test]
async fn a_key_is_read_page_by_page_with_get() {
    let service = spawn_service(|c| c.dedup = DedupMode::Off).await;
    let http = reqwest::Client::new();
    for (key, amount) in [("k 1/x", "1"), ("other", "2"), ("k 1/x", "3")] {
        let status = http
            .post(format!("{}/payments", service.url))
            .header("Idempotency-Key", key)
            .header("Content-Type", "application/json")
            .body(format!(r#"{{"src": "bianca", "dest": "marc", "amount": "{amount}"}}"#))
            .send()
            .await
            .expect("pay")
            .status();
        assert_eq!(status, 201);
    }
    let reader = client::service::ServiceReader::new(&service.url, std::time::Duration::from_secs(10)).expect("reader");
    let mut found = Vec::new();
    let next = reader
        .key_page("k 1/x", 0, |p| found.push((p.id, p.amount_minor)))
        .await
        .expect("read");
    assert_eq!(next, None);
    assert_eq!(found, vec![(1, 100), (3, 300)]);
    let mut after_first = Vec::new();
    reader
        .key_page("k 1/x", 1, |p| after_first.push(p.id))
        .await
        .expect("read");
    assert_eq!(after_first, vec![3]);
}
