//! A minimal HTTP/1.1 keep-alive client and the load loops of the benchmark:
//! the benchmark should measure the service, not a client library, on a
//! machine whose cores it shares.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Any single network step of a load round taking longer is a failure.
pub(crate) const IO_TIMEOUT_MS: u64 = 10_000;
/// Response headers larger than this are refused by the benchmark client.
const HEADER_BYTES_MAX: usize = 16 * 1024;
/// The payment every load round sends.
pub(crate) const BODY: &str = r#"{"src":"bianca","dest":"marc","amount":"1.00"}"#;

/// Throughput and latency of one round.
pub(crate) struct Measured {
    pub per_s: f64,
    pub p50_us: u128,
    pub p99_us: u128,
    /// CPU time of the whole process (service and load, every thread, user
    /// and kernel) per request: what one request costs the machine's cores.
    pub cpu_us_per_request: f64,
}

/// `cpu_us`: the process's CPU time over the round ([`process_cpu_us`]).
pub(crate) fn summarize(count: usize, elapsed: Duration, mut latencies: Vec<Duration>, cpu_us: u64) -> Measured {
    latencies.sort_unstable();
    Measured {
        per_s: count as f64 / elapsed.as_secs_f64(),
        p50_us: quantile(&latencies, 0.50).as_micros(),
        p99_us: quantile(&latencies, 0.99).as_micros(),
        cpu_us_per_request: cpu_us as f64 / count.max(1) as f64,
    }
}

/// The round with the median rate of `rounds` (not empty).
pub(crate) fn median(mut rounds: Vec<Measured>) -> Measured {
    rounds.sort_by(|a, b| a.per_s.total_cmp(&b.per_s));
    let middle = rounds.len() / 2;
    rounds.swap_remove(middle)
}

/// CPU time this process has used so far (all threads, user and kernel),
/// in microseconds; 0 where it cannot be read.
pub(crate) fn process_cpu_us() -> u64 {
    crate::writer::process_cpu_ns() / 1000
}

/// The `q` quantile of sorted latencies (zero when there are none).
pub(crate) fn quantile(sorted: &[Duration], q: f64) -> Duration {
    eo_core::measure::quantile(sorted, q).unwrap_or_default()
}

/// What one round sends: keyed payments, or a GET of a route.
#[derive(Clone, Copy)]
pub(crate) enum Load {
    /// `POST /payments` with key `bench-{round}-{i}`; `replay`: expect replays.
    Pay {
        round: usize,
        replay: bool,
    },
    Get(&'static str),
}

/// `count` requests of `load` from `concurrency` keep-alive connections.
pub(crate) async fn round(addr: SocketAddr, load: Load, count: usize, concurrency: usize) -> anyhow::Result<Measured> {
    let next = Arc::new(AtomicUsize::new(0));
    let (started, cpu_started) = (Instant::now(), process_cpu_us());
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
                let t = Instant::now();
                one_request(&mut conn, load, i).await?;
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let cpu_us = process_cpu_us().saturating_sub(cpu_started);
    Ok(summarize(count, started.elapsed(), latencies, cpu_us))
}

async fn one_request(conn: &mut Conn, load: Load, i: usize) -> anyhow::Result<()> {
    match load {
        Load::Pay { round, replay } => {
            let reply = conn
                .post("/payments", Some(&format!("bench-{round}-{i}")), BODY)
                .await?;
            if reply.status != 201 || reply.replayed != Some(replay) {
                bail!(
                    "payment {i} got status {} replayed {:?}, expected 201 replayed {replay}",
                    reply.status,
                    reply.replayed
                );
            }
        }
        Load::Get(path) => {
            let reply = conn.get(path).await?;
            if reply.status != 200 {
                bail!("GET {path} got status {}", reply.status);
            }
        }
    }
    Ok(())
}

/// One answer: status, the `Idempotent-Replayed` header, the body.
pub(crate) struct Reply {
    pub status: u16,
    pub replayed: Option<bool>,
    /// As received: decoding every body would cost the load loop more than
    /// the service spends on a no-op (a lossy UTF-8 pass over `GET /`'s
    /// document was a quarter of a no-op round's instructions).
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text, for the few callers that read it.
    pub(crate) fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// One keep-alive connection with a deadline per network step.
pub(crate) struct Conn {
    stream: BufReader<TcpStream>,
    host: String,
    timeout: Duration,
}

async fn timed<T>(what: &str, limit: Duration, f: impl Future<Output = std::io::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .with_context(|| format!("{what} timed out after {} ms", limit.as_millis()))?
        .with_context(|| format!("{what} failed"))
}

impl Conn {
    pub(crate) async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        Conn::open_with_timeout(addr, Duration::from_millis(IO_TIMEOUT_MS)).await
    }

    /// A connection whose answers may take up to `timeout` (ledger-size
    /// measurements of an O(n) implementation take long).
    pub(crate) async fn open_with_timeout(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Conn> {
        let stream = timed("connect", timeout, TcpStream::connect(addr)).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(stream),
            host: addr.to_string(),
            timeout,
        })
    }

    pub(crate) async fn get(&mut self, path: &str) -> anyhow::Result<Reply> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.exchange(request.as_bytes()).await
    }

    pub(crate) async fn delete(&mut self, path: &str) -> anyhow::Result<Reply> {
        let request = format!("DELETE {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.exchange(request.as_bytes()).await
    }

    pub(crate) async fn post(&mut self, path: &str, key: Option<&str>, body: &str) -> anyhow::Result<Reply> {
        let key = key.map(|k| format!("Idempotency-Key: {k}\r\n")).unwrap_or_default();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{key}Content-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.exchange(request.as_bytes()).await
    }

    async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<Reply> {
        let limit = self.timeout;
        timed("send", limit, self.stream.get_mut().write_all(request)).await?;
        let mut status_line = String::new();
        timed("read status", limit, self.stream.read_line(&mut status_line)).await?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let (content_length, replayed) = self.read_headers().await?;
        let mut body = vec![0; content_length];
        timed("read body", limit, self.stream.read_exact(&mut body)).await?;
        Ok(Reply { status, replayed, body })
    }

    /// Reads the header block: Content-Length and Idempotent-Replayed.
    async fn read_headers(&mut self) -> anyhow::Result<(usize, Option<bool>)> {
        let (mut content_length, mut replayed, mut header_bytes) = (0usize, None, 0usize);
        loop {
            let mut line = String::new();
            let n = timed("read headers", self.timeout, self.stream.read_line(&mut line)).await?;
            header_bytes += n;
            if n == 0 || header_bytes > HEADER_BYTES_MAX {
                bail!("the response headers were cut off or too large");
            }
            if line == "\r\n" {
                return Ok((content_length, replayed));
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().context("bad Content-Length")?;
            } else if name.eq_ignore_ascii_case("idempotent-replayed") {
                replayed = Some(value.trim() == "true");
            }
        }
    }
}
