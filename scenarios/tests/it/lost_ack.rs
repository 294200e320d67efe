//! A lost acknowledgement, reproduced deterministically: a downstream
//! reset_peer fires on the first attempt only (the toxic is removed before the
//! retry). The service committed the payment; the client saw a reset. A
//! keyless retry pays a second time; a retry with the same key pays nothing
//! more and gets the first answer back with `Idempotent-Replayed: true`.

use client::classify::{ErrorKind, Outcome};
use client::runner::{self, Sinks};
use client::strategy::{KeyStrategy, Options, Retries};
use scenarios::catalog::{self, Scenario};
use scenarios::explain::{self, Choice};
use scenarios::parts::{self, PROXY_NAME, Proxy, Service};
use scenarios::play::Settings;
use scenarios::{diagram, story};

const SCENARIO: &str = r#"
name = "lost-ack"
title = "one lost acknowledgement"
lesson = "a downstream reset on the first attempt"
expect = "exactly-once"

[[proxy.toxics]]
type = "reset_peer"
stream = "downstream"
toxicity = 1.0
attributes = { timeout = 1 }
"#;

/// What happened to the payment: the service's payment count, the two
/// attempts, and the story drawn from what the parts recorded.
struct Told {
    payments: u64,
    attempts: Vec<client::history::AttemptRecord>,
    diagram: Vec<String>,
}

/// Sends one payment twice (one attempt each), the first time through a
/// proxy that loses the answer.
async fn lose_then_retry(key: KeyStrategy) -> Told {
    let scenario = Scenario::parse("lost-ack.toml", SCENARIO).expect("scenario");
    let dir = tempfile::tempdir().expect("dir");
    let service = Service::in_process(&scenario, &dir.path().join("p.db"))
        .await
        .expect("service");
    let proxy = Proxy::start(&scenario, service.addr, 1).await.expect("proxy");
    let mut options = Options::new(1);
    options.key = key;
    options.retries = Retries::Limited(0);
    let intents = runner::repeat(1, "bianca", "marc", 100, 1);

    let first = runner::run(&proxy.url, intents.clone(), &options, Sinks::default())
        .await
        .expect("first attempt");
    assert_eq!(first.attempts[0].outcome, Outcome::Unknown, "the answer was lost");
    assert_eq!(first.attempts[0].error, Some(ErrorKind::Reset));
    assert_eq!(
        service.stats().await.expect("stats")["payments"],
        1,
        "but the payment was committed"
    );
    assert_eq!(proxy.faults().await.expect("faults"), (0, 1), "one downstream reset");

    // The fault fired on the first attempt only.
    let removed = parts::http()
        .expect("http")
        .delete(format!(
            "{}/proxies/{PROXY_NAME}/toxics/reset_peer_downstream",
            proxy.api
        ))
        .send()
        .await
        .expect("delete toxic");
    assert_eq!(removed.status(), 204);

    let retry = runner::run(
        &proxy.url,
        intents,
        &options,
        Sinks {
            progress: false,
            ..Sinks::default()
        },
    )
    .await
    .expect("retry");
    let payments = service.stats().await.expect("stats")["payments"]
        .as_u64()
        .expect("payments");
    let attempts: Vec<_> = first.attempts.into_iter().chain(retry.attempts).collect();
    let evidence = explain::evidence(&service.url, &proxy.api, 1, attempts.clone())
        .await
        .expect("the parts say what they recorded");
    let diagram = diagram::terminal(&story::steps(&evidence), "one lost acknowledgement")
        .into_iter()
        .flatten()
        .collect();
    proxy.stop().await.expect("proxy stops");
    service.stop().await.expect("service stops");
    Told {
        payments,
        attempts,
        diagram,
    }
}

/// The index of the first line at or after `from` containing `text`.
fn line_with(diagram: &[String], from: usize, text: &str) -> usize {
    (from..diagram.len())
        .find(|&i| diagram[i].contains(text))
        .unwrap_or_else(|| panic!("no {text:?} after line {from}:\n{}", diagram.join("\n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_retry_after_a_lost_ack_pays_twice() {
    let told = lose_then_retry(KeyStrategy::None).await;
    println!("{}", told.diagram.join("\n"));
    let attempts = &told.attempts;
    assert_eq!(attempts[1].outcome, Outcome::Ok);
    assert_eq!(attempts[1].replayed, Some(false), "the service saw a new payment");
    assert_eq!(told.payments, 2, "paid twice");
    // The story: a commit, the answer dropped, a retry without a key, a second commit.
    let d = &told.diagram;
    let commit = line_with(d, 0, "COMMIT payment #1");
    let dropped = line_with(d, commit, "✕ answer dropped (reset_peer ↓)");
    let retry = line_with(d, dropped, "attempt 2, no key");
    let second = line_with(d, retry, "COMMIT payment #2");
    line_with(d, second, "ledger: 2 payments #1 #2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_key_retry_after_a_lost_ack_pays_once_and_is_replayed() {
    let told = lose_then_retry(KeyStrategy::PerPayment).await;
    println!("{}", told.diagram.join("\n"));
    let attempts = &told.attempts;
    assert_eq!(attempts[0].key, attempts[1].key, "the same key");
    assert_eq!(attempts[1].outcome, Outcome::Ok);
    assert_eq!(attempts[1].status, Some(201));
    assert_eq!(attempts[1].replayed, Some(true), "Idempotent-Replayed: true");
    assert_eq!(told.payments, 1, "paid once");
    // The story, in this order: the commit, the dropped answer, the retry
    // with the same key, the replay; and one payment in the ledger.
    let d = &told.diagram;
    let commit = line_with(d, 0, "COMMIT payment #1");
    let dropped = line_with(d, commit, "✕ answer dropped (reset_peer ↓)");
    let reset = line_with(d, dropped, "connection reset");
    let retry = line_with(d, reset, "attempt 2, the same key");
    let replay = line_with(d, retry, "key known: replay #1");
    let replayed = line_with(d, replay, "201, Idempotent-Replayed: true");
    line_with(d, replayed, "ledger: ONE payment #1");
}

/// The same story found in a real lesson: `scenarios explain exactly-once`
/// plays it and picks the first payment whose answer was lost and replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_finds_a_lost_ack_in_the_exactly_once_lesson() {
    let all = catalog::load(None).expect("catalog");
    let lesson = all.iter().find(|s| s.name == "exactly-once").expect("lesson");
    let settings = Settings {
        payments: 30,
        seed: 11,
        keep: None,
        exe: env!("CARGO_BIN_EXE_scenarios").into(),
        observer: None,
        outside: None,
        db_url: None,
    };
    let (outcome, evidence) = explain::play_and_collect(lesson, settings, Choice::Telling)
        .await
        .expect("the lesson plays and its parts answer");
    assert!(outcome.pass, "{:?}", outcome.problems);
    let title = explain::title("exactly-once", &evidence, 11);
    let d: Vec<String> = diagram::terminal(&story::steps(&evidence), &title)
        .into_iter()
        .flatten()
        .collect();
    println!("{}", d.join("\n"));
    assert!(
        title.ends_with("answer lost after the commit, retried, the first answer replayed"),
        "{title}"
    );
    let commit = line_with(&d, 0, "COMMIT payment");
    let lost = line_with(&d, commit, "connection reset");
    let retry = line_with(&d, lost, "the same key");
    let replay = line_with(&d, retry, "Idempotent-Replayed: true");
    line_with(&d, replay, "ledger: ONE payment");
    assert!(
        d.iter()
            .all(|l| l.chars().count() <= scenarios::report::WIDTH_COLUMNS_MAX)
    );
}
