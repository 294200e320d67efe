//! The `receipts` binary: flags, logging and signals around [`receipts::serve`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use receipts::config::PROCESSING_DELAY_MS_MAX;
use receipts::{Config, DedupMode};

/// The second hop of a payment: a receipts service that the payment
/// service's relay delivers payment events to (POST /receipts), at least
/// once. With --dedup inbox (the default) it issues exactly one receipt per
/// event id: the event id is stored under a unique key in the receipt's own
/// transaction, and a redelivery is answered 200 with the first receipt.
/// With --dedup off it is the naive consumer that issues a receipt per
/// delivery. GET /stats shows receipts, duplicates and the invariant
/// one_receipt_per_event, from its SQLite file.
#[derive(Parser)]
#[command(
    version,
    after_help = "Logs: set RUST_LOG (e.g. RUST_LOG=receipts=debug). Stop with Ctrl-C.\n\
                  Try: curl -s localhost:8081/ ; curl -s localhost:8081/stats"
)]
struct Cli {
    /// Address to listen on (loopback by default; use 0.0.0.0:8081 to expose it)
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// SQLite database file (created if missing; WAL mode; one service per file)
    #[arg(long, default_value = "receipts.db")]
    db: PathBuf,
    /// inbox: one receipt per event id, redeliveries absorbed (correct); off: a receipt per delivery (the lesson's mistake)
    #[arg(long, value_enum, default_value_t = DedupMode::Inbox)]
    dedup: DedupMode,
    /// Simulated work in ms before each delivery is written: a slow consumer, so the relay's attempt deadline expires and it delivers again
    #[arg(long, default_value_t = 0, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(0..=PROCESSING_DELAY_MS_MAX))]
    processing_delay_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    eo_core::logging::init("receipts=info");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(cli))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::new(&cli.db);
    config.dedup = cli.dedup;
    config.processing_delay = Duration::from_millis(cli.processing_delay_ms);
    config.validate().map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(cli.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (is another service running there? try --listen 127.0.0.1:0)",
            cli.listen
        )
    })?;
    let local = listener.local_addr()?;
    let shutdown = eo_core::shutdown::signal();
    // Open (lock, schema, writer) before announcing: "listening" means ready.
    let service = receipts::Service::open(config).await?;
    // One plain line on stdout, for scripts and tests that bind port 0.
    println!("receipts listening on http://{local}");
    tracing::info!(
        listen = %local, db = %cli.db.display(), dedup = cli.dedup.as_str(),
        processing_delay_ms = cli.processing_delay_ms,
        "receipts ready: POST http://{local}/receipts, GET http://{local}/stats"
    );
    receipts::serve(listener, service, shutdown).await?;
    tracing::info!("receipts stopped");
    Ok(())
}
