//! `GET /events`: the bounded record of what the service did with recent
//! requests, by key or `X-Request-Id`.

use serde_json::Value;

use crate::{BODY, TestApp, assert_problem, spawn_app};

async fn pay_traced(app: &TestApp, key: Option<&str>, request_id: &str, body: &str) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/payments"))
        .header("content-type", "application/json")
        .header("X-Request-Id", request_id)
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.expect("POST /payments")
}

fn kinds(events: &Value) -> Vec<String> {
    events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind").to_owned())
        .collect()
}

#[tokio::test]
async fn a_key_shows_received_commit_then_received_replay_in_order_with_times_and_ids() {
    let app = spawn_app(|_| {}).await;
    assert_eq!(pay_traced(&app, Some("ev-1"), "r-1", BODY).await.status(), 201);
    assert_eq!(pay_traced(&app, Some("ev-1"), "r-2", BODY).await.status(), 201);
    let other = r#"{"src": "bianca", "dest": "marc", "amount": "2"}"#;
    assert_eq!(pay_traced(&app, Some("ev-1"), "r-3", other).await.status(), 422);
    let events = app.get_json("/events?key=ev-1").await;
    assert_eq!(
        kinds(&events),
        [
            "received",
            "committed",
            "received",
            "replayed",
            "received",
            "key_reused"
        ]
    );
    let list = events["events"].as_array().expect("events");
    assert_eq!(
        list[1]["payment_id"], list[3]["payment_id"],
        "the replay names the committed payment"
    );
    assert_eq!(list[1]["status"], 201);
    assert_eq!(list[5]["status"], 422);
    assert_eq!(list[5]["problem"], "idempotency-key-reused");
    assert_eq!(list[2]["request_id"], "r-2");
    let times: Vec<u64> = list.iter().map(|e| e["at_unix_us"].as_u64().expect("time")).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]) && times[0] > 1_600_000_000_000_000,
        "{times:?}"
    );

    // By request id: a keyless attempt too.
    assert_eq!(pay_traced(&app, None, "keyless-7", BODY).await.status(), 201);
    let by_id = app.get_json("/events?request_id=keyless-7").await;
    assert_eq!(kinds(&by_id), ["received", "committed"]);
    assert_eq!(by_id["events"][0]["key"], Value::Null);
    assert_eq!(
        kinds(&app.get_json("/events?key=never-seen").await),
        Vec::<String>::new()
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_queries_are_400_with_the_field() {
    let app = spawn_app(|_| {}).await;
    for (query, field) in [
        ("", None),
        ("?key=a&request_id=b", None),
        ("?key=", Some("key")),
        ("?request_id=%01", Some("request_id")),
    ] {
        let response = app
            .client
            .get(app.url(&format!("/events{query}")))
            .send()
            .await
            .expect("GET");
        let problem = assert_problem(response, 400, "invalid-query").await;
        assert_eq!(problem["field"].as_str(), field, "{query}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_record_is_bounded_and_says_how_much_it_dropped() {
    let app = spawn_app(|_| {}).await;
    // Refused requests (400, never reach the writer) still record two events each.
    let requests = payment_service::EVENTS_MAX / 2 + 1;
    for i in 0..requests {
        let response = pay_traced(&app, Some(&format!("b-{i}")), "r", "{}").await;
        assert_eq!(response.status(), 400);
    }
    let first = app.get_json("/events?key=b-0").await;
    assert_eq!(kinds(&first), Vec::<String>::new(), "the oldest events were pushed out");
    assert_eq!(first["dropped_since_start"], 2);
    assert_eq!(first["events_max"], payment_service::EVENTS_MAX);
    let last = app.get_json(&format!("/events?key=b-{}", requests - 1)).await;
    assert_eq!(kinds(&last), ["received", "refused"]);
    assert_eq!(last["events"][1]["problem"], "missing-field");
    app.stop().await;
}
