//! `client pay` and `client resume` from start to verdict, as library calls:
//! the binary only parses flags and calls these, and the scenario runner uses
//! the same pieces (ledger creation and resume, the judge).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::watch;

use crate::history::HistoryFile;
use crate::intents::Intents;
use crate::ledger::{Ledger, Meta, Opened};
use crate::receipts::{ReceiptOutcome, ReceiptVerdict};
use crate::reconcile::{self, Attempts, Evidence, Mode, Reconciliation, Verdict};
use crate::runner::{self, Summary};
use crate::service::{Inconclusive, ServiceReader};
use crate::strategy::{KeyStrategy, Options};

/// Exit status: a verdict was reached (and is the `--expect`ed one, if given).
pub const EXIT_OK: u8 = 0;
/// Exit status: the verdict differs from `--expect`.
pub const EXIT_UNEXPECTED_VERDICT: u8 = 1;
/// Exit status: bad flags or a failure before or while sending (a refused
/// ledger, an unreachable service at the start, a file that cannot be written).
pub const EXIT_ERROR: u8 = 2;
/// Exit status: the judge could not read what it needed: no verdict.
pub const EXIT_INCONCLUSIVE: u8 = 3;
/// Exit status: stopped by Ctrl-C before the end (finish with `client resume`).
pub const EXIT_INTERRUPTED: u8 = 130;

/// The exit statuses, for `--help` and the README.
pub const EXIT_CODES_HELP: &str = "Exit status: 0 a verdict (the --expect-ed one, if given); 1 the verdict differs from \
--expect; 2 bad flags or a failure before the verdict (e.g. a refused ledger); 3 INCONCLUSIVE: the service \
could not be read completely, so there is no verdict; 130 interrupted by Ctrl-C.";

/// How long the service's starting point may take to read before anything
/// is sent: a few dozen one-row pages, each an index seek, whatever the
/// ledger's size.
const BASELINE_DEADLINE_MS: u64 = 10_000;

/// Everything a run needs besides its payments.
pub struct Settings {
    /// Where payments are sent (`http://host:port`): one, or several replicas
    /// that attempts are spread over (a retry goes to the next).
    pub targets: Vec<String>,
    /// The service itself, read for the baseline and the reconciliation.
    pub service: String,
    pub options: Options,
    /// One JSON line per attempt, if set.
    pub history: Option<PathBuf>,
    /// A progress line on stderr (when it is a terminal), and the opening line.
    pub progress: bool,
    /// Time the judge may spend reading the service, retries included.
    pub reconcile_deadline: Duration,
    /// Turns true to wind the run down (Ctrl-C).
    pub stop: Option<watch::Receiver<bool>>,
    /// The receipts service (`http://host:port`) of the second hop, to judge
    /// too: every payment of the run must have exactly one receipt.
    pub receipts: Option<String>,
}

/// How a run ended.
pub enum Ending {
    /// Stopped before the end: no judgement.
    Interrupted {
        confirmed: u64,
        unfinished: u64,
        ledger: Option<PathBuf>,
    },
    Judged(Box<Judged>),
}

pub struct Judged {
    pub summary: Summary,
    /// A verdict from a complete reading, or why there is none.
    pub judgement: Result<Reconciliation, Inconclusive>,
    pub reading: Reading,
    /// The second hop's verdict, when a receipts service was given.
    pub receipts: Option<ReceiptVerdict>,
}

/// What reading the service for the judgement cost.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Reading {
    pub requests: u64,
    pub ms: u64,
}

/// The payments of `client pay`: `--csv FILE` rows, or `count` copies.
pub async fn intents(
    csv: Option<&Path>,
    count: usize,
    src: &str,
    dest: &str,
    amount_minor: i64,
    seed: u64,
) -> anyhow::Result<Intents> {
    match csv {
        Some(path) => {
            let path = path.to_owned();
            tokio::task::spawn_blocking(move || runner::read_csv(&path, seed)).await?
        }
        None => {
            anyhow::ensure!(
                count <= runner::INTENTS_MAX,
                "--count must be at most {}",
                runner::INTENTS_MAX
            );
            Ok(Intents::repeat(count, src, dest, amount_minor, seed))
        }
    }
}

/// `client pay`: note where the service's ledger stands, write the intents
/// to `ledger` (if given) before the first attempt, send, judge.
pub async fn pay(settings: &Settings, intents: Intents, ledger: Option<&Path>) -> anyhow::Result<Ending> {
    settings.options.validate().map_err(anyhow::Error::msg)?;
    // Batched: each intent's key is what the service stores it under.
    let intents = match settings.options.batch {
        Some(batch) => crate::batch::rekey(&intents, batch),
        None => intents,
    };
    let baseline_id = baseline(&settings.service).await?;
    let (ledger, intents) = match ledger {
        Some(path) => {
            let meta = Meta {
                baseline_id,
                seed: settings.options.seed,
            };
            let (ledger, intents) = create_ledger(path, intents, meta).await?;
            (Some((Arc::new(ledger), path.to_owned())), intents)
        }
        None => (None, intents),
    };
    execute(settings, intents.clone(), &intents, Mode::Fresh { baseline_id }, ledger).await
}

/// `client resume`: finish the unfinished payments of a ledger with their
/// own keys, then judge the whole ledger.
pub async fn resume(settings: &Settings, path: &Path) -> anyhow::Result<Ending> {
    anyhow::ensure!(
        settings.options.key == KeyStrategy::PerPayment,
        "resume needs --key per-payment: only the original keys let the service recognise payments made before the crash"
    );
    settings.options.validate().map_err(anyhow::Error::msg)?;
    let opened = open_ledger(path).await?;
    let to_send = opened.unfinished();
    eprintln!(
        "resuming {}: {} payments, {} confirmed before, {} to finish",
        path.display(),
        opened.intents.len(),
        opened.confirmed.len(),
        to_send.len()
    );
    let mode = Mode::Resume {
        baseline_id: opened.meta.baseline_id,
        confirmed_before: opened.confirmed,
    };
    let ledger = Some((Arc::new(opened.ledger), path.to_owned()));
    execute(settings, to_send, &opened.intents, mode, ledger).await
}

/// The service's last payment id now: every payment sent after this has a
/// higher one. Read before anything is sent, so failing here costs nothing.
/// Found with one-row pages of `GET /payments` (each an index seek), not
/// `/stats`, whose figures may cost the service a scan of its whole ledger:
/// sending never waits for that.
pub async fn baseline(service: &str) -> anyhow::Result<i64> {
    let reader = ServiceReader::new(service, Duration::from_millis(BASELINE_DEADLINE_MS))?;
    reader.last_id(0, 0).await.with_context(|| {
        format!(
            "cannot read where the service's ledger stands before sending (is {service} the payment service? --service)"
        )
    })
}

/// Creates a ledger off the async workers (it fsyncs), giving `intents` back.
pub async fn create_ledger(path: &Path, intents: impl Into<Intents>, meta: Meta) -> anyhow::Result<(Ledger, Intents)> {
    let (path, intents) = (path.to_owned(), intents.into());
    tokio::task::spawn_blocking(move || Ledger::create(&path, &intents, meta).map(|ledger| (ledger, intents))).await?
}

/// Opens a ledger off the async workers, and says on stderr if a torn last
/// line had to be cut off.
pub async fn open_ledger(path: &Path) -> anyhow::Result<Opened> {
    let owned = path.to_owned();
    let opened = tokio::task::spawn_blocking(move || Ledger::open(&owned)).await??;
    if let Some(bytes) = opened.repaired_bytes {
        eprintln!(
            "client: {}: removed a torn last line ({bytes} bytes): an earlier run was killed while recording a \
             finished payment; that payment is retried with its key, which replays it",
            path.display()
        );
    }
    Ok(opened)
}

/// Sends `to_send`, then judges all of `intents` (the whole ledger on resume).
async fn execute(
    settings: &Settings,
    to_send: Intents,
    intents: &Intents,
    mode: Mode,
    ledger: Option<(Arc<Ledger>, PathBuf)>,
) -> anyhow::Result<Ending> {
    let history = match settings.history.clone() {
        Some(path) => Some(Arc::new(
            tokio::task::spawn_blocking(move || {
                HistoryFile::create(&path).with_context(|| format!("cannot create {}", path.display()))
            })
            .await??,
        )),
        None => None,
    };
    let options = &settings.options;
    if settings.progress {
        eprintln!(
            "client: {} payments to {} (seed {}; reproduce with --seed {})",
            to_send.len(),
            settings.targets.join(","),
            options.seed,
            options.seed
        );
    }
    let sinks = runner::Sinks {
        history,
        ledger: ledger.as_ref().map(|(ledger, _)| Arc::clone(ledger)),
        progress: settings.progress,
        summary_only: true,
        stop: settings.stop.clone(),
        ..runner::Sinks::default()
    };
    let sent = to_send.len() as u64;
    let report = runner::run_spread(&settings.targets, to_send, options, sinks).await?;
    if report.stopped {
        return Ok(Ending::Interrupted {
            confirmed: report.summary.confirmed,
            unfinished: sent - report.summary.confirmed,
            ledger: ledger.map(|(_, path)| path),
        });
    }
    let evidence = Evidence {
        intents,
        attempts: Attempts::Outcomes(&report.outcomes),
        strategy: options.key,
        mode: &mode,
    };
    let (judgement, reading) = judge(&settings.service, settings.reconcile_deadline, &evidence).await;
    let receipts = match &settings.receipts {
        Some(url) => {
            let deadline = settings.reconcile_deadline;
            Some(crate::receipts::check_run(&settings.service, url, mode.baseline_id(), deadline).await)
        }
        None => None,
    };
    Ok(Ending::Judged(Box::new(Judged {
        summary: report.summary,
        judgement,
        reading,
        receipts,
    })))
}

/// Reconciles `evidence` with the service within `deadline`; never fails:
/// what cannot be read makes the judgement inconclusive.
pub async fn judge(
    service: &str,
    deadline: Duration,
    evidence: &Evidence<'_>,
) -> (Result<Reconciliation, Inconclusive>, Reading) {
    let started = Instant::now();
    let reader = match ServiceReader::new(service, deadline) {
        Ok(reader) => Arc::new(reader),
        Err(e) => {
            return (
                Err(Inconclusive {
                    reason: format!("{e:#}"),
                }),
                Reading { requests: 0, ms: 0 },
            );
        }
    };
    let judgement = reconcile::reconcile(&reader, evidence).await;
    let reading = Reading {
        requests: reader.requests(),
        ms: started.elapsed().as_millis() as u64,
    };
    (judgement, reading)
}

/// Winds a run down on Ctrl-C (attempts in flight finish, nothing new
/// starts); a second Ctrl-C quits at once.
pub fn stop_on_ctrl_c() -> watch::Receiver<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nclient: stopping: letting attempts in flight finish (Ctrl-C again to quit at once)");
            stop_tx.send_replace(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
        }
    });
    stop_rx
}

/// Prints how the run ended (stdout: the report or JSON; stderr: what to do
/// next) and returns the exit status.
pub fn conclude(ending: &Ending, options: &Options, json: bool, expect: Expect) -> u8 {
    let judged = match ending {
        Ending::Interrupted {
            confirmed,
            unfinished,
            ledger,
        } => {
            eprintln!("client: interrupted: {confirmed} confirmed, {unfinished} unfinished");
            match ledger {
                Some(path) => eprintln!("client: finish them with: client resume --ledger {}", path.display()),
                None => eprintln!("client: without --ledger the unfinished payments cannot be resumed with their keys"),
            }
            return EXIT_INTERRUPTED;
        }
        Ending::Judged(judged) => judged,
    };
    if json {
        println!("{}", json_report(judged, options.seed));
    } else {
        print!("{}", crate::report::render(options, judged));
    }
    let first = match (&judged.judgement, expect.payments) {
        (Err(why), _) => {
            eprintln!("client: INCONCLUSIVE: {why}");
            EXIT_INCONCLUSIVE
        }
        (Ok(r), Some(expected)) if r.verdict != expected => {
            eprintln!("client: expected {}, got {}", expected.headline(), r.verdict.headline());
            EXIT_UNEXPECTED_VERDICT
        }
        (Ok(_), _) => EXIT_OK,
    };
    first.max(second_hop_status(judged.receipts.as_ref(), expect.receipts))
}

/// The verdicts a run is expected to reach (`--expect`, `--expect-receipts`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect {
    pub payments: Option<Verdict>,
    pub receipts: Option<ReceiptOutcome>,
}

/// The exit status the second hop's verdict asks for (0 without one).
fn second_hop_status(verdict: Option<&ReceiptVerdict>, expected: Option<ReceiptOutcome>) -> u8 {
    let Some(verdict) = verdict else { return EXIT_OK };
    match expected {
        _ if verdict.outcome == ReceiptOutcome::Inconclusive => {
            eprintln!("client: {verdict}");
            EXIT_INCONCLUSIVE
        }
        Some(expected) if verdict.outcome != expected => {
            eprintln!("client: expected receipts {expected:?}, got {verdict}");
            EXIT_UNEXPECTED_VERDICT
        }
        _ => EXIT_OK,
    }
}

fn json_report(judged: &Judged, seed: u64) -> serde_json::Value {
    let (verdict, reconciliation, inconclusive) = match &judged.judgement {
        Ok(r) => (serde_json::to_value(r.verdict).unwrap_or_default(), Some(r), None),
        Err(why) => (serde_json::Value::from("inconclusive"), None, Some(why.reason.as_str())),
    };
    serde_json::json!({
        "seed": seed,
        "summary": judged.summary,
        "verdict": verdict,
        "reconciliation": reconciliation,
        "inconclusive": inconclusive,
        "reading": judged.reading,
        "receipts": judged.receipts,
    })
}
