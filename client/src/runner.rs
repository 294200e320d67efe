//! Sends the payments: one retry loop per payment, `concurrency` of them at
//! once, every attempt recorded.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::time::Instant;

use crate::backoff;
use crate::classify::{self, ErrorKind, Next, Outcome};
use crate::history::{AttemptRecord, HistoryFile};
use crate::ledger::{Finish, Ledger};
use crate::strategy::{ConnectionMode, KeyStrategy, Options};

/// One logical payment the client wants to happen exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub index: usize,
    /// The payment's key: sent as is with `per-payment`, as `KEY-aN` with `per-attempt`.
    pub key: String,
    pub src: String,
    pub dest: String,
    pub amount_minor: i64,
}

/// The most payments one run takes (about 100 MB of history at worst).
pub const INTENTS_MAX: usize = 1_000_000;

/// Reproducible keys: the same seed names the same payments.
pub fn key_for(seed: u64, index: usize) -> String {
    format!("pay-{seed:016x}-{index:07}")
}

/// `count` identical payments.
pub fn repeat(count: usize, src: &str, dest: &str, amount_minor: i64, seed: u64) -> Vec<Intent> {
    (0..count)
        .map(|index| Intent {
            index,
            key: key_for(seed, index),
            src: src.to_owned(),
            dest: dest.to_owned(),
            amount_minor,
        })
        .collect()
}

/// Reads the workshop's `payments.csv`: rows `src,dest,amount`, an optional
/// header, blank lines skipped. Errors name the line.
pub fn read_csv(path: &std::path::Path, seed: u64) -> anyhow::Result<Vec<Intent>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut intents = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (n == 0 && line.eq_ignore_ascii_case("src,dest,amount")) {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [src, dest, amount] = fields[..] else {
            bail!(
                "{}:{}: expected 3 fields src,dest,amount, got {:?}",
                path.display(),
                n + 1,
                line
            );
        };
        let amount_minor = crate::money::parse_minor(amount)
            .map_err(|why| anyhow::anyhow!("{}:{}: bad amount: {why}", path.display(), n + 1))?;
        if intents.len() == INTENTS_MAX {
            bail!("{} has more than {INTENTS_MAX} payments", path.display());
        }
        let index = intents.len();
        intents.push(Intent {
            index,
            key: key_for(seed, index),
            src: src.into(),
            dest: dest.into(),
            amount_minor,
        });
    }
    Ok(intents)
}

/// How each payment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentResult {
    pub index: usize,
    pub confirmed: bool,
    pub attempts: u32,
}

/// Counts over the whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub intents: u64,
    pub confirmed: u64,
    pub given_up: u64,
    pub attempts: u64,
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
    pub connect_errors: u64,
    pub resets: u64,
    pub timeouts: u64,
    pub incomplete: u64,
    pub replays_seen: u64,
    pub conflicts_409: u64,
    pub unavailable_503: u64,
    pub refused_4xx: u64,
    pub elapsed_ms: u64,
    pub attempts_per_s: u64,
}

pub struct RunReport {
    /// True when the run was wound down by [`Sinks::stop`].
    pub stopped: bool,
    /// True when the run was stopped by a simulated crash: payments in flight
    /// were abandoned mid-attempt, as if the client process had died.
    pub crashed: bool,
    pub results: Vec<IntentResult>,
    pub attempts: Vec<AttemptRecord>,
    pub summary: Summary,
}

/// Where the run writes as it goes.
#[derive(Default, Clone)]
pub struct Sinks {
    pub history: Option<Arc<HistoryFile>>,
    pub ledger: Option<Arc<Ledger>>,
    /// Draw a progress line on stderr (only if it is a terminal).
    pub progress: bool,
    /// When this turns true, every payment is abandoned at once, mid-attempt,
    /// without recording anything more: a simulated client crash.
    pub crash: Option<tokio::sync::watch::Receiver<bool>>,
    /// When this turns true the run winds down cleanly (Ctrl-C): no new
    /// payment starts, no retry is made, attempts in flight finish, and the
    /// ledger and history are flushed. Unfinished payments count as given up.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Crash (as with `crash`) as soon as this many payments are confirmed:
    /// a crash point that does not depend on timing.
    pub crash_after_confirmed: Option<usize>,
}

struct Shared {
    client: reqwest::Client,
    url: String,
    options: Options,
    intents: Arc<[Intent]>,
    sinks: Sinks,
    started: Instant,
    /// `started` on the wall clock, in µs since the Unix epoch.
    started_unix_us: u64,
    deadline: Instant,
    next: AtomicUsize,
    finished: AtomicUsize,
    confirmed: AtomicUsize,
    attempts: AtomicU64,
    /// Attempts sent so far, numbering request ids (copies of one payment
    /// sent at once share their intent and attempt numbers).
    sent: AtomicU64,
    /// Turns true on a simulated crash, from `Sinks::crash` or the confirmed count.
    crash: tokio::sync::watch::Sender<bool>,
}

pub fn http_client(options: &Options) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        // Every retry is ours, decided and logged here: none hidden in the library.
        .retry(reqwest::retry::never())
        .connect_timeout(Duration::from_millis(options.attempt_timeout_ms))
        .tcp_nodelay(true);
    builder = match options.connection {
        ConnectionMode::Fresh => builder.pool_max_idle_per_host(0),
        ConnectionMode::Reuse => builder.pool_max_idle_per_host(options.concurrency),
    };
    builder.build().context("cannot build the HTTP client")
}

/// Sends every intent to `target` (`http://host:port`) and returns what
/// happened. Takes the intents shared (a `Vec` converts), so a caller that
/// judges them afterwards need not hold a second copy.
pub async fn run(
    target: &str,
    intents: impl Into<Arc<[Intent]>>,
    options: &Options,
    sinks: Sinks,
) -> anyhow::Result<RunReport> {
    let intents = intents.into();
    options.validate().map_err(anyhow::Error::msg)?;
    if intents.len() > INTENTS_MAX {
        bail!("at most {INTENTS_MAX} payments per run");
    }
    let started = Instant::now();
    let shared = Arc::new(Shared {
        client: http_client(options)?,
        url: format!("{}/payments", target.trim_end_matches('/')),
        options: options.clone(),
        intents,
        sinks,
        started,
        started_unix_us: unix_us_now(),
        deadline: started + Duration::from_millis(options.deadline_ms),
        next: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        confirmed: AtomicUsize::new(0),
        attempts: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        crash: tokio::sync::watch::channel(false).0,
    });
    if let Some(mut external) = shared.sinks.crash.clone() {
        let relay = Arc::clone(&shared);
        tokio::spawn(async move {
            if external.wait_for(|crashed| *crashed).await.is_ok() {
                relay.crash.send_replace(true);
            }
        });
    }
    let done = Arc::new(AtomicBool::new(false));
    let progress = (shared.sinks.progress && std::io::stderr().is_terminal())
        .then(|| tokio::spawn(draw_progress(Arc::clone(&shared), Arc::clone(&done))));

    let workers: Vec<_> = (0..options.concurrency.min(shared.intents.len().max(1)))
        .map(|_| tokio::spawn(worker(Arc::clone(&shared))))
        .collect();
    let mut results = Vec::with_capacity(shared.intents.len());
    let mut attempts = Vec::new();
    for w in workers {
        let (r, a) = w.await.context("a payment worker failed")?;
        results.extend(r);
        attempts.extend(a);
    }
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    let crashed = *shared.crash.borrow();
    flush_sinks(&shared.sinks, crashed).await?;
    results.sort_by_key(|r| r.index);
    attempts.sort_by_key(|a| (a.intent, a.attempt));
    let summary = summarize(&results, &attempts, started.elapsed());
    let stopped = stopping(&shared);
    Ok(RunReport {
        stopped,
        crashed,
        results,
        attempts,
        summary,
    })
}

/// Writes out the history, and makes the ledger's `done` lines durable;
/// after a simulated crash they are lost instead, as they would be.
async fn flush_sinks(sinks: &Sinks, crashed: bool) -> anyhow::Result<()> {
    if let Some(history) = &sinks.history {
        history.flush().await.context("cannot write the history file")?;
    }
    if let Some(ledger) = &sinks.ledger {
        if crashed {
            ledger.abandon_unflushed().await;
        } else {
            ledger.flush().await?;
        }
    }
    Ok(())
}

fn stopping(shared: &Shared) -> bool {
    shared.sinks.stop.as_ref().is_some_and(|stop| *stop.borrow())
}

async fn worker(shared: Arc<Shared>) -> (Vec<IntentResult>, Vec<AttemptRecord>) {
    let (mut results, mut records) = (Vec::new(), Vec::new());
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(intent) = shared.intents.get(i) else { break };
        let mut crash = shared.crash.subscribe();
        if *crash.borrow() || stopping(&shared) {
            break;
        }
        let result = tokio::select! {
            result = pay(&shared, intent, &mut records) => result,
            _ = crash.wait_for(|crashed| *crashed) => break,
        };
        if result.confirmed {
            let confirmed = shared.confirmed.fetch_add(1, Ordering::Relaxed) + 1;
            if shared.sinks.crash_after_confirmed == Some(confirmed) {
                // The crash hits before this payment is recorded as done.
                shared.crash.send_replace(true);
                break;
            }
        }
        if let Some(ledger) = &shared.sinks.ledger {
            let finish = if result.confirmed {
                Finish::Confirmed
            } else {
                Finish::GivenUp
            };
            if let Err(e) = ledger.finish(&intent.key, finish).await {
                tracing::warn!(error = %e, "cannot record a finished payment in the ledger");
            }
        }
        shared.finished.fetch_add(1, Ordering::Relaxed);
        results.push(result);
    }
    (results, records)
}

/// The retry loop of one payment.
async fn pay(shared: &Shared, intent: &Intent, records: &mut Vec<AttemptRecord>) -> IntentResult {
    let options = &shared.options;
    let mut rng = backoff::stream(options.seed, intent.index as u64);
    let body = serde_json::json!({
        "src": intent.src,
        "dest": intent.dest,
        "amount": crate::money::format_minor(intent.amount_minor),
    })
    .to_string();
    let ended = |confirmed, attempts| IntentResult {
        index: intent.index,
        confirmed,
        attempts,
    };
    let mut attempt = 0u32;
    loop {
        let now = Instant::now();
        if now >= shared.deadline {
            return ended(false, attempt);
        }
        attempt += 1;
        let key = match options.key {
            KeyStrategy::PerPayment => Some(intent.key.clone()),
            KeyStrategy::PerAttempt => Some(format!("{}-a{attempt}", intent.key)),
            KeyStrategy::None => None,
        };
        let timeout = Duration::from_millis(options.attempt_timeout_ms).min(shared.deadline - now);
        let (record, next) = send(shared, intent.index, attempt, key, &body, timeout).await;
        record_attempt(shared, &record).await;
        records.push(record);
        let retry_after = match next {
            Next::Done => return ended(true, attempt),
            Next::Stop => return ended(false, attempt),
            Next::Retry { retry_after } => retry_after,
        };
        if !options.retries.allows(attempt - 1) || stopping(shared) {
            return ended(false, attempt);
        }
        let jitter = backoff::delay(
            options.backoff,
            options.backoff_base_ms,
            options.backoff_cap_ms,
            attempt,
            &mut rng,
        );
        let wait = retry_after.unwrap_or_default().max(jitter);
        if Instant::now() + wait >= shared.deadline {
            return ended(false, attempt);
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Counts an attempt, and writes it to the history file and the debug log.
async fn record_attempt(shared: &Shared, record: &AttemptRecord) {
    shared.attempts.fetch_add(1, Ordering::Relaxed);
    if let Some(history) = &shared.sinks.history
        && let Err(e) = history.append(record).await
    {
        tracing::warn!(error = %e, "cannot write the history file");
    }
    tracing::debug!(intent = record.intent, attempt = record.attempt, outcome = ?record.outcome, status = ?record.status, error = ?record.error, "attempt");
}

/// What one attempt got: (outcome, status, error, replayed, next step).
type Answer = (Outcome, Option<u16>, Option<ErrorKind>, Option<bool>, Next);

/// One attempt, with its result classified.
async fn send(
    shared: &Shared,
    intent: usize,
    attempt: u32,
    key: Option<String>,
    body: &str,
    timeout: Duration,
) -> (AttemptRecord, Next) {
    let start_us = shared.started.elapsed().as_micros() as u64;
    let mut request = shared
        .client
        .post(&shared.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .timeout(timeout);
    if shared.options.connection == ConnectionMode::Fresh {
        request = request.header(reqwest::header::CONNECTION, "close");
    }
    if let Some(key) = &key {
        request = request.header("Idempotency-Key", key.as_str());
    }
    // Unique per run (its start time) and attempt sent: the service
    // records what it did under this id.
    let sent = shared.sent.fetch_add(1, Ordering::Relaxed);
    let request_id = format!("{:x}-{sent}-{intent}-{attempt}", shared.started_unix_us);
    request = request.header(REQUEST_ID_HEADER, request_id.as_str());
    let (outcome, status, error, replayed, next) = match request.send().await {
        Err(e) => {
            let (outcome, kind) = classify::classify_error(&e);
            (outcome, None, Some(kind), None, Next::Retry { retry_after: None })
        }
        Ok(response) => read_answer(response).await,
    };
    let end_us = shared.started.elapsed().as_micros() as u64;
    let record = AttemptRecord {
        intent,
        key,
        attempt,
        start_us,
        end_us,
        outcome,
        status,
        error,
        replayed,
        at_unix_us: shared.started_unix_us + start_us,
        request_id: Some(request_id),
    };
    (record, next)
}

/// The header that names an attempt to the service (a de-facto standard).
pub const REQUEST_ID_HEADER: &str = "X-Request-Id";

/// Now, in µs since the Unix epoch (0 if the clock is before it).
pub fn unix_us_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Classifies an answer, reading its body to the end: a status whose body
/// is cut off is no answer.
async fn read_answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let replayed = response
        .headers()
        .get(eo_core::wire::IDEMPOTENT_REPLAYED)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.eq_ignore_ascii_case("true"));
    let (outcome, next) = classify::classify_status(status, response.headers());
    match response.bytes().await {
        Ok(_) => (outcome, Some(status.as_u16()), None, replayed, next),
        Err(e) => {
            let (outcome, kind) = classify::classify_error(&e);
            let kind = if kind == ErrorKind::Other {
                ErrorKind::Incomplete
            } else {
                kind
            };
            let retry = Next::Retry { retry_after: None };
            (outcome, Some(status.as_u16()), Some(kind), replayed, retry)
        }
    }
}

async fn draw_progress(shared: Arc<Shared>, done: Arc<AtomicBool>) {
    let total = shared.intents.len().max(1);
    loop {
        let finished = shared.finished.load(Ordering::Relaxed);
        let attempts = shared.attempts.load(Ordering::Relaxed);
        let width = 30;
        let filled = finished * width / total;
        eprint!(
            "\r[{}{}] {finished}/{total} payments, {attempts} attempts, {:.1} s ",
            "#".repeat(filled),
            ".".repeat(width - filled),
            shared.started.elapsed().as_secs_f64()
        );
        if done.load(Ordering::Relaxed) {
            eprintln!();
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn summarize(results: &[IntentResult], attempts: &[AttemptRecord], elapsed: Duration) -> Summary {
    let count = |f: &dyn Fn(&AttemptRecord) -> bool| attempts.iter().filter(|a| f(a)).count() as u64;
    let elapsed_ms = elapsed.as_millis() as u64;
    Summary {
        intents: results.len() as u64,
        confirmed: results.iter().filter(|r| r.confirmed).count() as u64,
        given_up: results.iter().filter(|r| !r.confirmed).count() as u64,
        attempts: attempts.len() as u64,
        ok: count(&|a| a.outcome == Outcome::Ok),
        failed: count(&|a| a.outcome == Outcome::Fail),
        unknown: count(&|a| a.outcome == Outcome::Unknown),
        connect_errors: count(&|a| a.error == Some(ErrorKind::Connect)),
        resets: count(&|a| a.error == Some(ErrorKind::Reset)),
        timeouts: count(&|a| a.error == Some(ErrorKind::Timeout)),
        incomplete: count(&|a| a.error == Some(ErrorKind::Incomplete) || a.error == Some(ErrorKind::Other)),
        replays_seen: count(&|a| a.replayed == Some(true)),
        conflicts_409: count(&|a| a.status == Some(409)),
        unavailable_503: count(&|a| a.status == Some(503)),
        refused_4xx: count(&|a| {
            a.status
                .is_some_and(|s| (400..500).contains(&s) && s != 409 && s != 429)
        }),
        elapsed_ms,
        attempts_per_s: (attempts.len() as f64 / elapsed.as_secs_f64().max(1e-9)) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_workshop_csv_with_or_without_header() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("payments.csv");
        std::fs::write(&path, "src,dest,amount\nbianca,marc,1\n\nalice, bob ,12.50\n\n\n").expect("write");
        let intents = read_csv(&path, 3).expect("parses");
        assert_eq!(intents.len(), 2);
        assert_eq!(
            (
                intents[1].src.as_str(),
                intents[1].dest.as_str(),
                intents[1].amount_minor
            ),
            ("alice", "bob", 1250)
        );
        assert_eq!(intents[0].key, key_for(3, 0));
        std::fs::write(&path, "bianca,marc,1\n").expect("write");
        assert_eq!(read_csv(&path, 3).expect("no header").len(), 1);
        std::fs::write(&path, "src,dest,amount\nbianca,marc\n").expect("write");
        let error = format!("{:#}", read_csv(&path, 3).expect_err("two fields"));
        assert!(
            error.contains("payments.csv:2") && error.contains("3 fields"),
            "{error}"
        );
        std::fs::write(&path, "bianca,marc,1.234\n").expect("write");
        assert!(format!("{:#}", read_csv(&path, 3).expect_err("bad amount")).contains(":1: bad amount"));
    }
}
