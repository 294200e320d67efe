//! `--dedup exercise`: the helpers the attendee's code gets, through the
//! reference solutions (the attendee's own file is never tested, so what
//! they type cannot break `cargo test`). The full ladder of faults is played
//! by `scenarios`' tests; these pin each helper's promise directly.

use std::time::Duration;

use payment_service::{Config, DedupMode};

use crate::{BODY, TestApp, assert_problem, header, spawn_app};

const OTHER_AMOUNT: &str = r#"{"src": "bianca", "dest": "marc", "amount": "2"}"#;

fn solution(n: u8) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.dedup = DedupMode::Exercise;
        c.exercise_solution = Some(n);
    }
}

async fn payments_under(app: &TestApp, key: &str) -> usize {
    let page = app.get_json(&format!("/payments?key={key}")).await;
    page["payments"].as_array().expect("payments").len()
}

#[tokio::test]
async fn the_starting_state_pays_every_request_and_keeps_the_key() {
    let app = spawn_app(solution(0)).await;
    for _ in 0..2 {
        let r = app.pay(Some("start-k"), BODY).await;
        assert_eq!(r.status(), 201);
        assert_eq!(header(&r, "idempotent-replayed"), Some("false"));
    }
    assert_eq!(payments_under(&app, "start-k").await, 2);
    assert_eq!(app.stats().await["dedup"], "exercise");
    app.stop().await;
}

#[tokio::test]
async fn the_full_solution_replays_byte_identical_and_refuses_a_changed_request() {
    let app = spawn_app(solution(5)).await;
    let first = app.pay(Some("full-k"), BODY).await;
    assert_eq!(first.status(), 201);
    let location = header(&first, "location").map(str::to_owned);
    let first_body = first.text().await.expect("body");
    let again = app.pay(Some("full-k"), BODY).await;
    assert_eq!(again.status(), 201);
    assert_eq!(header(&again, "idempotent-replayed"), Some("true"));
    assert_eq!(header(&again, "location").map(str::to_owned), location);
    assert_eq!(again.text().await.expect("body"), first_body);
    assert_problem(
        app.pay(Some("full-k"), OTHER_AMOUNT).await,
        422,
        "idempotency-key-reused",
    )
    .await;
    assert_eq!(payments_under(&app, "full-k").await, 1);
    // Keyless requests never reach the exercise: they pay, undeduplicated.
    assert_eq!(app.pay(None, BODY).await.status(), 201);
    assert_eq!(app.pay(None, BODY).await.status(), 201);
    let stats = app.stats().await;
    assert_eq!(
        (stats["payments"].as_i64(), stats["keyless_payments"].as_i64()),
        (Some(3), Some(2))
    );
    assert_eq!(stats["invariants"]["balances_match_ledger"], true);
    app.stop().await;
}

/// Two copies at once, each doing the processing delay after its look-up.
async fn race(n: u8, key: &str) -> (TestApp, Vec<u16>) {
    let app = spawn_app(move |c| {
        solution(n)(c);
        c.processing_delay = Duration::from_millis(200);
    })
    .await;
    let (a, b) = tokio::join!(app.pay(Some(key), BODY), app.pay(Some(key), BODY));
    let mut statuses = vec![a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    (app, statuses)
}

#[tokio::test]
async fn look_up_then_insert_pays_twice_for_concurrent_copies() {
    let (app, statuses) = race(1, "race-1").await;
    assert_eq!(statuses, vec![201, 201]);
    assert_eq!(payments_under(&app, "race-1").await, 2);
    // The exercise's writes book their figures like every other write: the
    // maintained /stats agree with a recomputation, duplicate key included.
    assert_eq!(app.stats().await["duplicate_keys"], 1);
    assert_eq!(app.audit().await["verdict"], "agree");
    app.stop().await;
}

#[tokio::test]
async fn insert_unique_lets_exactly_one_concurrent_copy_pay() {
    let (app, statuses) = race(3, "race-3").await;
    // The original workshop's answer to the loser: 208 Already Reported.
    assert_eq!(statuses, vec![201, 208]);
    assert_eq!(payments_under(&app, "race-3").await, 1);
    app.stop().await;
    let (app, statuses) = race(5, "race-5").await;
    assert_eq!(statuses, vec![201, 201]);
    assert_eq!(payments_under(&app, "race-5").await, 1);
    assert_eq!(app.audit().await["verdict"], "agree");
    app.stop().await;
}

#[tokio::test]
async fn stored_answers_expire_with_the_retention_but_the_ledger_does_not() {
    for (n, late_status) in [(4, 409), (5, 201)] {
        // Retention 0: an answer is stale from the moment it is stored.
        let app = spawn_app(move |c| {
            solution(n)(c);
            c.key_retention = Duration::ZERO;
        })
        .await;
        assert_eq!(app.pay(Some("late-k"), BODY).await.status(), 201);
        let late = app.pay(Some("late-k"), BODY).await;
        assert_eq!(late.status().as_u16(), late_status, "solution {n}");
        assert_eq!(payments_under(&app, "late-k").await, 1, "solution {n}");
        app.stop().await;
    }
    // With the default retention, solution 4 replays the stored answer.
    let app = spawn_app(solution(4)).await;
    assert_eq!(app.pay(Some("fresh-k"), BODY).await.status(), 201);
    let again = app.pay(Some("fresh-k"), BODY).await;
    assert_eq!(
        (again.status().as_u16(), header(&again, "idempotent-replayed")),
        (201, Some("true"))
    );
    app.stop().await;
}

#[test]
fn a_solution_needs_the_exercise_mode_and_must_exist() {
    let mut config = Config::new("x.db");
    config.exercise_solution = Some(1);
    assert!(config.validate().expect_err("unique mode").contains("--dedup exercise"));
    config.dedup = DedupMode::Exercise;
    assert!(config.validate().is_ok());
    config.exercise_solution = Some(6);
    assert!(config.validate().expect_err("no solution 6").contains("0 to 5"));
    assert_eq!(payment_service::EXERCISE_SOLUTIONS.len(), 6);
}
