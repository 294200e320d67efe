//! Sends the payments: one retry loop per payment, `concurrency` of them at
//! once. Every attempt is counted and streamed to the history file (if any);
//! what each payment was told is kept as 8 bytes ([`PaymentOutcome`]), and the
//! full [`AttemptRecord`]s are kept in memory only unless the caller asks for
//! a summary only ([`Sinks::summary_only`], what `client pay` does).

use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::time::Instant;

use crate::backoff;
use crate::classify::{self, ErrorKind, Next, Outcome};
use crate::history::{AttemptRecord, HistoryFile};
pub use crate::intents::{INTENTS_MAX, Intent, Intents, IntentsBuilder, key_for};
use crate::ledger::{Finish, Ledger};
use crate::strategy::{AmountStyle, ConnectionMode, KeyStrategy, Options};

/// The longest CSV line accepted: two 64-byte accounts and an amount fit
/// many times over, so anything longer is not a payment row.
const CSV_LINE_BYTES_MAX: usize = 4096;

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
/// header, blank lines skipped. Errors name the line. Blocking.
pub fn read_csv(path: &std::path::Path, seed: u64) -> anyhow::Result<Intents> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut input = BufReader::new(file);
    let (mut intents, mut line, mut n) = (IntentsBuilder::default(), Vec::new(), 0usize);
    let mut count = 0usize;
    loop {
        line.clear();
        let limit = CSV_LINE_BYTES_MAX as u64 + 1;
        let read = (&mut input).take(limit).read_until(b'\n', &mut line);
        if read.with_context(|| format!("cannot read {}", path.display()))? == 0 {
            return Ok(intents.finish());
        }
        n += 1;
        let where_ = || format!("{}:{n}", path.display());
        anyhow::ensure!(
            line.len() <= CSV_LINE_BYTES_MAX,
            "{}: a line longer than {CSV_LINE_BYTES_MAX} bytes",
            where_()
        );
        let text = std::str::from_utf8(&line)
            .with_context(|| format!("{}: not UTF-8", where_()))?
            .trim();
        if text.is_empty() || (n == 1 && text.eq_ignore_ascii_case("src,dest,amount")) {
            continue;
        }
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        let [src, dest, amount] = fields[..] else {
            bail!("{}: expected 3 fields src,dest,amount, got {:?}", where_(), text);
        };
        let amount_minor =
            crate::money::parse_minor(amount).map_err(|why| anyhow::anyhow!("{}: bad amount: {why}", where_()))?;
        if count == INTENTS_MAX {
            bail!("{} has more than {INTENTS_MAX} payments", path.display());
        }
        intents.push(count, &key_for(seed, count), src, dest, amount_minor);
        count += 1;
    }
}

/// How each payment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentResult {
    pub index: usize,
    pub confirmed: bool,
    pub attempts: u32,
}

/// What one payment was told over all its attempts, in 8 bytes: the flags
/// in the low bits, the number of attempts in the high 32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PaymentOutcome(u64);

impl PaymentOutcome {
    const OK: u64 = 1;
    const UNKNOWN: u64 = 1 << 1;
    const FAILED: u64 = 1 << 2;
    const FINISHED: u64 = 1 << 3;
    const CONFIRMED: u64 = 1 << 4;
    const FLAGS: u64 = (1 << 5) - 1;
    const ATTEMPTS_SHIFT: u32 = 32;

    /// Attempts made (the highest attempt number seen).
    pub fn attempts(self) -> u32 {
        (self.0 >> Self::ATTEMPTS_SHIFT) as u32
    }

    /// Some attempt got a definitive success.
    pub fn told_ok(self) -> bool {
        self.0 & Self::OK != 0
    }

    /// Some attempt's effect is unknown (no answer after sending).
    pub fn told_unknown(self) -> bool {
        self.0 & Self::UNKNOWN != 0
    }

    /// Some attempt failed definitively.
    pub fn told_failed(self) -> bool {
        self.0 & Self::FAILED != 0
    }

    /// Every attempt failed definitively: the caller was told "it did not happen".
    pub fn only_failed(self) -> bool {
        self.told_failed() && !self.told_ok() && !self.told_unknown()
    }

    /// The payment's retry loop ended (not abandoned by a crash, not left unstarted).
    pub fn finished(self) -> bool {
        self.0 & Self::FINISHED != 0
    }

    /// Finished with a 2xx.
    pub fn confirmed(self) -> bool {
        self.0 & Self::CONFIRMED != 0
    }

    /// With one more attempt, numbered `number`, that ended as `outcome`.
    pub fn with_attempt(self, number: u32, outcome: Outcome) -> PaymentOutcome {
        let flag = match outcome {
            Outcome::Ok => Self::OK,
            Outcome::Unknown => Self::UNKNOWN,
            Outcome::Fail => Self::FAILED,
        };
        let attempts = u64::from(self.attempts().max(number)) << Self::ATTEMPTS_SHIFT;
        PaymentOutcome(attempts | (self.0 & Self::FLAGS) | flag)
    }

    /// With what earlier runs were told about the same payment: a 2xx
    /// (`confirmed`), or possibly sent and landed (unknown).
    pub fn with_earlier(self, confirmed: bool) -> PaymentOutcome {
        PaymentOutcome(self.0 | if confirmed { Self::OK } else { Self::UNKNOWN })
    }

    /// Both together: every flag of either, the larger attempt count.
    pub fn merge(self, other: PaymentOutcome) -> PaymentOutcome {
        let attempts = u64::from(self.attempts().max(other.attempts())) << Self::ATTEMPTS_SHIFT;
        PaymentOutcome(attempts | ((self.0 | other.0) & Self::FLAGS))
    }

    fn finish(self, confirmed: bool) -> PaymentOutcome {
        PaymentOutcome(self.0 | Self::FINISHED | if confirmed { Self::CONFIRMED } else { 0 })
    }
}

/// One [`PaymentOutcome`] per intent sent, by its position in what was sent.
#[derive(Debug, Clone, Default)]
pub struct Outcomes {
    intents: Intents,
    slots: Vec<PaymentOutcome>,
}

impl Outcomes {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// (intent index, outcome) for every intent sent, in the order sent.
    pub fn iter(&self) -> impl Iterator<Item = (usize, PaymentOutcome)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .map(|(at, o)| (self.intents.index(at), *o))
    }

    /// Outcomes of `intents` sent: (position, attempts made, each unknown).
    #[cfg(test)]
    pub(crate) fn for_tests(intents: &Intents, made: &[(usize, u32)]) -> Outcomes {
        let mut slots = vec![PaymentOutcome::default(); intents.len()];
        for &(at, attempts) in made {
            slots[at] = (1..=attempts).fold(slots[at], |o, n| o.with_attempt(n, Outcome::Unknown));
        }
        Outcomes {
            intents: intents.clone(),
            slots,
        }
    }
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
    /// How each finished payment ended, by index (empty with [`Sinks::summary_only`]).
    pub results: Vec<IntentResult>,
    /// Every attempt, by intent index and attempt number (empty with
    /// [`Sinks::summary_only`]: then they went to the history file only).
    pub attempts: Vec<AttemptRecord>,
    /// What each payment sent was told: all the judge needs, 8 bytes each.
    pub outcomes: Outcomes,
    pub summary: Summary,
}

/// Where the run writes as it goes.
#[derive(Default, Clone)]
pub struct Sinks {
    pub history: Option<Arc<HistoryFile>>,
    pub ledger: Option<Arc<Ledger>>,
    /// Draw a progress line on stderr (only if it is a terminal).
    pub progress: bool,
    /// Keep only [`RunReport::outcomes`] and the summary in memory, not every
    /// attempt record (`results` and `attempts` stay empty): what a run of a
    /// million payments needs, with the records streamed to `history`. Off by
    /// default, so small runs (the scenario runner) get every record.
    pub summary_only: bool,
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

/// Attempt counts by kind, kept as the run goes (no record is needed for them).
#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    unknown: AtomicU64,
    connect_errors: AtomicU64,
    resets: AtomicU64,
    timeouts: AtomicU64,
    incomplete: AtomicU64,
    replays_seen: AtomicU64,
    conflicts_409: AtomicU64,
    unavailable_503: AtomicU64,
    refused_4xx: AtomicU64,
}

impl Counters {
    fn count(&self, a: &AttemptRecord) {
        let add = |counter: &AtomicU64, yes: bool| {
            if yes {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        };
        add(&self.attempts, true);
        add(&self.ok, a.outcome == Outcome::Ok);
        add(&self.failed, a.outcome == Outcome::Fail);
        add(&self.unknown, a.outcome == Outcome::Unknown);
        add(&self.connect_errors, a.error == Some(ErrorKind::Connect));
        add(&self.resets, a.error == Some(ErrorKind::Reset));
        add(&self.timeouts, a.error == Some(ErrorKind::Timeout));
        add(
            &self.incomplete,
            matches!(a.error, Some(ErrorKind::Incomplete | ErrorKind::Other)),
        );
        add(&self.replays_seen, a.replayed == Some(true));
        add(&self.conflicts_409, a.status == Some(409));
        add(&self.unavailable_503, a.status == Some(503));
        add(
            &self.refused_4xx,
            a.status
                .is_some_and(|s| (400..500).contains(&s) && s != 409 && s != 429),
        );
    }
}

struct Shared {
    client: reqwest::Client,
    /// Where payments are posted: one URL per target, attempts spread over them.
    urls: Vec<String>,
    options: Options,
    intents: Intents,
    /// A [`PaymentOutcome`] per position, written only by the worker that took it.
    outcomes: Vec<AtomicU64>,
    counters: Counters,
    sinks: Sinks,
    started: Instant,
    /// `started` on the wall clock, in µs since the Unix epoch.
    started_unix_us: u64,
    deadline: Instant,
    next: AtomicUsize,
    finished: AtomicUsize,
    confirmed: AtomicUsize,
    /// Attempts sent so far, numbering request ids (copies of one payment
    /// sent at once share their intent and attempt numbers).
    sent: AtomicU64,
    /// Turns true on a simulated crash, from `Sinks::crash` or the confirmed count.
    crash: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn outcome(&self, at: usize) -> PaymentOutcome {
        PaymentOutcome(self.outcomes[at].load(Ordering::Relaxed))
    }

    fn set_outcome(&self, at: usize, outcome: PaymentOutcome) {
        self.outcomes[at].store(outcome.0, Ordering::Relaxed);
    }
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
/// happened. Takes the intents shared (a `Vec<Intent>` converts), so a caller
/// that judges them afterwards need not hold a second copy.
pub async fn run(
    target: &str,
    intents: impl Into<Intents>,
    options: &Options,
    sinks: Sinks,
) -> anyhow::Result<RunReport> {
    run_spread(&[target.to_owned()], intents, options, sinks).await
}

/// [`run`] over several targets (replicas of one service), as a load balancer
/// without affinity spreads requests: payment `i`'s first attempt goes to
/// target `i mod n`, and each retry to the next target ([`target_of`]).
pub async fn run_spread(
    targets: &[String],
    intents: impl Into<Intents>,
    options: &Options,
    sinks: Sinks,
) -> anyhow::Result<RunReport> {
    let intents = intents.into();
    options.validate().map_err(anyhow::Error::msg)?;
    if targets.is_empty() {
        bail!("no target to send payments to");
    }
    if intents.len() > INTENTS_MAX || intents.refused() > 0 {
        bail!("at most {INTENTS_MAX} payments per run");
    }
    let started = Instant::now();
    let shared = Arc::new(Shared {
        client: http_client(options)?,
        urls: post_urls(targets, &options.request.path),
        options: options.clone(),
        outcomes: (0..intents.len()).map(|_| AtomicU64::new(0)).collect(),
        intents,
        counters: Counters::default(),
        sinks,
        started,
        started_unix_us: unix_us_now(),
        deadline: started + Duration::from_millis(options.deadline_ms),
        next: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        confirmed: AtomicUsize::new(0),
        sent: AtomicU64::new(0),
        crash: tokio::sync::watch::channel(false).0,
    });
    relay_crash(&shared);
    let done = Arc::new(AtomicBool::new(false));
    let progress = (shared.sinks.progress && std::io::stderr().is_terminal())
        .then(|| tokio::spawn(draw_progress(Arc::clone(&shared), Arc::clone(&done))));
    let workers: Vec<_> = (0..options.concurrency.min(shared.intents.len().max(1)))
        .map(|_| tokio::spawn(worker(Arc::clone(&shared))))
        .collect();
    let (mut results, mut attempts) = (Vec::new(), Vec::new());
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
    let outcomes = Outcomes {
        intents: shared.intents.clone(),
        slots: (0..shared.intents.len()).map(|at| shared.outcome(at)).collect(),
    };
    let summary = summarize(&shared.counters, &outcomes.slots, started.elapsed());
    Ok(RunReport {
        stopped: stopping(&shared),
        crashed,
        results,
        attempts,
        outcomes,
        summary,
    })
}

/// `url` (the payment path, as configured) with `suffix` (`/batch`) after it.
fn with_suffix(url: &str, suffix: &str) -> String {
    if suffix.is_empty() {
        return url.to_owned();
    }
    format!("{}{suffix}", url.trim_end_matches('/'))
}

/// Where payments are posted on each target.
fn post_urls(targets: &[String], path: &str) -> Vec<String> {
    let url = |target: &String| format!("{}{path}", target.trim_end_matches('/'));
    targets.iter().map(url).collect()
}

/// Turns an external crash signal ([`Sinks::crash`]) into the run's own.
fn relay_crash(shared: &Arc<Shared>) {
    if let Some(mut external) = shared.sinks.crash.clone() {
        let relay = Arc::clone(shared);
        tokio::spawn(async move {
            if external.wait_for(|crashed| *crashed).await.is_ok() {
                relay.crash.send_replace(true);
            }
        });
    }
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
    let group = shared.options.batch.map_or(1, |b| b.size);
    loop {
        let first = shared.next.fetch_add(group, Ordering::Relaxed);
        let end = first.saturating_add(group).min(shared.intents.len());
        if first >= end {
            break;
        }
        for unit in units(&shared, first..end) {
            let mut crash = shared.crash.subscribe();
            if *crash.borrow() || stopping(&shared) {
                return (results, records);
            }
            let result = tokio::select! {
                result = pay(&shared, &unit, &mut records) => result,
                _ = crash.wait_for(|crashed| *crashed) => return (results, records),
            };
            for (&at, intent) in unit.positions.iter().zip(&unit.intents) {
                if !finish(&shared, at, intent, &result).await {
                    return (results, records);
                }
                if !shared.sinks.summary_only {
                    results.push(IntentResult {
                        index: intent.index,
                        ..result.clone()
                    });
                }
            }
        }
    }
    (results, records)
}

/// Records a finished payment (confirmed count, ledger, outcome); false when
/// the run's crash point was reached, before it was recorded as done.
async fn finish(shared: &Shared, at: usize, intent: &Intent, result: &IntentResult) -> bool {
    if result.confirmed {
        let confirmed = shared.confirmed.fetch_add(1, Ordering::Relaxed) + 1;
        if shared.sinks.crash_after_confirmed == Some(confirmed) {
            shared.crash.send_replace(true);
            return false;
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
    shared.set_outcome(at, shared.outcome(at).finish(result.confirmed));
    shared.finished.fetch_add(1, Ordering::Relaxed);
    true
}

/// What one retry loop sends: one payment, or a batch under one key.
struct Unit {
    positions: Vec<usize>,
    intents: Vec<Intent>,
    /// `Some((key, body))` for a `POST /payments/batch`.
    batch: Option<(String, String)>,
}

/// The retry loops for the positions `range`: one per payment, or one for
/// the whole range when it is a batch with derived keys. A shared-key batch
/// is sent item after item, in order, by this one worker, so which item gets
/// the key does not depend on timing.
fn units(shared: &Shared, range: std::ops::Range<usize>) -> Vec<Unit> {
    let intents: Vec<Intent> = range.clone().filter_map(|at| shared.intents.get(at)).collect();
    let derived = shared
        .options
        .batch
        .is_some_and(|b| b.keys == crate::batch::BatchKeys::Derived);
    if derived && let Some((key, body)) = crate::batch::request(&intents, shared.options.request.amount) {
        return vec![Unit {
            positions: range.collect(),
            intents,
            batch: Some((key, body)),
        }];
    }
    range
        .zip(intents)
        .map(|(at, intent)| Unit {
            positions: vec![at],
            intents: vec![intent],
            batch: None,
        })
        .collect()
}

/// The retry loop of one unit (a payment or a batch).
async fn pay(shared: &Shared, unit: &Unit, records: &mut Vec<AttemptRecord>) -> IntentResult {
    let options = &shared.options;
    let lead = &unit.intents[0];
    let mut rng = backoff::stream(options.seed, lead.index as u64);
    let single = request_body(lead, options.request.amount);
    // A batch goes to the payment path's `/batch` on whichever target.
    let (suffix, body) = match &unit.batch {
        Some((_, body)) => ("/batch", body.as_str()),
        None => ("", single.as_str()),
    };
    let ended = |confirmed, attempts| IntentResult {
        index: lead.index,
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
        let key = match (&unit.batch, options.key) {
            (Some((key, _)), _) => Some(key.clone()),
            (None, KeyStrategy::PerPayment) => Some(lead.key.clone()),
            (None, KeyStrategy::PerAttempt) => Some(format!("{}-a{attempt}", lead.key)),
            (None, KeyStrategy::None) => None,
        };
        let timeout = Duration::from_millis(options.attempt_timeout_ms).min(shared.deadline - now);
        let (record, next) = send(shared, suffix, lead.index, attempt, key, body, timeout).await;
        record_unit(shared, unit, record, records).await;
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
        let wait = eo_core::retry::wait(retry_after, jitter);
        if Instant::now() + wait >= shared.deadline {
            return ended(false, attempt);
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Records an attempt for every payment of the unit: a batch's attempt is
/// each item's attempt, under the item's own key (what the service stores).
async fn record_unit(shared: &Shared, unit: &Unit, record: AttemptRecord, records: &mut Vec<AttemptRecord>) {
    if unit.batch.is_none() {
        return record_attempt(shared, unit.positions[0], record, records).await;
    }
    for (&at, intent) in unit.positions.iter().zip(&unit.intents) {
        let item = AttemptRecord {
            intent: intent.index,
            key: Some(intent.key.clone()),
            ..record.clone()
        };
        record_attempt(shared, at, item, records).await;
    }
}

/// The JSON body of an intent, with the amount as a string (`"1.00"`) or a
/// number written with two decimals (`1.00`): digits, never a float.
pub(crate) fn request_body(intent: &Intent, style: AmountStyle) -> String {
    let amount = crate::money::format_minor(intent.amount_minor);
    let amount = match style {
        AmountStyle::String => format!("\"{amount}\""),
        AmountStyle::Number => amount,
    };
    // Serializing a plain string cannot fail.
    let text = |s: &str| serde_json::to_string(s).unwrap_or_default();
    format!(
        r#"{{"src":{},"dest":{},"amount":{amount}}}"#,
        text(&intent.src),
        text(&intent.dest)
    )
}

/// Counts an attempt into the payment's outcome and the run's counters,
/// writes it to the history file and the debug log, and keeps it unless
/// only a summary is wanted.
async fn record_attempt(shared: &Shared, at: usize, record: AttemptRecord, records: &mut Vec<AttemptRecord>) {
    shared.set_outcome(at, shared.outcome(at).with_attempt(record.attempt, record.outcome));
    shared.counters.count(&record);
    if let Some(history) = &shared.sinks.history
        && let Err(e) = history.append(&record).await
    {
        tracing::warn!(error = %e, "cannot write the history file");
    }
    tracing::debug!(intent = record.intent, attempt = record.attempt, outcome = ?record.outcome, status = ?record.status, error = ?record.error, "attempt");
    if !shared.sinks.summary_only {
        records.push(record);
    }
}
/// What one attempt got: (outcome, status, error, replayed, next step).
type Answer = (Outcome, Option<u16>, Option<ErrorKind>, Option<bool>, Next);

/// One attempt, with its result classified.
async fn send(
    shared: &Shared,
    suffix: &str,
    intent: usize,
    attempt: u32,
    key: Option<String>,
    body: &str,
    timeout: Duration,
) -> (AttemptRecord, Next) {
    let start_us = shared.started.elapsed().as_micros() as u64;
    let mut request = shared
        .client
        .post(with_suffix(
            &shared.urls[target_of(intent, attempt, shared.urls.len())],
            suffix,
        ))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .timeout(timeout);
    if shared.options.connection == ConnectionMode::Fresh {
        request = request.header(reqwest::header::CONNECTION, "close");
    }
    if let Some(key) = &key {
        request = request.header(shared.options.request.key_header.as_str(), key.as_str());
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

/// Which of `targets` attempt `attempt` (from 1) of payment `intent` goes to:
/// the payments' first attempts round-robin, and a retry moves on to the next
/// target, so with two or more targets a retry never reaches the replica
/// that lost the previous attempt's answer.
pub fn target_of(intent: usize, attempt: u32, targets: usize) -> usize {
    let step = attempt.saturating_sub(1) as usize;
    intent.wrapping_add(step) % targets.max(1)
}

pub use eo_core::wire::{REQUEST_ID as REQUEST_ID_HEADER, unix_us_now};

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
        let attempts = shared.counters.attempts.load(Ordering::Relaxed);
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

fn summarize(c: &Counters, outcomes: &[PaymentOutcome], elapsed: Duration) -> Summary {
    let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let finished = outcomes.iter().filter(|o| o.finished()).count() as u64;
    let confirmed = outcomes.iter().filter(|o| o.confirmed()).count() as u64;
    let attempts = get(&c.attempts);
    Summary {
        intents: finished,
        confirmed,
        given_up: finished - confirmed,
        attempts,
        ok: get(&c.ok),
        failed: get(&c.failed),
        unknown: get(&c.unknown),
        connect_errors: get(&c.connect_errors),
        resets: get(&c.resets),
        timeouts: get(&c.timeouts),
        incomplete: get(&c.incomplete),
        replays_seen: get(&c.replays_seen),
        conflicts_409: get(&c.conflicts_409),
        unavailable_503: get(&c.unavailable_503),
        refused_4xx: get(&c.refused_4xx),
        elapsed_ms: elapsed.as_millis() as u64,
        attempts_per_s: (attempts as f64 / elapsed.as_secs_f64().max(1e-9)) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_attempts_round_robin_and_each_retry_moves_to_the_next_target() {
        let firsts: Vec<usize> = (0..5).map(|i| target_of(i, 1, 3)).collect();
        assert_eq!(firsts, vec![0, 1, 2, 0, 1]);
        let retries: Vec<usize> = (1..=4).map(|a| target_of(1, a, 3)).collect();
        assert_eq!(retries, vec![1, 2, 0, 1]);
        assert!((1..10).all(|a| target_of(7, a, 1) == 0), "one target: always it");
    }

    #[test]
    fn bodies_carry_the_amount_as_a_string_or_as_a_number() {
        let intent = &repeat(1, "bi\"anca", "marc", 1250, 1)[0];
        assert_eq!(
            request_body(intent, AmountStyle::String),
            r#"{"src":"bi\"anca","dest":"marc","amount":"12.50"}"#
        );
        assert_eq!(
            request_body(intent, AmountStyle::Number),
            r#"{"src":"bi\"anca","dest":"marc","amount":12.50}"#
        );
    }

    #[test]
    fn reads_the_workshop_csv_with_or_without_header() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("payments.csv");
        std::fs::write(&path, "src,dest,amount\nbianca,marc,1\n\nalice, bob ,12.50\n\n\n").expect("write");
        let intents = read_csv(&path, 3).expect("parses");
        assert_eq!(intents.len(), 2);
        let second = intents.get(1).expect("two");
        assert_eq!(
            (
                second.src.as_str(),
                second.dest.as_str(),
                second.amount_minor,
                second.index
            ),
            ("alice", "bob", 1250, 1)
        );
        assert_eq!(intents.key(0), key_for(3, 0));
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
        std::fs::write(&path, format!("bianca,marc,1\n{}\n", "x".repeat(CSV_LINE_BYTES_MAX))).expect("write");
        assert!(format!("{:#}", read_csv(&path, 3).expect_err("long")).contains(":2: a line longer"));
    }

    #[test]
    fn an_outcome_keeps_every_flag_and_the_attempt_count() {
        let o = PaymentOutcome::default()
            .with_attempt(1, Outcome::Fail)
            .with_attempt(2, Outcome::Fail);
        assert_eq!((o.attempts(), o.only_failed(), o.finished()), (2, true, false));
        let o = o.with_attempt(3, Outcome::Unknown).finish(false);
        assert!(o.told_unknown() && !o.only_failed() && o.finished() && !o.confirmed());
        let both = o.merge(PaymentOutcome::default().with_attempt(7, Outcome::Ok).finish(true));
        assert_eq!((both.attempts(), both.told_ok(), both.confirmed()), (7, true, true));
        assert!(PaymentOutcome::default().with_earlier(false).told_unknown());
    }
}
