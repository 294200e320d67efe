//! The end-to-end check of both hops, as `client pay --receipts URL` runs
//! it: payments through the payment service, events through its outbox and
//! relay to a receipts service, then one verdict per hop.

use std::time::Duration;

use client::flow::{self, Ending, Expect, Settings};
use client::intents::Intents;
use client::receipts::ReceiptOutcome;
use client::reconcile::Verdict;
use client::strategy::Options;
use scenarios::second_hop::{Receipts, ReceiptsSpec};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A payment service in this process that notifies `receipts_url` through
/// its outbox (or nobody, without one).
async fn payment_service(dir: &std::path::Path, receipts_url: Option<&str>) -> (String, oneshot::Sender<()>) {
    let mut config = payment_service::Config::new(dir.join("payments.db"));
    config.synchronous = payment_service::Synchronous::Normal;
    if let Some(url) = receipts_url {
        config.receipts_url = Some(url.to_owned());
        config.notify = payment_service::NotifyMode::Outbox;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(payment_service::run(listener, config, async move {
        let _ = stopped.await;
    }));
    (url, stop)
}

/// `count` payments through `run`, judged on both hops.
async fn pay(run: &Settings, count: usize) -> Ending {
    flow::pay(run, Intents::repeat(count, "bianca", "marc", 100, 7), None)
        .await
        .expect("pays")
}

/// The judgement of a run that [`pay`] made.
fn judged(ending: &Ending) -> &flow::Judged {
    match ending {
        Ending::Judged(judged) => judged,
        Ending::Interrupted { .. } => panic!("not judged"),
    }
}

/// A receipts service on its own file in `dir`.
async fn receipts(dir: &std::path::Path) -> Receipts {
    Receipts::start(&ReceiptsSpec::default(), &dir.join("receipts.db"))
        .await
        .expect("receipts")
}

fn settings(service: &str, receipts: &str, deadline: Duration) -> Settings {
    let mut options = Options::new(7);
    options.concurrency = 8;
    Settings {
        targets: vec![service.to_owned()],
        service: service.to_owned(),
        options,
        history: None,
        progress: false,
        reconcile_deadline: deadline,
        stop: None,
        receipts: Some(receipts.to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_payment_once_and_every_payment_receipted_once() {
    let dir = tempfile::tempdir().expect("dir");
    let receipts = receipts(dir.path()).await;
    let (service, _stop) = payment_service(dir.path(), Some(&receipts.url)).await;
    let run = settings(&service, &receipts.url, Duration::from_secs(20));
    let ending = pay(&run, 200).await;
    let judged = judged(&ending);
    assert_eq!(
        judged.judgement.as_ref().expect("a verdict").verdict,
        Verdict::ExactlyOnce
    );
    let verdict = judged.receipts.as_ref().expect("the second hop was judged");
    assert_eq!(
        (verdict.outcome, verdict.checked, verdict.exact),
        (ReceiptOutcome::Exact, 200, 200)
    );
    let expect = Expect {
        payments: Some(Verdict::ExactlyOnce),
        receipts: Some(ReceiptOutcome::Exact),
    };
    assert_eq!(flow::conclude(&ending, &run.options, true, expect), flow::EXIT_OK);
    let wrong = Expect {
        receipts: Some(ReceiptOutcome::Missing),
        ..expect
    };
    assert_eq!(
        flow::conclude(&ending, &run.options, true, wrong),
        flow::EXIT_UNEXPECTED_VERDICT
    );
    receipts.stop().await.expect("stops");
}

/// With the receipts service gone, events stay pending: a receipt on its
/// way is not a missing one, so the second hop has no verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_still_pending_at_the_deadline_make_the_second_hop_inconclusive() {
    let dir = tempfile::tempdir().expect("dir");
    let receipts = receipts(dir.path()).await;
    let gone = receipts.url.clone();
    receipts.stop().await.expect("stops");
    let (service, _stop) = payment_service(dir.path(), Some(&gone)).await;
    let run = settings(&service, &gone, Duration::from_millis(1500));
    let ending = pay(&run, 20).await;
    let judged = judged(&ending);
    assert_eq!(
        judged.judgement.as_ref().expect("a verdict").verdict,
        Verdict::ExactlyOnce
    );
    let verdict = judged.receipts.as_ref().expect("the second hop was judged");
    assert_eq!(verdict.outcome, ReceiptOutcome::Inconclusive, "{verdict}");
    assert!(verdict.to_string().contains("still pending delivery"), "{verdict}");
    assert_eq!(
        flow::conclude(&ending, &run.options, true, Expect::default()),
        flow::EXIT_INCONCLUSIVE
    );
}

/// `scenarios explain` on the dual write: the story it picks ends with the
/// payment in the ledger and no receipt for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_draws_a_payment_that_was_never_receipted() {
    let all = scenarios::catalog::load(None).expect("catalog");
    let lesson = all.iter().find(|s| s.name == "dual-write").expect("the lesson");
    let settings = scenarios::play::Settings {
        payments: 50,
        seed: 42,
        keep: None,
        exe: env!("CARGO_BIN_EXE_scenarios").into(),
        outside: None,
        observer: None,
        db_url: None,
    };
    let choice = scenarios::explain::Choice::Telling;
    let (outcome, evidence) = scenarios::explain::play_and_collect(lesson, settings, choice)
        .await
        .expect("plays");
    assert!(outcome.pass, "{:?}", outcome.problems);
    let receipts = evidence.receipts.clone().expect("the second hop was read");
    assert_eq!(receipts.len(), 1, "one payment in the ledger: {receipts:?}");
    assert_eq!(receipts[0].1, 0, "the story told is one without a receipt");
    assert_eq!(scenarios::story::told(&evidence).1, "paid, but never receipted");
    let last = scenarios::story::steps(&evidence).pop().expect("steps");
    let scenarios::story::Step::Ledger { text } = last else {
        panic!("{last:?}")
    };
    assert!(
        text.starts_with("receipts: NONE for #") && text.ends_with("paid, not receipted"),
        "{text}"
    );
}

/// Asking for the second hop of a service that notifies nobody is a setup
/// mistake, said as such, not a verdict of missing receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_notifies_nobody_has_no_second_hop_verdict() {
    let dir = tempfile::tempdir().expect("dir");
    let receipts = receipts(dir.path()).await;
    let (service, _stop) = payment_service(dir.path(), None).await;
    let run = settings(&service, &receipts.url, Duration::from_secs(5));
    let ending = pay(&run, 5).await;
    let judged = judged(&ending);
    let verdict = judged.receipts.as_ref().expect("the second hop was judged");
    assert_eq!(verdict.outcome, ReceiptOutcome::Inconclusive);
    assert!(verdict.to_string().contains("--receipts-url"), "{verdict}");
    receipts.stop().await.expect("stops");
}
