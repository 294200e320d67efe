//! Replays are answered from a reader, without the writer queue; counters
//! are counted where the work is done, not by a request that stopped waiting.

use std::time::{Duration, Instant};

use crate::raw::Raw;

use crate::{BODY, WAIT, assert_problem, db_path, header, spawn_app};

#[tokio::test]
async fn a_replay_is_answered_while_the_writer_is_blocked() {
    let app = spawn_app(|_| {}).await;
    let first = app.pay(Some("r"), BODY).await;
    assert_eq!(first.status(), 201);
    let first_body = first.text().await.unwrap();
    // Another connection holds SQLite's write lock: the writer cannot begin.
    let mut holder = Raw::open(&db_path(&app.dir));
    holder.hold_write_lock();
    let started = Instant::now();
    let replay = app.pay(Some("r"), BODY).await;
    let took = started.elapsed();
    assert_eq!(replay.status(), 201);
    assert_eq!(header(&replay, "idempotent-replayed"), Some("true"));
    assert_eq!(header(&replay, "location"), Some("/payments/1"));
    assert_eq!(replay.text().await.unwrap(), first_body, "byte-identical");
    // The writer waits up to its 5 s busy timeout; a replay never does.
    assert!(took < Duration::from_secs(4), "the replay waited {took:?}");
    // What is not certain still goes to the writer: a mismatch waits for it.
    let mismatch = app
        .pay(Some("r"), r#"{"src": "bianca", "dest": "marc", "amount": "2"}"#)
        .await;
    assert_problem(mismatch, 503, "temporarily-unavailable").await;
    holder.release_write_lock();
    let stats = app.stats().await;
    assert_eq!(
        (stats["replayed"].as_u64(), stats["executed"].as_u64()),
        (Some(1), Some(1))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_payment_committed_after_its_request_gave_up_is_counted() {
    let app = spawn_app(|c| c.write_wait = Duration::from_millis(100)).await;
    let mut holder = Raw::open(&db_path(&app.dir));
    holder.hold_write_lock();
    let response = app.pay(Some("late"), BODY).await;
    let problem = assert_problem(response, 503, "temporarily-unavailable").await;
    assert!(
        problem["detail"].as_str().is_some_and(|d| d.contains("may or may not")),
        "{problem}"
    );
    // The writer was still waiting for the lock: now it commits.
    holder.release_write_lock();
    let deadline = Instant::now() + WAIT;
    let mut stats = app.stats().await;
    while stats["payments"] != 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        stats = app.stats().await;
    }
    assert_eq!(stats["payments"], 1);
    assert_eq!(stats["executed"], 1, "{stats}");
    assert_eq!(stats["unavailable_503"], 1, "{stats}");
    app.stop().await;
}
