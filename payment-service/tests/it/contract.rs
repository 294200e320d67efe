//! The HTTP contract, line by line.

use std::time::Duration;

use payment_service::DedupMode;
use serde_json::Value;

use crate::{BODY, assert_problem, header, spawn_app};

#[tokio::test]
async fn first_execution_answers_201_with_the_payment() {
    let app = spawn_app(|_| {}).await;
    let response = app
        .pay(Some("k-1"), r#"{"src": "bianca", "dest": "marc", "amount": "12.50"}"#)
        .await;
    assert_eq!(response.status(), 201);
    assert_eq!(header(&response, "idempotent-replayed"), Some("false"));
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    let location = header(&response, "location").expect("Location").to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/payments/{}", body["id"]));
    assert_eq!(body["src"], "bianca");
    assert_eq!(body["dest"], "marc");
    assert_eq!(body["amount"], "12.50");
    assert_eq!(body["amount_minor"], 1250);
    assert_eq!(body["idempotency_key"], "k-1");
    assert!(
        body["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 24),
        "{body}"
    );
    // The Location serves the same document.
    assert_eq!(app.get_json(&location).await, body);
    app.stop().await;
}

#[tokio::test]
async fn a_retry_replays_the_first_answer_byte_for_byte() {
    let app = spawn_app(|_| {}).await;
    let first = app.pay(Some("k"), BODY).await;
    let first_location = header(&first, "location").map(str::to_owned);
    let first_body = first.text().await.unwrap();
    // Both header names, quoted and bare, name the same key.
    for (name, value) in [
        ("Idempotency-Key", "k"),
        ("Idempotency-Key", "\"k\""),
        ("Payment-Idempotence-Key", "k"),
    ] {
        let retry = app
            .client
            .post(app.url("/payments/"))
            .header("content-type", "application/json")
            .header(name, value)
            .body(BODY)
            .send()
            .await
            .unwrap();
        assert_eq!(retry.status(), 201, "{name}: {value}");
        assert_eq!(header(&retry, "idempotent-replayed"), Some("true"));
        assert_eq!(header(&retry, "location").map(str::to_owned), first_location);
        assert_eq!(retry.text().await.unwrap(), first_body);
    }
    let stats = app.stats().await;
    assert_eq!(
        (
            stats["payments"].as_i64(),
            stats["executed"].as_i64(),
            stats["replayed"].as_i64()
        ),
        (Some(1), Some(1), Some(3))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_key_reused_for_a_different_payment_is_refused_and_stores_nothing() {
    let app = spawn_app(|_| {}).await;
    assert_eq!(app.pay(Some("k"), BODY).await.status(), 201);
    for other in [
        r#"{"src": "bianca", "dest": "marc", "amount": "2"}"#,
        r#"{"src": "bianca", "dest": "carol", "amount": "1"}"#,
        r#"{"src": "carol", "dest": "marc", "amount": "1"}"#,
    ] {
        let problem = assert_problem(app.pay(Some("k"), other).await, 422, "idempotency-key-reused").await;
        assert_eq!(problem["idempotency_key"], "k");
    }
    let stats = app.stats().await;
    assert_eq!(stats["payments"], 1);
    assert_eq!(stats["total_amount_minor"], 100);
    assert_eq!(stats["mismatches_422"], 3);
    app.stop().await;
}

#[tokio::test]
async fn a_key_still_in_flight_gets_409_with_retry_after() {
    let app = spawn_app(|c| c.processing_delay = Duration::from_millis(400)).await;
    let first = {
        let (client, url) = (app.client.clone(), app.url("/payments"));
        tokio::spawn(async move {
            client
                .post(url)
                .header("idempotency-key", "slow")
                .header("content-type", "application/json")
                .body(BODY)
                .send()
                .await
        })
    };
    // Wait until the first request holds the key (bounded poll, no guessing).
    let mut in_flight = false;
    for _ in 0..200 {
        if app.stats().await["keys_in_flight"] == 1 {
            in_flight = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(in_flight, "the first request never claimed its key");
    let second = app.pay(Some("slow"), BODY).await;
    assert_eq!(header(&second, "retry-after"), Some("1"));
    assert_problem(second, 409, "idempotency-key-in-use").await;
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 201);
    assert_eq!(header(&first, "idempotent-replayed"), Some("false"));
    // After it finished, the retry replays.
    let third = app.pay(Some("slow"), BODY).await;
    assert_eq!(header(&third, "idempotent-replayed"), Some("true"));
    let stats = app.stats().await;
    assert_eq!(
        (stats["payments"].as_i64(), stats["conflicts_409"].as_i64()),
        (Some(1), Some(1))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_late_retry_after_the_stored_response_expired_is_still_caught() {
    let app = spawn_app(|c| c.key_retention = Duration::ZERO).await;
    let first = app.pay(Some("late"), BODY).await.text().await.unwrap();
    let retry = app.pay(Some("late"), BODY).await;
    assert_eq!(retry.status(), 201);
    assert_eq!(header(&retry, "idempotent-replayed"), Some("true"));
    assert_eq!(
        retry.text().await.unwrap(),
        first,
        "rebuilt from the ledger, byte-identical"
    );
    assert_problem(
        app.pay(Some("late"), r#"{"src": "bianca", "dest": "marc", "amount": 5}"#)
            .await,
        422,
        "idempotency-key-reused",
    )
    .await;
    let stats = app.stats().await;
    assert_eq!(
        (stats["payments"].as_i64(), stats["replayed_from_ledger"].as_i64()),
        (Some(1), Some(1))
    );
    app.stop().await;
}

#[tokio::test]
async fn keyless_payments_execute_every_time_unless_a_key_is_required() {
    let app = spawn_app(|_| {}).await;
    for _ in 0..2 {
        let response = app.pay(None, BODY).await;
        assert_eq!(response.status(), 201);
        assert_eq!(header(&response, "idempotent-replayed"), Some("false"));
        assert_eq!(response.json::<Value>().await.unwrap()["idempotency_key"], Value::Null);
    }
    let stats = app.stats().await;
    assert_eq!(
        (stats["payments"].as_i64(), stats["keyless_payments"].as_i64()),
        (Some(2), Some(2))
    );
    app.stop().await;

    let strict = spawn_app(|c| c.require_key = true).await;
    assert_problem(strict.pay(None, BODY).await, 400, "idempotency-key-missing").await;
    assert_eq!(strict.pay(Some("k"), BODY).await.status(), 201);
    assert_eq!(strict.stats().await["payments"], 1);
    strict.stop().await;
}

#[tokio::test]
async fn amounts_are_numbers_or_numeric_strings_stored_in_minor_units() {
    let app = spawn_app(|_| {}).await;
    for (i, (amount, minor, shown)) in [
        ("1", 100, "1.00"),
        ("\"1\"", 100, "1.00"),
        ("\"12.50\"", 1250, "12.50"),
        ("0.07", 7, "0.07"),
        ("\"1000000000.00\"", 100_000_000_000_i64, "1000000000.00"),
    ]
    .into_iter()
    .enumerate()
    {
        let response = app
            .pay(
                Some(&format!("a{i}")),
                &format!(r#"{{"src":"a","dest":"b","amount":{amount}}}"#),
            )
            .await;
        assert_eq!(response.status(), 201, "{amount}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            (body["amount_minor"].as_i64(), body["amount"].as_str()),
            (Some(minor), Some(shown)),
            "{amount}"
        );
    }
    let stats = app.stats().await;
    assert_eq!(stats["total_amount_minor"], 100_000_001_457_i64);
    assert_eq!(stats["total_amount"], "1000000014.57");
    app.stop().await;
}

#[tokio::test]
async fn balances_move_and_the_invariants_hold() {
    let app = spawn_app(|_| {}).await;
    app.pay(Some("1"), r#"{"src":"alice","dest":"bob","amount":"10.00"}"#)
        .await;
    app.pay(Some("2"), r#"{"src":"bob","dest":"carol","amount":"2.50"}"#)
        .await;
    app.pay(None, r#"{"src":"carol","dest":"alice","amount":"1"}"#).await;
    let stats = app.stats().await;
    assert_eq!(stats["payments"], 3);
    assert_eq!(stats["last_payment_id"], 3);
    assert_eq!(stats["accounts"], 3);
    assert_eq!(stats["keyed_payments"], 2);
    assert_eq!(stats["distinct_keys"], 2);
    assert_eq!(stats["duplicate_keys"], 0);
    assert_eq!(stats["dedup"], "unique");
    assert_eq!(stats["received"], 3);
    assert_eq!(
        stats["invariants"],
        serde_json::json!({"one_payment_per_key": true, "balances_conserved": true, "balances_match_ledger": true})
    );
    app.stop().await;
}

#[tokio::test]
async fn dedup_off_ignores_keys_and_stats_show_the_duplicates() {
    let app = spawn_app(|c| c.dedup = DedupMode::Off).await;
    for _ in 0..3 {
        let response = app.pay(Some("same"), BODY).await;
        assert_eq!(response.status(), 201);
        assert_eq!(header(&response, "idempotent-replayed"), Some("false"));
    }
    let stats = app.stats().await;
    assert_eq!(
        (
            stats["payments"].as_i64(),
            stats["distinct_keys"].as_i64(),
            stats["duplicate_keys"].as_i64()
        ),
        (Some(3), Some(1), Some(1))
    );
    assert_eq!(stats["invariants"]["one_payment_per_key"], false);
    assert_eq!(stats["invariants"]["balances_conserved"], true);
    assert_eq!(stats["dedup"], "off");
    // The key stays on every payment, for reconciliation.
    assert_eq!(
        app.get_json("/payments?key=same").await["payments"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    app.stop().await;
}

#[tokio::test]
async fn check_then_insert_is_right_for_sequential_retries() {
    let app = spawn_app(|c| c.dedup = DedupMode::CheckThenInsert).await;
    let first = app.pay(Some("seq"), BODY).await.text().await.unwrap();
    let retry = app.pay(Some("seq"), BODY).await;
    assert_eq!(header(&retry, "idempotent-replayed"), Some("true"));
    assert_eq!(retry.text().await.unwrap(), first);
    assert_problem(
        app.pay(Some("seq"), r#"{"src":"a","dest":"b","amount":1}"#).await,
        422,
        "idempotency-key-reused",
    )
    .await;
    assert_eq!(app.stats().await["payments"], 1);
    app.stop().await;
}

#[tokio::test]
async fn listing_paging_lookup_by_key_and_wipe() {
    let app = spawn_app(|_| {}).await;
    for i in 0..5 {
        assert_eq!(app.pay(Some(&format!("p{i}")), BODY).await.status(), 201);
    }
    let page = app.get_json("/payments?limit=2").await;
    assert_eq!(page["payments"].as_array().map(Vec::len), Some(2));
    let next = page["next_after_id"].as_i64().expect("a next page");
    let rest = app.get_json(&format!("/payments?after_id={next}&limit=1000")).await;
    assert_eq!(rest["payments"].as_array().map(Vec::len), Some(3));
    assert_eq!(rest["next_after_id"], Value::Null);
    let by_key = app.get_json("/payments?key=p3").await;
    assert_eq!(by_key["payments"][0]["idempotency_key"], "p3");
    assert_eq!(
        app.get_json("/payments?key=nope").await["payments"],
        serde_json::json!([])
    );

    assert_problem(
        app.client.get(app.url("/payments?limit=1001")).send().await.unwrap(),
        400,
        "invalid-query",
    )
    .await;
    assert_problem(
        app.client.get(app.url("/payments?limit=0")).send().await.unwrap(),
        400,
        "invalid-query",
    )
    .await;
    assert_problem(
        app.client.get(app.url("/payments?after_id=-1")).send().await.unwrap(),
        400,
        "invalid-query",
    )
    .await;
    assert_problem(
        app.client.get(app.url("/payments?color=red")).send().await.unwrap(),
        400,
        "invalid-query",
    )
    .await;
    assert_problem(
        app.client
            .get(app.url("/payments?limit=1&limit=2"))
            .send()
            .await
            .unwrap(),
        400,
        "invalid-query",
    )
    .await;
    assert_problem(
        app.client.get(app.url("/payments/999")).send().await.unwrap(),
        404,
        "not-found",
    )
    .await;
    assert_problem(
        app.client.get(app.url("/payments/abc")).send().await.unwrap(),
        404,
        "not-found",
    )
    .await;
    assert_problem(
        app.client.get(app.url("/nowhere")).send().await.unwrap(),
        404,
        "not-found",
    )
    .await;

    for path in ["/payments/", "/payments"] {
        let wiped = app.client.delete(app.url(path)).send().await.unwrap();
        assert!(wiped.status().is_success(), "DELETE {path}");
        let stats = app.stats().await;
        assert_eq!(
            (
                stats["payments"].as_i64(),
                stats["accounts"].as_i64(),
                stats["stored_responses"].as_i64()
            ),
            (Some(0), Some(0), Some(0))
        );
    }
    // After a wipe the same key pays again: the keys went with the payments.
    let again = app.pay(Some("p0"), BODY).await;
    assert_eq!(header(&again, "idempotent-replayed"), Some("false"));
    app.stop().await;
}

#[tokio::test]
async fn health_index_and_problem_pages() {
    let app = spawn_app(|_| {}).await;
    assert_eq!(app.get_json("/health").await["status"], "ok");
    assert_eq!(app.get_json("/").await["settings"]["dedup"], "unique");
    let doc = app.get_json("/problems/idempotency-key-in-use").await;
    assert_eq!(doc["status"], 409);
    assert!(doc["what_to_do"].as_str().is_some_and(|t| t.contains("Retry-After")));
    app.stop().await;
}
