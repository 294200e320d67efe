//! A table of bad requests: each gets its precise 4xx, nothing is stored, and
//! the service keeps serving.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::{BODY, assert_problem, spawn_app};

struct Case {
    what: &'static str,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
    status: u16,
    slug: &'static str,
    field: Option<&'static str>,
}

fn case(what: &'static str, body: &str, status: u16, slug: &'static str, field: Option<&'static str>) -> Case {
    Case {
        what,
        headers: vec![("content-type", b"application/json".to_vec())],
        body: body.as_bytes().to_vec(),
        status,
        slug,
        field,
    }
}

fn with_key(mut c: Case, name: &'static str, value: &[u8]) -> Case {
    c.headers.push((name, value.to_vec()));
    c
}

fn cases() -> Vec<Case> {
    let amount = |a: &str| format!(r#"{{"src": "bianca", "dest": "marc", "amount": {a}}}"#);
    let mut cases = vec![
        case(
            "malformed JSON",
            r#"{"src": "bianca", "dest": "#,
            400,
            "malformed-json",
            None,
        ),
        case("not JSON at all", "src=bianca&dest=marc", 400, "malformed-json", None),
        case("empty body", "", 400, "malformed-json", None),
        case("JSON array", r#"["bianca", "marc", 1]"#, 400, "malformed-json", None),
        case("JSON string", r#""pay""#, 400, "malformed-json", None),
        case(
            "duplicate field",
            r#"{"src": "a", "dest": "b", "amount": 1, "amount": 2}"#,
            400,
            "malformed-json",
            None,
        ),
        case(
            "missing src",
            r#"{"dest": "marc", "amount": 1}"#,
            400,
            "missing-field",
            Some("src"),
        ),
        case(
            "missing dest",
            r#"{"src": "bianca", "amount": 1}"#,
            400,
            "missing-field",
            Some("dest"),
        ),
        case(
            "missing amount",
            r#"{"src": "bianca", "dest": "marc"}"#,
            400,
            "missing-field",
            Some("amount"),
        ),
        case("null amount", &amount("null"), 400, "missing-field", Some("amount")),
        case(
            "src is a number",
            r#"{"src": 1, "dest": "marc", "amount": 1}"#,
            400,
            "invalid-account",
            Some("src"),
        ),
        case(
            "dest is an object",
            r#"{"src": "a", "dest": {}, "amount": 1}"#,
            400,
            "invalid-account",
            Some("dest"),
        ),
        case(
            "empty account",
            r#"{"src": "", "dest": "marc", "amount": 1}"#,
            400,
            "invalid-account",
            Some("src"),
        ),
        case(
            "account with a space",
            r#"{"src": "bian ca", "dest": "marc", "amount": 1}"#,
            400,
            "invalid-account",
            Some("src"),
        ),
        case(
            "account too long",
            &format!(r#"{{"src": "{}", "dest": "marc", "amount": 1}}"#, "a".repeat(65)),
            400,
            "invalid-account",
            Some("src"),
        ),
        case(
            "same account",
            r#"{"src": "marc", "dest": "marc", "amount": 1}"#,
            400,
            "same-account",
            Some("dest"),
        ),
        case(
            "amount is a boolean",
            &amount("true"),
            400,
            "invalid-amount",
            Some("amount"),
        ),
        case(
            "amount is an array",
            &amount("[1]"),
            400,
            "invalid-amount",
            Some("amount"),
        ),
        case("negative amount", &amount("-1"), 400, "invalid-amount", Some("amount")),
        case(
            "negative amount string",
            &amount("\"-1\""),
            400,
            "invalid-amount",
            Some("amount"),
        ),
        case("zero amount", &amount("0"), 400, "invalid-amount", Some("amount")),
        case(
            "zero amount string",
            &amount("\"0.00\""),
            400,
            "invalid-amount",
            Some("amount"),
        ),
        case(
            "huge amount",
            &amount("1000000000.01"),
            400,
            "invalid-amount",
            Some("amount"),
        ),
        case(
            "enormous amount",
            &amount("123456789012345678901234567890"),
            400,
            "invalid-amount",
            Some("amount"),
        ),
        case(
            "three decimals",
            &amount("1.234"),
            400,
            "invalid-amount",
            Some("amount"),
        ),
        case(
            "three decimals string",
            &amount("\"1.230\""),
            400,
            "invalid-amount",
            Some("amount"),
        ),
        case("exponent", &amount("1e2"), 400, "invalid-amount", Some("amount")),
        case(
            "exponent string",
            &amount("\"1E2\""),
            400,
            "invalid-amount",
            Some("amount"),
        ),
        case("words", &amount("\"one\""), 400, "invalid-amount", Some("amount")),
        case("blank string", &amount("\" 1\""), 400, "invalid-amount", Some("amount")),
    ];
    cases.push(Case {
        what: "oversized body",
        headers: vec![("content-type", b"application/json".to_vec())],
        body: format!(
            r#"{{"src": "bianca", "dest": "marc", "amount": 1, "pad": "{}"}}"#,
            "x".repeat(17 * 1024)
        )
        .into_bytes(),
        status: 413,
        slug: "body-too-large",
        field: None,
    });
    // What serde_json lets through in fields it skips: raw bytes that are
    // not UTF-8, and nesting deeper than its recursion limit.
    let mut not_utf8 = br#"{"src": "bianca", "dest": "marc", "amount": 1, "note": "caf"#.to_vec();
    not_utf8.extend_from_slice(b"\xe9\xff\"}");
    let deep = format!(
        r#"{{"src": "bianca", "dest": "marc", "amount": 1, "note": {}{}}}"#,
        "[".repeat(8000),
        "]".repeat(8000)
    );
    for (what, body) in [
        ("extra field not UTF-8", not_utf8),
        ("8,000-deep extra field", deep.into_bytes()),
    ] {
        cases.push(Case {
            what,
            headers: vec![("content-type", b"application/json".to_vec())],
            body,
            status: 400,
            slug: "malformed-json",
            field: None,
        });
    }
    for (what, content_type) in [
        ("text/plain", "text/plain"),
        ("form", "application/x-www-form-urlencoded"),
        ("xml", "application/xml"),
    ] {
        cases.push(Case {
            what,
            headers: vec![("content-type", content_type.as_bytes().to_vec())],
            body: BODY.as_bytes().to_vec(),
            status: 415,
            slug: "unsupported-media-type",
            field: None,
        });
    }
    let key = |what, name, value: &[u8]| with_key(case(what, BODY, 400, "idempotency-key-invalid", None), name, value);
    cases.push(key("empty key", "idempotency-key", b""));
    cases.push(key("empty quoted key", "idempotency-key", b"\"\""));
    cases.push(key("key too long", "idempotency-key", &[b'k'; 256]));
    cases.push(key("non-ASCII key", "idempotency-key", "schl\u{fc}ssel".as_bytes()));
    cases.push(key("unterminated quote", "idempotency-key", b"\"abc"));
    cases.push(key("workshop header empty", "payment-idempotence-key", b""));
    cases.push(with_key(
        key("key sent twice", "idempotency-key", b"a"),
        "idempotency-key",
        b"b",
    ));
    cases.push(with_key(
        key("key in both headers", "idempotency-key", b"a"),
        "payment-idempotence-key",
        b"a",
    ));
    cases
}

#[tokio::test]
async fn every_bad_request_gets_its_4xx_and_stores_nothing() {
    let app = spawn_app(|_| {}).await;
    let cases = cases();
    for case in &cases {
        let mut headers = HeaderMap::new();
        for (name, value) in &case.headers {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_bytes(value).expect("header bytes"),
            );
        }
        let response = app
            .client
            .post(app.url("/payments"))
            .headers(headers)
            .body(case.body.clone())
            .send()
            .await
            .expect(case.what);
        assert_eq!(response.status().as_u16(), case.status, "{}", case.what);
        let problem = assert_problem(response, case.status, case.slug).await;
        if let Some(field) = case.field {
            assert_eq!(problem["field"], field, "{}: {problem}", case.what);
            assert!(
                problem["detail"].as_str().is_some_and(|d| d.contains(field)),
                "{}: {problem}",
                case.what
            );
        }
    }
    let stats = app.stats().await;
    assert_eq!(stats["payments"], 0, "nothing stored");
    assert_eq!(stats["accounts"], 0);
    assert_eq!(stats["rejected"].as_u64(), Some(cases.len() as u64));
    // Still serving.
    assert_eq!(app.pay(Some("good"), BODY).await.status(), 201);
    assert_eq!(app.stats().await["payments"], 1);
    app.stop().await;
}

#[tokio::test]
async fn a_body_without_content_type_is_accepted() {
    let app = spawn_app(|_| {}).await;
    let response = app
        .client
        .post(app.url("/payments/"))
        .header("Payment-Idempotence-Key", "no-ct")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    app.stop().await;
}

#[tokio::test]
async fn a_validation_error_does_not_burn_the_key() {
    let app = spawn_app(|_| {}).await;
    assert_problem(
        app.pay(Some("fix-me"), r#"{"src":"a","dest":"b","amount":"1.234"}"#)
            .await,
        400,
        "invalid-amount",
    )
    .await;
    assert_eq!(
        app.pay(Some("fix-me"), r#"{"src":"a","dest":"b","amount":"1.23"}"#)
            .await
            .status(),
        201
    );
    app.stop().await;
}
