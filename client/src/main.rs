//! The `client` binary: flags, then the library's flow (`client::flow`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use client::batch::{Batch, BatchKeys};
use client::flow::{self, EXIT_CODES_HELP, EXIT_ERROR, Settings};
use client::receipts::ReceiptOutcome;
use client::reconcile::Verdict;
use client::service::{RECONCILE_DEADLINE_MS_DEFAULT, parse_http_url};

/// The `--target` list, checked at start.
#[derive(Clone)]
struct Targets(Vec<String>);

fn parse_http_urls(text: &str) -> Result<Targets, String> {
    client::service::parse_http_urls(text).map(Targets)
}
use client::strategy::{Backoff, ConnectionMode, DEADLINE_MS_MAX, KeyStrategy, Options, Retries};

/// A retrying payment client: one idempotency key per payment, reused on every
/// retry, so a deduplicating service pays each exactly once. The classic
/// mistakes (no retry, no key, a new key per retry) are one flag away, and
/// every run ends with a per-key check against the service's ledger.
#[derive(Parser)]
#[command(
    version,
    after_help = format!("{EXIT_CODES_HELP}\nLogs: set RUST_LOG (e.g. RUST_LOG=client=debug shows every attempt).")
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send payments, then reconcile them with the service and print a verdict
    #[command(after_help = EXIT_CODES_HELP)]
    Pay(PayArgs),
    /// Finish the unfinished payments of a ledger with their original keys
    #[command(after_help = EXIT_CODES_HELP)]
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
    /// Write each payment's intent here (complete and synced, or not at all) before sending,
    /// so `client resume` can finish it
    #[arg(long, value_name = "FILE")]
    ledger: Option<PathBuf>,
    /// Send payments N at a time as one batch under one key (POST /payments/batch; each item's
    /// key is KEY:ITEM_ID); 2 to 100
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// derived: one batch request, a key per item (KEY:ITEM_ID); shared: the mistake, every item
    /// sent on its own under the batch's one key (the first is paid, the others refused with 422)
    #[arg(long, value_enum, default_value_t = BatchKeys::Derived, requires = "batch")]
    batch_keys: BatchKeys,
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
    /// Where payments are sent (by default through the chaos proxy); several URLs separated by
    /// commas spread the attempts over replicas, a retry going to the next one
    #[arg(long, default_value = "http://127.0.0.1:8888", value_parser = parse_http_urls, value_name = "URL[,URL...]")]
    target: Targets,
    /// The service itself, read directly for reconciliation
    #[arg(long, default_value = "http://127.0.0.1:8080", value_parser = parse_http_url)]
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
    /// Time the reconciliation may spend reading the service, retries included; past it the
    /// outcome is INCONCLUSIVE
    #[arg(long, default_value_t = RECONCILE_DEADLINE_MS_DEFAULT, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=DEADLINE_MS_MAX))]
    reconcile_deadline_ms: u64,
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
    /// The receipts service of the second hop (http://host:port): after the payments' verdict,
    /// wait for the payment service's outbox to drain and check that every payment of the run
    /// has exactly one receipt
    #[arg(long, value_name = "URL", value_parser = parse_http_url)]
    receipts: Option<String>,
    /// Exit with status 1 unless the receipts' verdict is this one
    #[arg(long, value_enum, requires = "receipts")]
    expect_receipts: Option<ReceiptOutcome>,
}

impl CommonArgs {
    fn expect(&self) -> flow::Expect {
        flow::Expect {
            payments: self.expect,
            receipts: self.expect_receipts,
        }
    }

    fn settings(&self) -> Settings {
        let mut o = Options::new(self.seed.unwrap_or_else(|| rand::random::<u64>() >> 16));
        o.key = self.key;
        o.retries = self.retries;
        o.backoff = self.backoff;
        o.backoff_base_ms = self.backoff_base_ms;
        o.backoff_cap_ms = self.backoff_cap_ms;
        o.attempt_timeout_ms = self.attempt_timeout_ms;
        o.deadline_ms = self.deadline_ms;
        o.concurrency = self.concurrency;
        o.connection = self.connection;
        Settings {
            targets: self.target.0.clone(),
            service: self.service.clone(),
            options: o,
            history: self.history.clone(),
            progress: !self.json,
            reconcile_deadline: Duration::from_millis(self.reconcile_deadline_ms),
            stop: Some(flow::stop_on_ctrl_c()),
            receipts: self.receipts.clone(),
        }
    }
}

fn main() -> std::process::ExitCode {
    eo_core::logging::init("client=warn");
    let cli = Cli::parse();
    let code = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("client: cannot start the runtime: {e}");
            EXIT_ERROR
        }
    };
    std::process::ExitCode::from(code)
}

async fn run(cli: Cli) -> u8 {
    let (common, ended) = match &cli.command {
        Command::Pay(args) => {
            let mut settings = args.common.settings();
            settings.options.batch = args.batch.map(|size| Batch {
                size,
                keys: args.batch_keys,
            });
            let o = &settings.options;
            let paid = match flow::intents(
                args.csv.as_deref(),
                args.count,
                &args.src,
                &args.dest,
                args.amount,
                o.seed,
            )
            .await
            {
                Ok(intents) => flow::pay(&settings, intents, args.ledger.as_deref()).await,
                Err(e) => Err(e),
            };
            (&args.common, paid.map(|ending| (ending, settings.options)))
        }
        Command::Resume(args) => {
            let settings = args.common.settings();
            let resumed = flow::resume(&settings, &args.ledger).await;
            (&args.common, resumed.map(|ending| (ending, settings.options)))
        }
    };
    match ended {
        Ok((ending, options)) => flow::conclude(&ending, &options, common.json, common.expect()),
        Err(e) => {
            eprintln!("client: {e:#}");
            EXIT_ERROR
        }
    }
}
