//! Batches: the mistake of one key for every item of a batch pays only the
//! first item (the others are refused with 422), and the judge attributes
//! the one payment under the shared key to the item it pays.

use client::batch::{self, Batch, BatchKeys};
use client::intents::{Intents, IntentsBuilder};
use client::reconcile::Verdict;
use client::runner::{self, Sinks, key_for};
use client::strategy::{KeyStrategy, Options};

use crate::{baseline, judge, spawn_service};

const SEED: u64 = 11;

/// 12 payments, amounts 1.00, 2.00, 3.00, 4.00 over and over: the items of a
/// batch differ, as a batch's items do.
fn varied(count: usize) -> Intents {
    let mut b = IntentsBuilder::default();
    for i in 0..count {
        b.push(i, &key_for(SEED, i), "bianca", "marc", 100 * (i as i64 % 4 + 1));
    }
    b.finish()
}

#[tokio::test]
async fn one_key_for_every_item_pays_the_first_item_of_each_batch() {
    let service = spawn_service(|_| {}).await;
    let shared = Batch {
        size: 4,
        keys: BatchKeys::Shared,
    };
    let intents = batch::rekey(&varied(12), shared);
    let mut options = Options::new(SEED);
    options.concurrency = 3;
    options.batch = Some(shared);
    let mode = baseline(&service).await;
    let report = runner::run(&service.url, intents.clone(), &options, Sinks::default())
        .await
        .expect("run");
    assert_eq!(report.summary.confirmed, 3, "{:?}", report.summary);
    assert_eq!(report.summary.refused_4xx, 9, "the other items got 422");
    let listed: Vec<_> = intents.iter().collect();
    let r = judge(&service.url, mode, &listed, &report.attempts, KeyStrategy::PerPayment)
        .await
        .expect("reconcile");
    assert_eq!(r.verdict, Verdict::TooLittle, "{r:?}");
    assert_eq!((r.exactly_once, r.lost, r.duplicated, r.payments), (3, 9, 0, 3));
    assert_eq!(r.moved_minor, 300, "the first item of each batch, 1.00 each");
    assert_eq!((r.orphaned, r.reused_before, r.failed_but_landed), (0, 0, 0));
}

#[tokio::test]
async fn a_batch_needs_per_payment_keys_and_a_size_within_the_limit() {
    let mut options = Options::new(SEED);
    options.batch = Some(Batch {
        size: 4,
        keys: BatchKeys::Derived,
    });
    options.key = KeyStrategy::PerAttempt;
    assert!(options.validate().unwrap_err().contains("--key per-payment"));
    options.key = KeyStrategy::PerPayment;
    options.batch = Some(Batch {
        size: 1,
        keys: BatchKeys::Derived,
    });
    assert!(options.validate().unwrap_err().contains("--batch must be between 2"));
}

#[tokio::test]
async fn derived_keys_pay_every_item_once_in_batches_through_lost_answers() {
    let service = spawn_service(|_| {}).await;
    // Every third answer is lost after the service committed: a batch's
    // retry must replay the whole batch, not pay it again.
    let proxy = crate::faults::spawn_proxy(service.addr, |i| {
        if i % 3 == 1 {
            crate::faults::Fault::LoseAnswer
        } else {
            crate::faults::Fault::Pass
        }
    })
    .await;
    let derived = Batch {
        size: 4,
        keys: BatchKeys::Derived,
    };
    let intents = batch::rekey(&varied(12), derived);
    let mut options = Options::new(SEED);
    options.concurrency = 2;
    options.backoff = client::strategy::Backoff::None;
    options.batch = Some(derived);
    let mode = baseline(&service).await;
    let report = runner::run(&proxy.url, intents.clone(), &options, Sinks::default())
        .await
        .expect("run");
    assert_eq!(report.summary.confirmed, 12, "{:?}", report.summary);
    assert!(report.summary.replays_seen > 0, "a lost answer came back as a replay");
    let listed: Vec<_> = intents.iter().collect();
    let r = judge(&service.url, mode, &listed, &report.attempts, KeyStrategy::PerPayment)
        .await
        .expect("reconcile");
    assert_eq!(r.verdict, Verdict::ExactlyOnce, "{r:?}");
    assert_eq!((r.exactly_once, r.payments, r.moved_minor), (12, 12, 3000));
    // Each item is stored under its own key: the batch's key and its id.
    let page: serde_json::Value = reqwest::get(format!("{}/payments?key={}:3", service.url, key_for(SEED, 0)))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(page["payments"][0]["amount"], "4.00", "{page}");
}
