//! When the judge cannot read what it needs it retries within its deadline,
//! then says INCONCLUSIVE (exit status 3), never a verdict.

use std::sync::atomic::Ordering;
use std::time::Duration;

use client::reconcile::{Evidence, Mode};
use client::runner::{self, Sinks};
use client::service::ServiceReader;
use client::strategy::{KeyStrategy, Options};
use tokio::net::{TcpListener, TcpStream};

use crate::{WAIT, args, client, spawn_service, spawn_stub};

/// Judges two intents (no attempts) against `service` with a short deadline.
async fn judge_quickly(
    service: &str,
) -> (
    Result<client::reconcile::Reconciliation, client::service::Inconclusive>,
    u64,
) {
    let intents = runner::repeat(2, "bianca", "marc", 100, 1);
    let mode = Mode::Fresh { baseline_id: 0 };
    let intents = client::intents::Intents::from(intents);
    let evidence = Evidence {
        intents: &intents,
        attempts: (&[][..]).into(),
        strategy: KeyStrategy::PerPayment,
        mode: &mode,
    };
    let (judgement, reading) = client::flow::judge(service, Duration::from_millis(500), &evidence).await;
    (judgement, reading.requests)
}

#[tokio::test]
async fn the_service_stopped_before_reconciling_is_inconclusive() {
    let service = spawn_service(|_| {}).await;
    let (url, addr) = (service.url.clone(), service.addr);
    let intents = runner::repeat(5, "bianca", "marc", 100, 3);
    let report = runner::run(&url, intents.clone(), &Options::new(3), Sinks::default())
        .await
        .expect("run");
    assert_eq!(report.summary.confirmed, 5);
    drop(service); // stops it
    let deadline = std::time::Instant::now() + WAIT;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "the service did not stop");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mode = Mode::Fresh { baseline_id: 0 };
    let intents = client::intents::Intents::from(intents);
    let evidence = Evidence {
        intents: &intents,
        attempts: (&report.attempts).into(),
        strategy: KeyStrategy::PerPayment,
        mode: &mode,
    };
    let (judgement, reading) = client::flow::judge(&url, Duration::from_millis(500), &evidence).await;
    let why = judgement.expect_err("no verdict without the service");
    assert!(
        why.reason.contains("no answer") && why.reason.contains("deadline"),
        "{why}"
    );
    assert!(reading.requests > 1, "it retried ({} requests)", reading.requests);
}

/// A `--service` that answers the client's first connection (the baseline,
/// before sending) from the real service, then is gone.
async fn service_that_vanishes(upstream: std::net::SocketAddr) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        drop(listener);
        if let Ok(mut service) = TcpStream::connect(upstream).await {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut service).await;
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_says_inconclusive_with_its_own_exit_status() {
    let service = spawn_service(|_| {}).await;
    let vanishing = service_that_vanishes(service.addr).await;
    let output = client(args(&[
        "pay",
        "--count",
        "3",
        "--json",
        "--expect",
        "exactly-once",
        "--reconcile-deadline-ms",
        "500",
        "--target",
        &service.url,
        "--service",
        &vanishing,
    ]))
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(i32::from(client::flow::EXIT_INCONCLUSIVE)),
        "{stderr}"
    );
    assert!(stderr.contains("INCONCLUSIVE"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["verdict"], "inconclusive");
    assert!(report["reconciliation"].is_null(), "{report}");
    assert!(
        report["inconclusive"]
            .as_str()
            .is_some_and(|why| why.contains("no answer")),
        "{report}"
    );
    assert_eq!(
        report["summary"]["confirmed"], 3,
        "the payments themselves went through"
    );

    // Without --json the report prints INCONCLUSIVE in place of a verdict.
    let vanishing = service_that_vanishes(service.addr).await;
    let output = client(args(&[
        "pay",
        "--count",
        "1",
        "--reconcile-deadline-ms",
        "300",
        "--target",
        &service.url,
        "--service",
        &vanishing,
    ]))
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(3));
    assert!(
        stdout.contains("verdict: INCONCLUSIVE") && !stdout.contains("EXACTLY ONCE"),
        "{stdout}"
    );
}

const STATS: &str = r#"{"payments":0,"last_payment_id":0,"total_amount_minor":0,"duplicate_keys":0,"invariants":{}}"#;
const EMPTY_PAGE: &str = r#"{"payments":[],"next_after_id":null}"#;

#[tokio::test]
async fn a_failing_or_malformed_page_is_inconclusive() {
    for (lookup, reason, retried) in [
        ((500, "{}".to_owned()), "answered 500", true),
        ((200, r#"{"payments": [{"id": 1}"#.to_owned()), "malformed", true),
        ((200, r#"{"payments": [{"id": 1, "src": "a", "dest": "b", "amount_minor": 1, "idempotency_key": "not-asked"}], "next_after_id": null}"#.to_owned()), "not asked for", false),
        ((404, "{}".to_owned()), "answered 404", false),
    ] {
        let (url, requests) = spawn_stub(move |line| {
            if line.starts_with("POST /payments/lookup") {
                lookup.clone()
            } else if line.starts_with("GET /stats") {
                (200, STATS.to_owned())
            } else {
                (200, EMPTY_PAGE.to_owned())
            }
        })
        .await;
        let (judgement, counted) = judge_quickly(&url).await;
        let why = judgement.expect_err("inconclusive");
        assert!(why.reason.contains(reason) && why.reason.contains("lookup"), "{reason}: {why}");
        let sent = requests.load(Ordering::Relaxed) as u64;
        assert_eq!(sent, counted);
        assert_eq!(sent > 2, retried, "{reason}: {sent} requests");
    }
}

#[tokio::test]
async fn stats_with_a_missing_field_is_an_error_not_a_zero() {
    let (url, _) = spawn_stub(|_| (200, STATS.replace(r#""duplicate_keys":0,"#, ""))).await;
    let reader = ServiceReader::new(&url, Duration::from_millis(300)).expect("reader");
    let why = reader.stats().await.expect_err("a missing field");
    assert!(why.reason.contains("duplicate_keys"), "{why}");
    let (url, _) = spawn_stub(|_| (200, STATS.to_owned())).await;
    let reader = ServiceReader::new(&url, Duration::from_millis(300)).expect("reader");
    assert_eq!(reader.stats().await.expect("complete").last_payment_id, 0);
}
