//! Retry rules per status and error kind, against a scripted server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::classify::{ErrorKind, Outcome};
use client::history::AttemptRecord;
use client::runner::{self, Sinks};
use client::strategy::{Backoff, ConnectionMode, KeyStrategy, Options, Retries};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::{WAIT, read_message, reply_and_close};

#[derive(Clone, Copy)]
enum Answer {
    Status(u16, Option<u32>),
    /// Read the request and never answer (until the client gives up).
    Hang,
}

struct Scripted {
    url: String,
    keys: Arc<Mutex<Vec<Option<String>>>>,
    connections: Arc<AtomicUsize>,
}

/// Answers request n (counted over all connections) with `script[n]`, then
/// 201 for ever. Connections are kept alive unless the client asks to close.
async fn scripted(script: Vec<Answer>) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let keys = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (seen, accepted) = (Arc::clone(&keys), Arc::clone(&connections));
    let script = Arc::new(script);
    let requests = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::Relaxed);
            let (seen, script, requests) = (Arc::clone(&seen), Arc::clone(&script), Arc::clone(&requests));
            tokio::spawn(async move { serve_connection(stream, &seen, &script, &requests).await });
        }
    });
    Scripted { url, keys, connections }
}

async fn serve_connection(
    mut stream: TcpStream,
    seen: &Mutex<Vec<Option<String>>>,
    script: &[Answer],
    requests: &AtomicUsize,
) {
    while let Ok(request) = read_message(&mut stream).await {
        let answer = script
            .get(requests.fetch_add(1, Ordering::Relaxed))
            .copied()
            .unwrap_or(Answer::Status(201, None));
        let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("idempotency-key:"))
            .map(|k| k.trim().to_owned());
        seen.lock().expect("lock").push(key);
        let close = text.lines().any(|l| l.trim() == "connection: close");
        match answer {
            Answer::Hang => {
                tokio::time::sleep(WAIT).await;
                return;
            }
            Answer::Status(status, retry_after) => {
                let extra = retry_after.map(|s| format!("Retry-After: {s}\r\n")).unwrap_or_default();
                let body = "{}";
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if close {
                    reply_and_close(stream, reply.as_bytes()).await;
                    return;
                }
                if stream.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn options(retries: u32) -> Options {
    let mut o = Options::new(1);
    o.retries = Retries::Limited(retries);
    o.backoff = Backoff::None;
    o.attempt_timeout_ms = 200;
    o
}

async fn one_payment(url: &str, options: &Options) -> (bool, Vec<AttemptRecord>) {
    let intents = runner::repeat(1, "bianca", "marc", 100, options.seed);
    let report = runner::run(url, intents, options, Sinks::default()).await.expect("run");
    (report.results[0].confirmed, report.attempts)
}

fn shape(attempts: &[AttemptRecord]) -> Vec<(Outcome, Option<u16>, Option<ErrorKind>)> {
    attempts.iter().map(|a| (a.outcome, a.status, a.error)).collect()
}

#[tokio::test]
async fn a_400_or_422_stops_at_once() {
    for status in [400, 404, 413, 415, 422] {
        let server = scripted(vec![Answer::Status(status, None)]).await;
        let (confirmed, attempts) = one_payment(&server.url, &options(5)).await;
        assert!(!confirmed, "{status}");
        assert_eq!(
            shape(&attempts),
            vec![(Outcome::Fail, Some(status), None)],
            "{status}: never retried"
        );
    }
}

#[tokio::test]
async fn server_errors_are_unknown_and_retried_with_the_same_key() {
    let server = scripted(vec![
        Answer::Status(500, None),
        Answer::Status(502, None),
        Answer::Status(503, None),
    ])
    .await;
    let (confirmed, attempts) = one_payment(&server.url, &options(5)).await;
    assert!(confirmed);
    assert_eq!(
        shape(&attempts),
        vec![
            (Outcome::Unknown, Some(500), None),
            (Outcome::Unknown, Some(502), None),
            (Outcome::Unknown, Some(503), None),
            (Outcome::Ok, Some(201), None)
        ]
    );
    let keys = server.keys.lock().expect("lock").clone();
    assert_eq!(keys.len(), 4);
    assert!(
        keys.iter().all(|k| k.is_some() && *k == keys[0]),
        "one key for every attempt: {keys:?}"
    );
}

#[tokio::test]
async fn per_attempt_keys_differ_and_none_sends_no_key() {
    let server = scripted(vec![Answer::Status(500, None)]).await;
    let mut o = options(3);
    o.key = KeyStrategy::PerAttempt;
    one_payment(&server.url, &o).await;
    let keys = server.keys.lock().expect("lock").clone();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1]);

    let server = scripted(vec![]).await;
    o.key = KeyStrategy::None;
    one_payment(&server.url, &o).await;
    assert_eq!(server.keys.lock().expect("lock").clone(), vec![None]);
}

#[tokio::test]
async fn retry_after_is_honoured_on_409_429_and_503() {
    for status in [409, 429, 503] {
        let server = scripted(vec![Answer::Status(status, Some(1))]).await;
        let (confirmed, attempts) = one_payment(&server.url, &options(3)).await;
        assert!(confirmed, "{status}");
        assert_eq!(attempts.len(), 2, "{status}");
        let waited_us = attempts[1].start_us - attempts[0].end_us;
        assert!(
            waited_us >= 1_000_000,
            "{status}: waited only {waited_us} µs despite Retry-After: 1"
        );
    }
}

#[tokio::test]
async fn a_refused_connection_is_a_failure_that_sent_nothing() {
    // Bind and drop: nothing listens on this port any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let (confirmed, attempts) = one_payment(&format!("http://127.0.0.1:{port}"), &options(2)).await;
    assert!(!confirmed);
    assert_eq!(
        shape(&attempts),
        vec![(Outcome::Fail, None, Some(ErrorKind::Connect)); 3],
        "2 retries, then give up"
    );
}

#[tokio::test]
async fn a_timeout_is_unknown_and_retried() {
    let server = scripted(vec![Answer::Hang]).await;
    let (confirmed, attempts) = one_payment(&server.url, &options(1)).await;
    assert!(confirmed);
    assert_eq!(
        shape(&attempts),
        vec![
            (Outcome::Unknown, None, Some(ErrorKind::Timeout)),
            (Outcome::Ok, Some(201), None)
        ]
    );
}

#[tokio::test]
async fn the_deadline_bounds_unlimited_retries() {
    let server = scripted(vec![Answer::Status(503, None); 10_000]).await;
    let mut o = options(0);
    o.retries = Retries::Unlimited;
    o.backoff = Backoff::FullJitter;
    o.backoff_base_ms = 5;
    o.backoff_cap_ms = 20;
    o.deadline_ms = 300;
    let started = std::time::Instant::now();
    let (confirmed, attempts) = one_payment(&server.url, &o).await;
    assert!(!confirmed);
    assert!(attempts.len() > 1);
    assert!(started.elapsed() < Duration::from_secs(5), "stopped near the deadline");
}

#[tokio::test]
async fn fresh_opens_a_connection_per_attempt_and_reuse_keeps_one() {
    for (mode, expect_per_attempt) in [(ConnectionMode::Fresh, true), (ConnectionMode::Reuse, false)] {
        let server = scripted(vec![Answer::Status(500, None), Answer::Status(503, None)]).await;
        let mut o = options(5);
        o.connection = mode;
        let intents = runner::repeat(3, "bianca", "marc", 100, 1);
        let report = runner::run(&server.url, intents, &o, Sinks::default())
            .await
            .expect("run");
        let attempts = report.attempts.len();
        assert_eq!(attempts, 5, "{mode:?}: two retried errors, then three successes");
        let connections = server.connections.load(Ordering::Relaxed);
        if expect_per_attempt {
            assert_eq!(connections, attempts, "fresh: one connection per attempt");
        } else {
            assert_eq!(connections, 1, "reuse: one keep-alive connection for a sequential run");
        }
    }
}

#[tokio::test]
async fn the_history_file_holds_every_attempt() {
    let server = scripted(vec![Answer::Status(500, None), Answer::Status(409, None)]).await;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("history.jsonl");
    let history = Arc::new(client::history::HistoryFile::create(&path).expect("history"));
    let sinks = Sinks {
        history: Some(history),
        ..Sinks::default()
    };
    let intents = runner::repeat(2, "bianca", "marc", 100, 1);
    let report = runner::run(&server.url, intents, &options(5), sinks)
        .await
        .expect("run");
    let text = std::fs::read_to_string(&path).expect("read history");
    let mut lines: Vec<AttemptRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON attempt"))
        .collect();
    lines.sort_by_key(|a| (a.intent, a.attempt));
    assert_eq!(lines, report.attempts);
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|a| a.end_us >= a.start_us && a.key.is_some()));
}
