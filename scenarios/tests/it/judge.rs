//! The scenario judge: a service that cannot be read makes a lesson
//! INCONCLUSIVE (a failure, shown as such), `/stats` missing a figure is not
//! read as zero, and a payment refused on every attempt that landed anyway is
//! a problem in the lesson report.

use std::collections::BTreeMap;
use std::time::Duration;

use client::flow::Reading;
use client::history::AttemptRecord;
use client::reconcile::{Evidence, Mode, Reconciliation};
use client::runner::{self, Intent, Sinks};
use client::service::{Inconclusive, ServiceReader};
use client::strategy::Options;
use scenarios::catalog::Scenario;
use scenarios::parts::Service;
use scenarios::play::{self, Outcome};
use scenarios::report;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn scenario(expect: &str) -> Scenario {
    let text = format!("name = \"judged\"\ntitle = \"judged\"\nlesson = \"l\"\nexpect = \"{expect}\"\n");
    Scenario::parse("judged.toml", &text).expect("scenario")
}

/// Answers every request with `status` and `body`, then closes.
async fn stub(status: u16, body: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                // Requests here are small: the head and body arrive before the answer is needed.
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65_536 {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    url
}

/// The client's reconciliation of `intents` (keyed per payment, a fresh run
/// from id 0) from `attempts`, read from `service` within `deadline`.
async fn reconcile(
    service: &str,
    intents: &[Intent],
    attempts: &[AttemptRecord],
    deadline: Duration,
) -> (Result<Reconciliation, Inconclusive>, Reading) {
    let mode = Mode::Fresh { baseline_id: 0 };
    let table = client::runner::Intents::from(intents);
    let evidence = Evidence {
        intents: &table,
        attempts: attempts.into(),
        strategy: client::strategy::KeyStrategy::PerPayment,
        mode: &mode,
    };
    client::flow::judge(service, deadline, &evidence).await
}

/// Pays `intents` through `target`, then judges them against `service`.
async fn pay_and_judge(s: &Scenario, target: &str, service: &str, stats_from: &str, intents: Vec<Intent>) -> Outcome {
    let options = Options::new(8);
    let report = runner::run(target, intents.clone(), &options, Sinks::default())
        .await
        .expect("run");
    let deadline = Duration::from_millis(400);
    let (judgement, _) = reconcile(service, &intents, &report.attempts, deadline).await;
    let stats = ServiceReader::new(stats_from, deadline).expect("reader").stats().await;
    play::assess(s, &intents, judgement, stats, BTreeMap::new())
}

fn assert_inconclusive(outcome: &Outcome, because: &str) {
    assert!(!outcome.pass);
    assert_eq!(outcome.headline(), "INCONCLUSIVE");
    assert!(outcome.verdict.is_none() && outcome.reconciliation.is_none());
    assert!(
        outcome.problems[0].starts_with("INCONCLUSIVE") && outcome.problems[0].contains(because),
        "{:?}",
        outcome.problems
    );
    let story = report::results(outcome);
    assert!(
        story.contains("verdict   INCONCLUSIVE (expected EXACTLY ONCE) FAIL"),
        "{story}"
    );
    let table = report::table(std::slice::from_ref(outcome), "scenarios --seed 1");
    assert!(table.contains("INCONCLUSIVE") && table.contains("0 of 1"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_service_makes_the_lesson_inconclusive() {
    let s = scenario("exactly-once");
    let dir = tempfile::tempdir().expect("dir");
    let service = Service::in_process(&s, &dir.path().join("p.db"))
        .await
        .expect("service");
    let url = service.url.clone();
    let intents = runner::repeat(3, "bianca", "marc", 100, 8);
    let report = runner::run(&url, intents.clone(), &Options::new(8), Sinks::default())
        .await
        .expect("run");
    assert_eq!(report.summary.confirmed, 3);
    service.stop().await.expect("stops");
    let deadline = Duration::from_millis(400);
    let (judgement, reading) = reconcile(&url, &intents, &report.attempts, deadline).await;
    assert!(reading.requests > 1, "retried before giving up");
    let stats = ServiceReader::new(&url, deadline).expect("reader").stats().await;
    let outcome = play::assess(&s, &intents, judgement, stats, BTreeMap::new());
    assert_inconclusive(&outcome, "no answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_missing_a_figure_is_inconclusive_not_zero() {
    let s = scenario("exactly-once");
    let dir = tempfile::tempdir().expect("dir");
    let service = Service::in_process(&s, &dir.path().join("p.db"))
        .await
        .expect("service");
    let partial = r#"{"payments":3,"last_payment_id":3,"total_amount_minor":300,"invariants":{}}"#;
    let stats = stub(200, partial.to_owned()).await;
    let outcome = pay_and_judge(
        &s,
        &service.url,
        &service.url,
        &stats,
        runner::repeat(3, "bianca", "marc", 100, 8),
    )
    .await;
    assert_inconclusive(&outcome, "duplicate_keys");
    service.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_payment_that_landed_is_a_problem_in_the_lesson() {
    let s = scenario("too-much");
    let dir = tempfile::tempdir().expect("dir");
    let service = Service::in_process(&s, &dir.path().join("p.db"))
        .await
        .expect("service");
    let intents = runner::repeat(1, "bianca", "marc", 100, 8);
    // The payment is already in the service's ledger; the target refuses it.
    let landed = runner::run(&service.url, intents.clone(), &Options::new(8), Sinks::default())
        .await
        .expect("run");
    assert_eq!(landed.summary.confirmed, 1);
    let refusing = stub(422, "{}".to_owned()).await;
    let outcome = pay_and_judge(&s, &refusing, &service.url, &service.url, intents.clone()).await;
    assert_eq!(outcome.headline(), "PAID TOO MUCH", "{outcome:?}");
    assert!(
        !outcome.pass,
        "the verdict is the expected one, but the violation is a problem"
    );
    let problem = outcome
        .problems
        .iter()
        .find(|p| p.contains("refused on every attempt yet landed"))
        .expect("problem");
    assert!(problem.contains(&intents[0].key), "{problem}");
    assert!(
        report::results(&outcome).contains("problem   1 payments were refused"),
        "{outcome:?}"
    );
    service.stop().await.expect("stops");
}

/// `/stats` shows figures the service maintains at each write; the lesson is
/// judged on the audit's recomputation. A ledger whose maintained total was
/// changed behind the service's back (here: by hand, in the file) still
/// reads EXACTLY ONCE from the payments, and the lesson fails on the audit's
/// disagreement instead of trusting the maintained row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintained_figures_that_disagree_with_the_audit_fail_the_lesson() {
    let s = scenario("exactly-once");
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("p.db");
    let service = Service::in_process(&s, &db).await.expect("service");
    let intents = runner::repeat(3, "bianca", "marc", 100, 8);
    let report = runner::run(&service.url, intents.clone(), &Options::new(8), Sinks::default())
        .await
        .expect("run");
    assert_eq!(report.summary.confirmed, 3);
    let tamper = rusqlite::Connection::open(&db).expect("open");
    tamper.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    let changed = tamper
        .execute("UPDATE ledger_totals SET amount_lo = amount_lo + 1", [])
        .expect("update");
    assert_eq!(changed, 1);
    drop(tamper);
    let deadline = Duration::from_secs(10);
    let (judgement, _) = reconcile(&service.url, &intents, &report.attempts, deadline).await;
    let reader = ServiceReader::new(&service.url, deadline).expect("reader");
    let shown = reader.stats().await.expect("stats");
    assert_eq!(shown.total_amount_minor, 301, "/stats shows the maintained row");
    let proof = reader.audit().await.expect("audit");
    assert_eq!(proof.total_amount_minor, 300, "the audit recomputes from the payments");
    let outcome = play::assess(&s, &intents, judgement, Ok(proof), BTreeMap::new());
    assert!(!outcome.pass);
    assert_eq!(outcome.headline(), "EXACTLY ONCE");
    assert_eq!(
        outcome.problems,
        vec!["service invariant maintained_figures_match_ledger does not hold".to_owned()]
    );
    assert_eq!(outcome.moved, "3.00");
    service.stop().await.expect("stops");
}

/// An audit that could not read the whole ledger gives no verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inconclusive_audit_makes_the_lesson_inconclusive() {
    let s = scenario("exactly-once");
    let dir = tempfile::tempdir().expect("dir");
    let service = Service::in_process(&s, &dir.path().join("p.db"))
        .await
        .expect("service");
    let figures = serde_json::json!({
        "payments": 0, "last_payment_id": 0, "total_amount_minor": 0, "keyed_payments": 0,
        "distinct_keys": 0, "duplicate_keys": 0, "accounts": 0, "balance_sum_minor": 0,
        "stored_responses": 0, "keys_in_flight": 0
    });
    let report = serde_json::json!({
        "verdict": "inconclusive", "findings": ["the ledger was deleted while the audit ran"],
        "recomputed": figures, "maintained": figures, "accounts_off_ledger": null,
        "invariants": {"one_payment_per_key": true, "balances_conserved": true, "balances_match_ledger": true},
        "payments_read": 0, "last_id_at_start": 0, "rows_after_start": 0, "elapsed_ms": 1
    });
    let audit = stub(200, report.to_string()).await;
    let intents = runner::repeat(3, "bianca", "marc", 100, 8);
    let run = runner::run(&service.url, intents.clone(), &Options::new(8), Sinks::default())
        .await
        .expect("run");
    let deadline = Duration::from_millis(400);
    let (judgement, _) = reconcile(&service.url, &intents, &run.attempts, deadline).await;
    let proof = ServiceReader::new(&audit, deadline).expect("reader").audit().await;
    let outcome = play::assess(&s, &intents, judgement, proof, BTreeMap::new());
    assert_inconclusive(&outcome, "deleted while the audit ran");
    service.stop().await.expect("stops");
}
