//! Delivery throughput of the receipts service: N distinct events POSTed at
//! concurrency C over keep-alive connections (the way a relay delivers),
//! then the same N again (every one a duplicate the inbox absorbs), timed
//! from the first request to the last acknowledgement.
//!
//! ```sh
//! cargo run --release -p receipts --example deliver -- --events 5000 --concurrency 16
//! cargo run --release -p receipts --example deliver -- --url http://127.0.0.1:8081   # a running service
//! ```
//!
//! Without `--url` it starts the service in this process, on a temporary
//! file, once per dedup mode. Not a test: numbers depend on the machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use receipts::{Config, DedupMode};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Distinct events per pass
    #[arg(long, default_value_t = 5000)]
    events: i64,
    /// Deliveries in flight
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// A running receipts service (default: one started here per dedup mode)
    #[arg(long)]
    url: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match &args.url {
            Some(url) => passes(url, &args, "external").await,
            None => {
                for dedup in [DedupMode::Inbox, DedupMode::Off] {
                    in_process(dedup, &args).await?;
                }
                Ok(())
            }
        }
    })
}

async fn in_process(dedup: DedupMode, args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::new(dir.path().join("receipts.db"));
    config.dedup = dedup;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(receipts::run(listener, config, async move {
        let _ = stopped.await;
    }));
    passes(&url, args, dedup.as_str()).await?;
    let _ = stop.send(());
    server.await??;
    Ok(())
}

/// The first pass (new events) and the second (the same events again).
async fn passes(url: &str, args: &Args, label: &str) -> anyhow::Result<()> {
    let ledger = format!("{:016x}", eo_core::wire::unix_us_now());
    for pass in ["new events", "redeliveries"] {
        let started = Instant::now();
        let statuses = deliver_all(url, &ledger, args).await?;
        let elapsed = started.elapsed();
        let rate = args.events as f64 / elapsed.as_secs_f64();
        println!(
            "{label:>8} {pass:<13} {} events at concurrency {}: {:>6.0} ms, {rate:>7.0} events/s acknowledged ({statuses})",
            args.events,
            args.concurrency,
            elapsed.as_secs_f64() * 1000.0
        );
    }
    let stats: serde_json::Value = reqwest::get(format!("{url}/stats")).await?.json().await?;
    println!(
        "{label:>8} stats: receipts {}, events {}, duplicate_receipts {}, duplicates_absorbed {}, commits {}",
        stats["receipts"],
        stats["events"],
        stats["duplicate_receipts"],
        stats["duplicates_absorbed"],
        stats["requests"]["writer_commits"]
    );
    Ok(())
}

/// Every event once, `concurrency` senders taking the next event number;
/// returns how many answers were 201 and 200. Any other answer is an error.
async fn deliver_all(url: &str, ledger: &str, args: &Args) -> anyhow::Result<String> {
    let next = Arc::new(AtomicI64::new(1));
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;
    let senders: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (next, http, url, ledger, events) = (
                Arc::clone(&next),
                http.clone(),
                format!("{url}/receipts"),
                ledger.to_owned(),
                args.events,
            );
            tokio::spawn(async move {
                let (mut created, mut replayed) = (0u64, 0u64);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n > events {
                        return Ok::<_, anyhow::Error>((created, replayed));
                    }
                    let body = json!({
                        "event_id": format!("{ledger}:{n}"), "payment_id": n, "key": format!("pay-{n}"),
                        "src": "alice", "dest": "bob", "amount_minor": 100, "paid_at_ms": 0,
                    });
                    match http.post(&url).json(&body).send().await?.status().as_u16() {
                        201 => created += 1,
                        200 => replayed += 1,
                        other => anyhow::bail!("event {n}: answered {other}"),
                    }
                }
            })
        })
        .collect();
    let (mut created, mut replayed) = (0, 0);
    for sender in senders {
        let (c, r) = sender.await??;
        created += c;
        replayed += r;
    }
    Ok(format!("{created} × 201, {replayed} × 200"))
}
