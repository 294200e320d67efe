//! A lost acknowledgement, reproduced deterministically: a downstream
//! reset_peer fires on the first attempt only (the toxic is removed before the
//! retry). The service committed the payment; the client saw a reset. A
//! keyless retry pays a second time; a retry with the same key pays nothing
//! more and gets the first answer back with `Idempotent-Replayed: true`.

use std::sync::Arc;

use client::classify::{ErrorKind, Outcome};
use client::runner::{self, Sinks};
use client::strategy::{KeyStrategy, Options, Retries};
use scenarios::catalog::Scenario;
use scenarios::parts::{self, PROXY_NAME, Proxy, Service};

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

/// Sends one payment twice (one attempt each), the first time through a
/// proxy that loses the answer. Returns the service's payment count and the
/// two attempts.
async fn lose_then_retry(key: KeyStrategy) -> (u64, Vec<client::history::AttemptRecord>) {
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
    let attempts = first.attempts.into_iter().chain(retry.attempts).collect();
    proxy.stop().await.expect("proxy stops");
    service.stop().await.expect("service stops");
    let _ = Arc::new(());
    (payments, attempts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_retry_after_a_lost_ack_pays_twice() {
    let (payments, attempts) = lose_then_retry(KeyStrategy::None).await;
    assert_eq!(attempts[1].outcome, Outcome::Ok);
    assert_eq!(attempts[1].replayed, Some(false), "the service saw a new payment");
    assert_eq!(payments, 2, "paid twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_key_retry_after_a_lost_ack_pays_once_and_is_replayed() {
    let (payments, attempts) = lose_then_retry(KeyStrategy::PerPayment).await;
    assert_eq!(attempts[0].key, attempts[1].key, "the same key");
    assert_eq!(attempts[1].outcome, Outcome::Ok);
    assert_eq!(attempts[1].status, Some(201));
    assert_eq!(attempts[1].replayed, Some(true), "Idempotent-Replayed: true");
    assert_eq!(payments, 1, "paid once");
}
