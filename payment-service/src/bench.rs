//! `payment-service bench`: how fast can payments be made durable?
//!
//! One run measures, on the same disk, (1) SQLite's raw rate of single-row
//! durable commits, the ceiling for any design that commits each payment on
//! its own, and (2) the service's rate of durable keyed payments over HTTP at
//! several concurrencies. Group commit lets the service beat (1) once many
//! requests wait together; the ratio says by how much.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rusqlite::TransactionBehavior;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::config::{Config, Synchronous};
use crate::payment::PaymentRequest;
use crate::store;

/// Any single network step of the benchmark client taking longer is a failure.
const IO_TIMEOUT_MS: u64 = 10_000;
/// Response headers larger than this are refused by the benchmark client.
const HEADER_BYTES_MAX: usize = 16 * 1024;
/// The ratio to the raw commit rate the service should reach at the top concurrency.
const RATIO_TARGET: f64 = 3.0;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Directory for the scratch databases: use the disk your --db lives on
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Payments (and raw commits) per measurement
    #[arg(long, default_value_t = 5000)]
    payments: usize,
    /// Concurrent HTTP clients, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// SQLite synchronous mode for both measurements
    #[arg(long, value_enum, default_value_t = Synchronous::Full)]
    synchronous: Synchronous,
}

struct Measured {
    per_s: f64,
    p50_us: u128,
    p99_us: u128,
}

fn summarize(count: usize, elapsed: Duration, mut latencies: Vec<Duration>) -> Measured {
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .map_or(0, Duration::as_micros)
    };
    Measured {
        per_s: count as f64 / elapsed.as_secs_f64(),
        p50_us: at(0.50),
        p99_us: at(0.99),
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.payments == 0 || args.concurrency.iter().any(|c| *c == 0 || *c > 1024) {
        bail!("--payments must be at least 1 and each --concurrency between 1 and 1024");
    }
    let scratch = tempfile::Builder::new()
        .prefix("payment-bench-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("cannot create a scratch directory in {}", args.dir.display()))?;
    println!(
        "payment-service bench: {} payments per measurement, synchronous={}, scratch dir {}",
        args.payments,
        args.synchronous.pragma(),
        scratch.path().display()
    );

    let raw_path = scratch.path().join("raw.db");
    let (payments, synchronous) = (args.payments, args.synchronous);
    let raw = tokio::task::spawn_blocking(move || raw_commits(&raw_path, payments, synchronous)).await??;
    println!();
    println!("SQLite alone: one single-row INSERT per BEGIN IMMEDIATE ... COMMIT");
    println!(
        "  {:>9.0} commits/s   p50 {:>6} µs   p99 {:>6} µs",
        raw.per_s, raw.p50_us, raw.p99_us
    );

    let mut config = Config::new(scratch.path().join("service.db"));
    config.synchronous = args.synchronous;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::run(listener, config, async move {
        let _ = stop_rx.await;
    }));

    println!();
    println!(
        "payment-service over HTTP/1.1 keep-alive: keyed POST /payments, each acknowledged after its durable COMMIT"
    );
    println!(
        "  {:>11}  {:>12}  {:>9}  {:>9}  {:>12}",
        "concurrency", "payments/s", "p50 µs", "p99 µs", "× raw rate"
    );
    let mut last_ratio = 0.0;
    for (round, &concurrency) in args.concurrency.iter().enumerate() {
        let m = http_payments(addr, args.payments, concurrency, round).await?;
        last_ratio = m.per_s / raw.per_s;
        println!(
            "  {concurrency:>11}  {:>12.0}  {:>9}  {:>9}  {:>11.1}×",
            m.per_s, m.p50_us, m.p99_us, last_ratio
        );
    }
    let stats = get(addr, "/stats").await?;
    let expected = args.payments * args.concurrency.len();
    let stats: serde_json::Value = serde_json::from_str(&stats).context("/stats is not JSON")?;
    if stats["payments"].as_u64() != Some(expected as u64) || stats["invariants"]["one_payment_per_key"] != true {
        bail!("the service's ledger does not hold exactly {expected} payments: {stats}");
    }
    println!();
    println!("  ledger check: {expected} payments stored, one per key, balances conserved");
    let top = args.concurrency.last().copied().unwrap_or(1);
    let verdict = if last_ratio >= RATIO_TARGET { "met" } else { "NOT met" };
    println!(
        "  target: at concurrency {top}, at least {RATIO_TARGET:.0}× the raw commit rate: {verdict} ({last_ratio:.1}×)"
    );

    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}

/// The raw ceiling: one durable transaction per row, nothing else.
fn raw_commits(path: &std::path::Path, count: usize, synchronous: Synchronous) -> anyhow::Result<Measured> {
    let mut conn = store::open_writer(path, synchronous)?;
    let request = PaymentRequest {
        src: "bench-a".into(),
        dest: "bench-b".into(),
        amount_minor: 1,
    };
    let mut latencies = Vec::with_capacity(count);
    let started = Instant::now();
    for i in 0..count {
        let t = Instant::now();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO payments (src, dest, amount_minor, idem_key, dedup_key, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?4, 0)",
            rusqlite::params![request.src, request.dest, request.amount_minor, format!("raw-{i}")],
        )?;
        tx.commit()?;
        latencies.push(t.elapsed());
    }
    Ok(summarize(count, started.elapsed(), latencies))
}

/// `count` keyed payments from `concurrency` keep-alive connections.
async fn http_payments(
    addr: std::net::SocketAddr,
    count: usize,
    concurrency: usize,
    round: usize,
) -> anyhow::Result<Measured> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await?;
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(latencies);
                }
                let body = r#"{"src":"bianca","dest":"marc","amount":"1.00"}"#;
                let t = Instant::now();
                let (status, _) = conn.post("/payments", &format!("bench-{round}-{i}"), body).await?;
                latencies.push(t.elapsed());
                if status != 201 {
                    bail!("payment {i} got status {status}, expected 201");
                }
            }
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(summarize(count, started.elapsed(), latencies))
}

async fn get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut conn = Conn::open(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    conn.exchange(request.as_bytes()).await.map(|(_, body)| body)
}

/// A minimal HTTP/1.1 keep-alive client: the benchmark should measure the
/// service, not a client library, on a machine whose cores it shares.
struct Conn {
    stream: BufReader<TcpStream>,
    host: String,
}

async fn timed<T>(what: &str, f: impl Future<Output = std::io::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(Duration::from_millis(IO_TIMEOUT_MS), f)
        .await
        .with_context(|| format!("{what} timed out"))?
        .with_context(|| format!("{what} failed"))
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> anyhow::Result<Conn> {
        let stream = timed("connect", TcpStream::connect(addr)).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(stream),
            host: addr.to_string(),
        })
    }

    async fn post(&mut self, path: &str, key: &str, body: &str) -> anyhow::Result<(u16, String)> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nIdempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.exchange(request.as_bytes()).await
    }

    async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<(u16, String)> {
        timed("send", self.stream.get_mut().write_all(request)).await?;
        let mut status_line = String::new();
        timed("read status", self.stream.read_line(&mut status_line)).await?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let (mut content_length, mut header_bytes) = (0usize, 0usize);
        loop {
            let mut line = String::new();
            let n = timed("read headers", self.stream.read_line(&mut line)).await?;
            header_bytes += n;
            if n == 0 || header_bytes > HEADER_BYTES_MAX {
                bail!("the response headers were cut off or too large");
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().context("bad Content-Length")?;
            }
        }
        let mut body = vec![0; content_length];
        timed("read body", self.stream.read_exact(&mut body)).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
