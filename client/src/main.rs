//! The `client` binary: `client pay` sends payments and reconciles them;
//! `client resume` finishes the payments of a ledger after a crash.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use client::history::HistoryFile;
use client::ledger::Ledger;
use client::reconcile::{self, Verdict};
use client::runner::{self, Intent, Sinks};
use client::strategy::{Backoff, ConnectionMode, KeyStrategy, Options, Retries};
use tracing_subscriber::EnvFilter;

/// A retrying payment client: one idempotency key per payment, reused on every
/// retry, so a deduplicating service pays each exactly once. The classic
/// mistakes (no retry, no key, a new key per retry) are one flag away, and
/// every run ends with a per-key check against the service's ledger.
#[derive(Parser)]
#[command(
    version,
    after_help = "Logs: set RUST_LOG (e.g. RUST_LOG=client=debug shows every attempt)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send payments, then reconcile them with the service and print a verdict
    Pay(PayArgs),
    /// Finish the unfinished payments of a ledger with their original keys
    Resume(ResumeArgs),
}

#[derive(Args)]
struct PayArgs {
    /// How many payments to make (ignored with --csv)
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Amount of each payment, e.g. 1 or 12.50
    #[arg(long, default_value = "1.00", value_parser = client::money::parse_minor)]
    amount: i64,
    /// Account paying
    #[arg(long, default_value = "bianca")]
    src: String,
    /// Account paid
    #[arg(long, default_value = "marc")]
    dest: String,
    /// Read payments from a CSV file of src,dest,amount rows (the workshop's payments.csv)
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Write each payment's intent here (synced) before sending, so `client resume` can finish it
    #[arg(long, value_name = "FILE")]
    ledger: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct ResumeArgs {
    /// The ledger written by an interrupted `client pay --ledger FILE`
    #[arg(long, value_name = "FILE")]
    ledger: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct CommonArgs {
    /// Where payments are sent (by default through the chaos proxy)
    #[arg(long, default_value = "http://127.0.0.1:8888")]
    target: String,
    /// The service itself, read directly for reconciliation
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    service: String,
    /// Idempotency keys: per-payment (correct), per-attempt or none (the lessons' mistakes)
    #[arg(long, value_enum, default_value_t = KeyStrategy::PerPayment)]
    key: KeyStrategy,
    /// Retries after the first attempt: a number (0 = never retry) or `unlimited`
    #[arg(long, default_value = "unlimited")]
    retries: Retries,
    /// Wait before a retry: full-jitter (random up to base × 2^n, capped) or none
    #[arg(long, value_enum, default_value_t = Backoff::FullJitter)]
    backoff: Backoff,
    /// Backoff base in ms
    #[arg(long, default_value_t = 10, value_name = "MS")]
    backoff_base_ms: u64,
    /// Backoff cap in ms
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    backoff_cap_ms: u64,
    /// Give up on an attempt after this many ms without an answer (its outcome is then unknown)
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    attempt_timeout_ms: u64,
    /// Stop starting attempts after this many ms for the whole run
    #[arg(long, default_value_t = 300_000, value_name = "MS")]
    deadline_ms: u64,
    /// Payments in flight at once
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// fresh: a new TCP connection per attempt (per-connection faults hit every attempt); reuse: keep-alive
    #[arg(long, value_enum, default_value_t = ConnectionMode::Fresh)]
    connection: ConnectionMode,
    /// Seed for keys and jitter (random if not given; printed so a run can be replayed)
    #[arg(long)]
    seed: Option<u64>,
    /// Write one JSON line per attempt to this file
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
    /// Print the summary and reconciliation as JSON on stdout
    #[arg(long)]
    json: bool,
    /// Exit with status 1 unless the verdict is this one
    #[arg(long, value_enum)]
    expect: Option<Verdict>,
}

impl CommonArgs {
    fn options(&self) -> Options {
        let seed = self.seed.unwrap_or_else(random_seed);
        let mut o = Options::new(seed);
        o.key = self.key;
        o.retries = self.retries;
        o.backoff = self.backoff;
        o.backoff_base_ms = self.backoff_base_ms;
        o.backoff_cap_ms = self.backoff_cap_ms;
        o.attempt_timeout_ms = self.attempt_timeout_ms;
        o.deadline_ms = self.deadline_ms;
        o.concurrency = self.concurrency;
        o.connection = self.connection;
        o
    }
}

fn random_seed() -> u64 {
    rand::random::<u64>() >> 16
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("client=warn")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("client: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(async {
        match cli.command {
            Command::Pay(args) => pay(args).await,
            Command::Resume(args) => resume(args).await,
        }
    }) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("client: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn pay(args: PayArgs) -> anyhow::Result<bool> {
    let options = args.common.options();
    options.validate().map_err(anyhow::Error::msg)?;
    let intents = match &args.csv {
        Some(path) => runner::read_csv(path, options.seed)?,
        None => {
            anyhow::ensure!(
                args.count <= runner::INTENTS_MAX,
                "--count must be at most {}",
                runner::INTENTS_MAX
            );
            runner::repeat(args.count, &args.src, &args.dest, args.amount, options.seed)
        }
    };
    let ledger = match &args.ledger {
        Some(path) => Some(Arc::new(Ledger::create(path, &intents)?)),
        None => None,
    };
    play(
        &args.common,
        options,
        intents.clone(),
        intents,
        ledger,
        args.ledger.as_deref(),
    )
    .await
}

async fn resume(args: ResumeArgs) -> anyhow::Result<bool> {
    let options = args.common.options();
    anyhow::ensure!(
        options.key == KeyStrategy::PerPayment,
        "resume needs --key per-payment: only the original keys let the service recognise payments made before the crash"
    );
    let (ledger, intents, confirmed) = Ledger::open(&args.ledger)?;
    let unfinished: Vec<Intent> = intents
        .iter()
        .filter(|i| !confirmed.contains(&i.key))
        .cloned()
        .collect();
    eprintln!(
        "resuming {}: {} payments, {} confirmed before, {} to finish",
        args.ledger.display(),
        intents.len(),
        confirmed.len(),
        unfinished.len()
    );
    play(
        &args.common,
        options,
        unfinished,
        intents,
        Some(Arc::new(ledger)),
        Some(&args.ledger),
    )
    .await
}

/// Sends `to_send`, then reconciles all of `intents` (the whole ledger on resume).
async fn play(
    common: &CommonArgs,
    options: Options,
    to_send: Vec<Intent>,
    intents: Vec<Intent>,
    ledger: Option<Arc<Ledger>>,
    ledger_path: Option<&std::path::Path>,
) -> anyhow::Result<bool> {
    let resumed = to_send.len() != intents.len();
    let after_id = if resumed {
        0
    } else {
        reconcile::baseline(&common.service).await?
    };
    let history = match &common.history {
        Some(path) => Some(Arc::new(
            HistoryFile::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => None,
    };
    if !common.json {
        eprintln!(
            "client: {} payments to {} (seed {}; reproduce with --seed {})",
            to_send.len(),
            common.target,
            options.seed,
            options.seed
        );
    }
    // Ctrl-C winds the run down: attempts in flight finish, nothing new starts.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nclient: stopping: letting attempts in flight finish (Ctrl-C again to quit at once)");
            stop_tx.send_replace(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let sinks = Sinks {
        history,
        ledger,
        progress: !common.json,
        stop: Some(stop_rx),
        ..Sinks::default()
    };
    let to_send_count = to_send.len();
    let report = runner::run(&common.target, to_send, &options, sinks).await?;
    if report.stopped {
        let confirmed = report.summary.confirmed as usize;
        eprintln!(
            "client: interrupted: {confirmed} confirmed, {} unfinished",
            to_send_count - confirmed
        );
        match ledger_path {
            Some(path) => eprintln!("client: finish them with: client resume --ledger {}", path.display()),
            None => eprintln!("client: without --ledger the unfinished payments cannot be resumed with their keys"),
        }
        return Ok(false);
    }
    let reconciliation =
        reconcile::reconcile(&common.service, after_id, &intents, &report.attempts, options.key).await?;
    if common.json {
        let out = serde_json::json!({
            "seed": options.seed,
            "summary": report.summary,
            "reconciliation": reconciliation,
        });
        println!("{out}");
    } else {
        print!("{}", client::report::render(&options, &report.summary, &reconciliation));
    }
    Ok(match common.expect {
        Some(expected) if expected != reconciliation.verdict => {
            eprintln!(
                "client: expected {}, got {}",
                expected.headline(),
                reconciliation.verdict.headline()
            );
            false
        }
        _ => true,
    })
}
