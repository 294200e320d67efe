//! The `chaos-proxy` binary: flags, logging, signals; everything else is in
//! the library.
//!
//! Run with `cargo run -p chaos-proxy -- --workshop` (see `--help`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use chaos_proxy::config::{self, Config};
use clap::{Parser, Subcommand};

/// A seeded fault-injecting TCP proxy with a toxiproxy-compatible control API.
///
/// Speaks toxiproxy v2's HTTP API (curl, toxiproxy-cli and the client
/// libraries work unchanged) and injects reset_peer, timeout, latency,
/// bandwidth, slow_close, slicer and limit_data faults. Every random
/// decision derives from --seed, so a run can be replayed exactly.
/// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=chaos_proxy=debug).
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    long_about,
    after_long_help = "Examples:\n  \
  chaos-proxy --workshop --seed 42        # payment: 127.0.0.1:8888 -> 127.0.0.1:8080\n  \
  chaos-proxy --config proxies.json       # populate format, toxics allowed per proxy\n  \
  curl -X POST localhost:8474/proxies/payment/toxics \\\n    \
  -d '{\"type\":\"reset_peer\",\"stream\":\"upstream\",\"toxicity\":0.3,\"attributes\":{\"timeout\":1}}'\n  \
  curl localhost:8474/proxies/payment/stats   # counters and the fault log\n  \
  cargo run --release -p chaos-proxy -- bench"
)]
struct Cli {
    /// Address of the control API (loopback by default; toxiproxy uses 8474).
    #[arg(long, default_value = "127.0.0.1:8474")]
    api: SocketAddr,

    /// Seed of every random decision; printed at startup when omitted so the
    /// run can be replayed with the same faults.
    #[arg(long)]
    seed: Option<u64>,

    /// Proxies to create at startup: a JSON array in /populate format; each
    /// proxy may carry a "toxics" array (an extension).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Start with the workshop's proxy "payment" (127.0.0.1:8888 ->
    /// 127.0.0.1:8080) already configured.
    #[arg(long)]
    workshop: bool,

    /// Allow non-loopback listen and upstream addresses (by default wildcard
    /// listens such as 0.0.0.0 are bound on 127.0.0.1 and remote upstreams
    /// are refused).
    #[arg(long)]
    allow_remote: bool,

    /// Cap on concurrent proxied connections over all proxies; beyond it new
    /// connections are reset at once.
    #[arg(long, default_value_t = config::CONNECTIONS_COUNT_MAX_DEFAULT)]
    max_connections: usize,

    /// Budget for resolving and connecting to an upstream, in milliseconds.
    #[arg(long, default_value_t = config::DIAL_TIMEOUT_MS_DEFAULT)]
    dial_timeout_ms: u64,

    /// A proxied connection without traffic for this many seconds is closed.
    #[arg(long, default_value_t = config::IDLE_TIMEOUT_SECS_DEFAULT)]
    idle_timeout_secs: u64,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure direct vs through-the-proxy on loopback (keep-alive latency
    /// p50/p99, new connections per second, bulk throughput), then the API's
    /// and a new connection's latency while 64 bulk streams run through the
    /// proxy. Prints only what this run measured. Build with --release.
    Bench,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    eo_core::logging::init("chaos_proxy=info");
    if let Some(Command::Bench) = cli.command {
        return chaos_proxy::run_bench();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(cli))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let seed = cli.seed.unwrap_or_else(config::fresh_seed);
    let mut config = Config::new(seed);
    config.allow_remote = cli.allow_remote;
    config.connections_count_max = cli.max_connections.max(1);
    config.dial_timeout = Duration::from_millis(cli.dial_timeout_ms.max(1));
    config.idle_timeout = Duration::from_secs(cli.idle_timeout_secs.max(1));
    if cli.workshop {
        config.startup_proxies.push(config::workshop_proxy());
    }
    if let Some(path) = &cli.config {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let items = config::parse_config_file(&text).with_context(|| format!("parsing {}", path.display()))?;
        config.startup_proxies.extend(items);
    }
    if !cli.allow_remote && !cli.api.ip().is_loopback() {
        anyhow::bail!(
            "--api {} is not a loopback address; add --allow-remote to expose the API",
            cli.api
        );
    }
    let listener = tokio::net::TcpListener::bind(cli.api)
        .await
        .with_context(|| format!("binding the API on {}", cli.api))?;
    // Handlers first: a SIGTERM right after the announcement is a clean stop.
    let shutdown = eo_core::shutdown::signal();
    eprintln!(
        "chaos-proxy: API on http://{} seed {seed} (replay with --seed {seed})",
        listener.local_addr()?
    );
    chaos_proxy::run(listener, config, shutdown).await
}
