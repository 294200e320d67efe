//! The `payment-service` binary: flags, logging and signals around
//! [`payment_service::run`]; `payment-service bench` runs the benchmark,
//! `payment-service audit --db FILE` audits a database file.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use payment_service::{Settings, bench, cli_audit};

/// Requests are allocated on async workers and freed on the writer thread,
/// answers the other way round: glibc's per-thread arenas made those frees
/// take the owning arena's lock (strace on the writer: 7.2 futex calls per
/// commit with glibc, 3.8 with mimalloc, which frees across threads without one).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Measure SQLite's raw durable commit rate on this disk, then the service's
    /// durable keyed payments/s over HTTP at concurrency 1, 16 and 64
    Bench(bench::BenchArgs),
    /// Recompute every figure of a database file from its payments and compare
    /// with the figures the service maintains (exit 0 agree, 1 disagree, 2 no verdict)
    Audit(cli_audit::AuditArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    eo_core::logging::init("payment_service=info");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Some(Command::Bench(args)) => runtime.block_on(bench::run(args)),
        Some(Command::Audit(args)) => {
            let status = cli_audit::run(&args)?;
            std::process::exit(status)
        }
        None => runtime.block_on(serve(cli.serve)),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.settings.config(&args.db);
    config.validate().map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is another service running there?)", args.listen))?;
    let local = listener.local_addr()?;
    let shutdown = eo_core::shutdown::signal();
    // Open (lock, schema, writer) before announcing: "listening" means ready.
    let service = match payment_service::Service::open(config).await {
        Ok(service) => service,
        // A setup mistake, not a failure of the service: exit 2 with the fix.
        Err(e) if format!("{e:#}").contains(payment_service::config::POSTGRES_UNREACHABLE) => {
            eprintln!("Error: {e:#}");
            std::process::exit(2)
        }
        Err(e) => return Err(e),
    };
    // One plain line on stdout, for scripts and tests that bind port 0.
    println!("payment-service listening on http://{local}");
    tracing::info!(
        listen = %local, db = %args.db.display(), dedup = args.settings.dedup.as_str(),
        synchronous = args.settings.synchronous.pragma(),
        "payment-service ready: POST http://{local}/payments, GET http://{local}/stats"
    );
    payment_service::serve(listener, service, shutdown).await?;
    tracing::info!("payment-service stopped");
    Ok(())
}
