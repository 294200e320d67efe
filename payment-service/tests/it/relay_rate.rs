//! The relay's delivery rate (a measurement, not a test: ignored). A ledger
//! with N pending events, all due, is opened by a service whose relay
//! delivers to a fast fake receiver on loopback: directly, through a
//! chaos-proxy route without faults, and through one resetting 30 % of
//! requests before the receiver and 30 % of answers after it. The time is
//! from the service's start to `/stats` showing all N delivered.
//!
//! cargo test --release -p payment-service --test it relay_rate -- --ignored --nocapture

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use payment_service::{Config, NotifyMode};
use rusqlite::Connection;
use serde_json::json;
use tempfile::TempDir;
use tokio::net::TcpListener;

use crate::receiver::{FakeReceiver, free_addr};
use crate::{TestApp, db_path, spawn_app, spawn_app_in};

/// How long one measurement may take.
const MEASURE_S_MAX: u64 = 300;

fn relay_to(url: &str) -> impl FnOnce(&mut Config) {
    let url = url.to_owned();
    move |c: &mut Config| {
        c.receipts_url = Some(url);
        c.notify = NotifyMode::Outbox;
        if let Some(ms) = std::env::var("RELAY_BENCH_ATTEMPT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            c.relay.attempt_ms_max = ms;
        }
    }
}

/// A ledger of `n` payments whose events are pending and due, made through
/// the batch route while the receiver is down, then reset to "never tried".
async fn backlog(n: usize) -> TempDir {
    let app = spawn_app(relay_to(&format!("http://{}", free_addr().await))).await;
    for b in 0..n.div_ceil(100) {
        let items: Vec<String> = (0..100.min(n - b * 100))
            .map(|i| format!(r#"{{"item_id": "{i}", "src": "bianca", "dest": "marc", "amount": "1"}}"#))
            .collect();
        let response = app
            .client
            .post(app.url("/payments/batch"))
            .header("content-type", "application/json")
            .header("idempotency-key", format!("bench-{b}"))
            .body(format!(r#"{{"items": [{}]}}"#, items.join(",")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let dir = app.stop_keeping_dir().await;
    Connection::open(db_path(&dir))
        .unwrap()
        .execute_batch(
            "UPDATE outbox SET attempts = 0, next_attempt_ms = 0;
             UPDATE ledger_totals SET outbox_attempts = 0;",
        )
        .unwrap();
    dir
}

/// A chaos-proxy in this process with one route to `upstream`, resetting
/// `p` of the requests and of the answers (rolled per request).
async fn proxy_to(upstream: SocketAddr, p: f64) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(chaos_proxy::run(
        listener,
        chaos_proxy::Config::new(42),
        std::future::pending(),
    ));
    let http = crate::client();
    let created: serde_json::Value = http
        .post(format!("{api}/proxies"))
        .json(&json!({"name": "receipts", "listen": "127.0.0.1:0", "upstream": upstream.to_string(), "enabled": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    if p > 0.0 {
        for stream in ["upstream", "downstream"] {
            let toxic = json!({"type": "reset_peer", "stream": stream, "toxicity": p,
                               "attributes": {"timeout": 1}, "toxicity_scope": "request"});
            let r = http
                .post(format!("{api}/proxies/receipts/toxics"))
                .json(&toxic)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }
    }
    format!("http://{}", created["listen"].as_str().unwrap())
}

/// Polls until all `n` are delivered; also when 50, 90 and 99 % were.
async fn until_delivered(app: &TestApp, n: usize, started: Instant) -> (serde_json::Value, [Duration; 3]) {
    let deadline = Instant::now() + Duration::from_secs(MEASURE_S_MAX);
    let mut marks = [Duration::ZERO; 3];
    loop {
        let stats = app.stats().await;
        let delivered = stats["outbox"]["delivered"].as_u64().unwrap_or(0) as usize;
        for (mark, percent) in marks.iter_mut().zip([50, 90, 99]) {
            if mark.is_zero() && delivered * 100 >= n * percent {
                *mark = started.elapsed();
            }
        }
        if delivered == n {
            return (stats, marks);
        }
        assert!(Instant::now() < deadline, "not delivered in time: {}", stats["outbox"]);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --release -- --ignored --nocapture"]
async fn relay_rate() {
    let n: usize = std::env::var("RELAY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    for (label, faults) in [
        ("direct", None),
        ("proxy, no faults", Some(0.0)),
        ("proxy, 30%/30% resets", Some(0.3)),
    ] {
        let dir = backlog(n).await;
        let receiver = FakeReceiver::start().await;
        let url = match faults {
            Some(p) => proxy_to(receiver.addr, p).await,
            None => receiver.url(),
        };
        let started = Instant::now();
        let app = spawn_app_in(dir, relay_to(&url)).await;
        let (stats, [p50, p90, p99]) = until_delivered(&app, n, started).await;
        let elapsed = started.elapsed();
        let received = receiver.events().len();
        println!(
            "{label:24} {n} events in {:6.2} s: {:8.0} events/s (50/90/99 % after {:.2}/{:.2}/{:.2} s); attempts {}, received {} ({} duplicates)",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64(),
            p50.as_secs_f64(),
            p90.as_secs_f64(),
            p99.as_secs_f64(),
            stats["outbox"]["delivery_attempts"],
            received,
            received - n,
        );
        app.stop().await;
    }
}
