//! The `payment-service` binary: flags, logging and signals around
//! [`payment_service::run`]; `payment-service bench` runs the benchmark.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use payment_service::{Config, DedupMode, Synchronous, bench, config::parse_duration};
use tracing_subscriber::EnvFilter;

/// An HTTP payment service that stores transfers in SQLite behind a unique
/// idempotency key, replays stored answers to retries, and proves at
/// GET /stats that money moved exactly once (or shows how it did not).
#[derive(Parser)]
#[command(
    version,
    after_help = "Logs: set RUST_LOG (e.g. RUST_LOG=payment_service=debug). Stop with Ctrl-C."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (loopback by default; use 0.0.0.0:8080 to expose it)
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// SQLite database file (created if missing; WAL mode)
    #[arg(long, default_value = "payments.db")]
    db: PathBuf,
    /// How keys deduplicate: unique (correct), check-then-insert (racy), off (keys ignored)
    #[arg(long, value_enum, default_value_t = DedupMode::Unique)]
    dedup: DedupMode,
    /// Refuse payments without an idempotency key (400) instead of executing them undeduplicated
    #[arg(long)]
    require_key: bool,
    /// Simulated work in ms between claiming a key and committing the payment (widens races)
    #[arg(long, default_value_t = 0, value_name = "MS")]
    processing_delay_ms: u64,
    /// SQLite synchronous mode: full fsyncs every commit (survives power loss), normal does not
    #[arg(long, value_enum, default_value_t = Synchronous::Full)]
    synchronous: Synchronous,
    /// How long stored responses are kept (e.g. 24h, 30m, 0); keys stay on payments forever
    #[arg(long, default_value = "24h", value_parser = parse_duration, value_name = "DURATION")]
    key_retention: Duration,
    /// How long an in-flight key is reserved for its worker before a retry may take it over
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    key_lease: Duration,
    /// Probability (0..1) that the process kills itself (SIGKILL) right after committing a payment, before answering
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    crash_after_commit: f64,
    /// Probability (0..1) that the process kills itself (SIGKILL) right before committing a payment
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    crash_before_commit: f64,
    /// Seed of the crash-injection dice, so a crashing run can be replayed
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Measure SQLite's raw durable commit rate on this disk, then the service's
    /// durable keyed payments/s over HTTP at concurrency 1, 16 and 64
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("payment_service=info")))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Some(Command::Bench(args)) => runtime.block_on(bench::run(args)),
        None => runtime.block_on(serve(cli.serve)),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::new(args.db);
    config.dedup = args.dedup;
    config.require_key = args.require_key;
    config.processing_delay = Duration::from_millis(args.processing_delay_ms);
    config.synchronous = args.synchronous;
    config.key_retention = args.key_retention;
    config.key_lease = args.key_lease;
    config.crash_after_commit = args.crash_after_commit;
    config.crash_before_commit = args.crash_before_commit;
    config.seed = args.seed;
    config.validate().map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is another service running there?)", args.listen))?;
    let local = listener.local_addr()?;
    // One plain line on stdout, for scripts and tests that bind port 0.
    println!("payment-service listening on http://{local}");
    tracing::info!(
        listen = %local, db = %config.db.display(), dedup = config.dedup.as_str(),
        synchronous = config.synchronous.pragma(), seed = config.seed,
        "payment-service ready: POST http://{local}/payments, GET http://{local}/stats"
    );
    payment_service::run(listener, config, shutdown_signal()).await?;
    tracing::info!("payment-service stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested: finishing open requests");
}
