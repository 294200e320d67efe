//! The read API: one receipt, pages by id, receipts by payment id, the lookup.

use eo_core::wire::{LOOKUP_KEYS_MAX, PAGE_ROWS_MAX};
use receipts::DedupMode;
use serde_json::{Value, json};

use crate::{assert_problem, event, spawn_app};

#[tokio::test]
async fn pages_walk_every_receipt_once_in_id_order() {
    let app = spawn_app(|_| {}).await;
    for n in 1..=25 {
        assert_eq!(app.deliver(&event("pages", n)).await.status(), 201);
    }
    let (mut after, mut seen, mut pages) = (0i64, Vec::new(), 0);
    loop {
        let page = app.get_json(&format!("/receipts?after={after}&limit=10")).await;
        pages += 1;
        let receipts = page["receipts"].as_array().unwrap();
        seen.extend(receipts.iter().map(|r| r["id"].as_i64().unwrap()));
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
        assert!(pages < 10, "pages must end");
    }
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    assert_eq!(pages, 3);
    // A full last page says where to go on; the page after it is empty.
    let full = app.get_json("/receipts?after=20&limit=5").await;
    assert_eq!(full["next_after"], 25);
    let empty = app.get_json("/receipts?after=25").await;
    assert_eq!(
        (empty["receipts"].as_array().unwrap().len(), &empty["next_after"]),
        (0, &Value::Null)
    );
    app.stop_keeping_dir().await;
}

#[tokio::test]
async fn receipts_by_payment_id_and_one_by_id() {
    let app = spawn_app(|c| c.dedup = DedupMode::Off).await;
    app.deliver(&event("p", 1)).await;
    app.deliver(&event("p", 2)).await;
    app.deliver(&event("p", 1)).await;
    let by_payment = app.get_json("/receipts?payment_id=1").await;
    let ids: Vec<i64> = by_payment["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 3]);
    assert_eq!(
        app.get_json("/receipts?payment_id=2").await["receipts"][0]["event_id"],
        "p:2"
    );
    assert_eq!(app.get_json("/receipts?payment_id=9").await["receipts"], json!([]));
    assert_eq!(app.get_json("/receipts/2").await["payment_id"], 2);
    for missing in ["/receipts/99", "/receipts/abc"] {
        assert_problem(app.client.get(app.url(missing)).send().await.unwrap(), 404, "not-found").await;
    }
    app.stop_keeping_dir().await;
}

#[tokio::test]
async fn bad_queries_and_lookups_are_400() {
    let app = spawn_app(|_| {}).await;
    let over = PAGE_ROWS_MAX + 1;
    for query in [
        "?limit=0",
        &format!("?limit={over}"),
        "?after=-1",
        "?payment_id=0",
        "?after=x",
        "?colour=red",
    ] {
        let response = app
            .client
            .get(app.url(&format!("/receipts{query}")))
            .send()
            .await
            .unwrap();
        assert_problem(response, 400, "invalid-query").await;
    }
    let too_many: Vec<String> = (0..=LOOKUP_KEYS_MAX).map(|n| format!("e:{n}")).collect();
    for body in [
        json!({"event_ids": []}),
        json!({"event_ids": too_many}),
        json!({"ids": ["a"]}),
        json!({"event_ids": ["a\u{0}"]}),
    ] {
        let response = app
            .client
            .post(app.url("/receipts/lookup"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_problem(response, 400, "invalid-lookup").await;
    }
    app.stop_keeping_dir().await;
}

#[tokio::test]
async fn a_full_lookup_answers_every_id_in_the_order_asked() {
    let app = spawn_app(|_| {}).await;
    for n in (2..=200).step_by(2) {
        app.deliver(&event("look", n)).await;
    }
    let asked: Vec<String> = (1..=LOOKUP_KEYS_MAX as i64)
        .rev()
        .map(|n| format!("look:{n}"))
        .collect();
    let found = app.lookup(&asked).await;
    assert_eq!(found.len(), LOOKUP_KEYS_MAX);
    for (answer, id) in found.iter().zip(&asked) {
        assert_eq!(answer["event_id"], id.as_str());
        let n: i64 = id.trim_start_matches("look:").parse().unwrap();
        let expected = i64::from(n <= 200 && n % 2 == 0);
        assert_eq!(answer["receipts"], expected, "{id}");
        assert_eq!(answer["receipt_ids"].as_array().unwrap().len() as i64, expected);
    }
    app.stop_keeping_dir().await;
}
