//! `chaos-proxy bench`: direct versus through-the-proxy on loopback, and the
//! proxy's responsiveness while bulk streams run through it. It prints only
//! what this run measured.
//!
//! Layout of the run: the upstream servers (echo and sink) run on their own
//! single-threaded tokio runtime, the proxy (API included, served by
//! [`crate::run`] as the binary serves it) on a 2-worker runtime, and the
//! client is the calling thread with blocking std sockets, so client, proxy
//! and servers share the cores. The load phase adds [`LOAD_STREAMS_COUNT`]
//! client threads pushing bulk streams while the calling thread probes the
//! API and opens new proxied connections. Every phase has a fixed amount of
//! work and a time cap.
//! Run it with `cargo run --release -p chaos-proxy -- bench`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Config;

/// Round trips measured per keep-alive latency run (after the warm-up).
const LATENCY_ROUND_TRIPS_COUNT: usize = 20_000;
/// Round trips discarded before measuring (caches, buffers, branch predictors).
const LATENCY_WARMUP_COUNT: usize = 2_000;
/// Size of one keep-alive request/response: a small HTTP-like message.
const LATENCY_MESSAGE_BYTES: usize = 64;
/// New connections measured per run.
const CONNECTIONS_COUNT: usize = 3_000;
/// Bytes pushed per bulk run.
const BULK_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Size of one bulk write (single stream and load streams alike).
const BULK_WRITE_BYTES: usize = 256 * 1024;
/// Cap on any phase, so a broken build cannot run forever.
const PHASE_TIME_MAX_SECS: u64 = 60;
/// Socket timeout of the client: a hung proxy fails the bench instead.
const CLIENT_IO_TIMEOUT_SECS: u64 = 10;
/// Full-speed streams pushed through the proxy during the load phase (the
/// case where an unfair copy loop starved the API for half a second).
const LOAD_STREAMS_COUNT: usize = 64;
/// Time the load streams run before probing starts, so that every stream
/// is connected and at full speed.
const LOAD_WARMUP_MS: u64 = 1_000;
/// Length of the probing window under load.
const LOAD_MEASURE_SECS: u64 = 5;
/// Pause between two probes: the probes sample the proxy, they are not load.
const LOAD_PROBE_INTERVAL_MS: u64 = 10;
/// Most probes of each kind in one window (bounds the sample vectors).
const LOAD_PROBES_COUNT_MAX: usize = 1_000;
/// Largest API answer the bench reads (the proxy list of two proxies).
const API_ANSWER_BYTES_MAX: u64 = 64 * 1024;

/// Runs the benchmark and prints what it measured.
pub fn run_bench() -> anyhow::Result<()> {
    let upstreams = Upstreams::start()?;
    let proxy = ProxyUnderTest::start(upstreams.echo, upstreams.sink)?;
    println!("chaos-proxy bench: loopback, client + proxy + upstream on this machine");
    println!("(this takes about a minute)\n");
    let basics = Basics::measure(&upstreams, &proxy)?;
    basics.print();
    let load = LoadReport::measure(&proxy, LOAD_STREAMS_COUNT).context("under load")?;
    load.print();
    proxy.stop();
    upstreams.stop();
    Ok(())
}

/// The echo and sink servers, on their own thread and runtime.
struct Upstreams {
    echo: SocketAddr,
    sink: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Upstreams {
    fn start() -> anyhow::Result<Upstreams> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (echo, sink) = rt.block_on(async {
            let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            anyhow::Ok((echo, sink))
        })?;
        let (echo_addr, sink_addr) = (echo.local_addr()?, sink.local_addr()?);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                tokio::select! {
                    () = serve_echo(echo) => {}
                    () = serve_sink(sink) => {}
                    _ = stop_rx => {}
                }
            });
        });
        Ok(Upstreams {
            echo: echo_addr,
            sink: sink_addr,
            stop,
            thread,
        })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// The proxy as the binary runs it: [`crate::run`] on a 2-worker runtime
/// with the proxies `echo` and `sink` created at startup.
struct ProxyUnderTest {
    rt: tokio::runtime::Runtime,
    api: SocketAddr,
    echo: SocketAddr,
    sink: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ProxyUnderTest {
    fn start(echo: SocketAddr, sink: SocketAddr) -> anyhow::Result<ProxyUnderTest> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let api = listener.local_addr()?;
        let mut config = Config::new(0);
        let item = |name: &str, upstream: SocketAddr| serde_json::json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream.to_string()});
        config.startup_proxies = vec![item("echo", echo), item("sink", sink)];
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(crate::run(listener, config, async {
            let _ = stop_rx.await;
        }));
        // The API socket is bound already: these calls wait in its backlog
        // until the startup proxies exist and the server answers.
        let echo_proxy = proxy_listen(api, "echo")?;
        let sink_proxy = proxy_listen(api, "sink")?;
        Ok(ProxyUnderTest {
            rt,
            api,
            echo: echo_proxy,
            sink: sink_proxy,
            stop,
            server,
        })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        match self.rt.block_on(self.server) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("bench: the proxy ended with an error: {e:#}"),
            Err(e) => eprintln!("bench: the proxy task failed: {e}"),
        }
    }
}

/// One HTTP/1.1 request on a fresh connection: the status and the body.
fn http_call(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = client(addr)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: chaos-proxy-bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    s.take(API_ANSWER_BYTES_MAX).read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of the response head")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .context("no status in the response")?;
    Ok((status, body.to_owned()))
}

/// The bound address of proxy `name`, read through the API.
fn proxy_listen(api: SocketAddr, name: &str) -> anyhow::Result<SocketAddr> {
    let (status, body) = http_call(api, "GET", &format!("/proxies/{name}"))?;
    anyhow::ensure!(status == 200, "GET /proxies/{name}: {status} {body}");
    let proxy: serde_json::Value = serde_json::from_str(&body)?;
    let listen = proxy["listen"].as_str().context("no listen in the proxy")?;
    Ok(listen.parse()?)
}

/// Echoes every byte back, one task per connection.
async fn serve_echo(listener: tokio::net::TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
}

/// Counts bytes until EOF, then answers the count (8 bytes, little endian).
async fn serve_sink(listener: tokio::net::TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total: u64 = 0;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => return,
                }
            }
            let _ = s.write_all(&total.to_le_bytes()).await;
        });
    }
}

fn client(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(CLIENT_IO_TIMEOUT_SECS)))?;
    s.set_write_timeout(Some(Duration::from_secs(CLIENT_IO_TIMEOUT_SECS)))?;
    Ok(s)
}

/// p50 and p99 of a set of samples, in microseconds.
#[derive(Clone, Copy)]
struct Latency {
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Latency {
        samples.sort_unstable();
        let at = |p: f64| eo_core::measure::quantile(&samples, p).map_or(f64::NAN, |d| d.as_secs_f64() * 1e6);
        Latency {
            p50_us: at(0.50),
            p99_us: at(0.99),
            max_us: at(1.0),
        }
    }
}

/// The direct-versus-proxied measurements.
struct Basics {
    lat_direct: Latency,
    lat_proxy: Latency,
    pair_direct: Latency,
    pair_proxy: Latency,
    conn_direct: Connections,
    conn_proxy: Connections,
    bulk_direct_gbps: f64,
    bulk_proxy_gbps: f64,
}

impl Basics {
    fn measure(up: &Upstreams, proxy: &ProxyUnderTest) -> anyhow::Result<Basics> {
        let (pair_direct, pair_proxy) = latency_pair(up.echo, proxy.echo).context("latency, interleaved")?;
        Ok(Basics {
            lat_direct: latency(up.echo).context("latency, direct")?,
            lat_proxy: latency(proxy.echo).context("latency, proxied")?,
            pair_direct,
            pair_proxy,
            conn_direct: connections(up.echo).context("connections, direct")?,
            conn_proxy: connections(proxy.echo).context("connections, proxied")?,
            bulk_direct_gbps: bulk(up.sink).context("bulk, direct")?,
            bulk_proxy_gbps: bulk(proxy.sink).context("bulk, proxied")?,
        })
    }

    fn print(&self) {
        let us_row = |what: &str, d: f64, p: f64| {
            println!("{what:<38} {d:>9.1} us {p:>9.1} us {:>9.1} us", p - d);
        };
        println!(
            "{:<38} {:>12} {:>12} {:>12}",
            "measurement", "direct", "proxied", "added"
        );
        println!("{}", "-".repeat(78));
        let (ld, lp) = (self.lat_direct, self.lat_proxy);
        us_row("keep-alive round trip p50 (separate)", ld.p50_us, lp.p50_us);
        us_row("keep-alive round trip p99 (separate)", ld.p99_us, lp.p99_us);
        let (pd, pp) = (self.pair_direct, self.pair_proxy);
        us_row("  same, interleaved pairs, p50", pd.p50_us, pp.p50_us);
        us_row("  same, interleaved pairs, p99", pd.p99_us, pp.p99_us);
        let (cd, cp) = (&self.conn_direct, &self.conn_proxy);
        println!(
            "{:<38} {:>9.0} /s {:>9.0} /s",
            "new connections (connect+echo+close)", cd.per_sec, cp.per_sec
        );
        println!(
            "{:<38} {:>9.1} us {:>9.1} us",
            "new connection p50", cd.latency.p50_us, cp.latency.p50_us
        );
        println!(
            "{:<38} {:>9.1} us {:>9.1} us",
            "new connection p99", cd.latency.p99_us, cp.latency.p99_us
        );
        println!(
            "{:<38} {:>7.2} GB/s {:>7.2} GB/s",
            "bulk throughput (one connection)", self.bulk_direct_gbps, self.bulk_proxy_gbps
        );
        println!();
    }
}

/// Keep-alive round trips on one connection (direct and proxied measured in
/// separate runs).
fn latency(addr: SocketAddr) -> anyhow::Result<Latency> {
    let mut s = client(addr)?;
    let msg = [b'x'; LATENCY_MESSAGE_BYTES];
    let mut back = [0u8; LATENCY_MESSAGE_BYTES];
    let mut samples = Vec::with_capacity(LATENCY_ROUND_TRIPS_COUNT);
    let cap = Instant::now() + Duration::from_secs(PHASE_TIME_MAX_SECS);
    for i in 0..LATENCY_WARMUP_COUNT + LATENCY_ROUND_TRIPS_COUNT {
        let t = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        if i >= LATENCY_WARMUP_COUNT {
            samples.push(t.elapsed());
        }
        if t > cap {
            break;
        }
    }
    Ok(Latency::of(samples))
}

/// Keep-alive round trips, direct and proxied **interleaved** (one of each
/// per iteration) so that both see the same background noise on a shared
/// machine; measuring them one after the other made "added" swing by tens
/// of microseconds between runs. It is also the harsher figure: the
/// proxy's threads are always parked when its request arrives, and on a VM
/// each extra wake-up costs tens of microseconds.
fn latency_pair(direct: SocketAddr, proxied: SocketAddr) -> anyhow::Result<(Latency, Latency)> {
    let mut d = client(direct)?;
    let mut p = client(proxied)?;
    let msg = [b'x'; LATENCY_MESSAGE_BYTES];
    let mut back = [0u8; LATENCY_MESSAGE_BYTES];
    let mut samples_d = Vec::with_capacity(LATENCY_ROUND_TRIPS_COUNT);
    let mut samples_p = Vec::with_capacity(LATENCY_ROUND_TRIPS_COUNT);
    let cap = Instant::now() + Duration::from_secs(PHASE_TIME_MAX_SECS);
    for i in 0..LATENCY_WARMUP_COUNT + LATENCY_ROUND_TRIPS_COUNT {
        for (s, samples) in [(&mut d, &mut samples_d), (&mut p, &mut samples_p)] {
            let t = Instant::now();
            s.write_all(&msg)?;
            s.read_exact(&mut back)?;
            if i >= LATENCY_WARMUP_COUNT {
                samples.push(t.elapsed());
            }
        }
        if Instant::now() > cap {
            break;
        }
    }
    Ok((Latency::of(samples_d), Latency::of(samples_p)))
}

struct Connections {
    per_sec: f64,
    latency: Latency,
}

/// One new connection: connect, send a byte, read its echo, close.
fn one_connection(addr: SocketAddr) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut s = client(addr)?;
    s.write_all(b"c")?;
    let mut byte = [0u8; 1];
    s.read_exact(&mut byte)?;
    drop(s);
    Ok(t.elapsed())
}

fn connections(addr: SocketAddr) -> anyhow::Result<Connections> {
    let mut samples = Vec::with_capacity(CONNECTIONS_COUNT);
    let started = Instant::now();
    let cap = started + Duration::from_secs(PHASE_TIME_MAX_SECS);
    for _ in 0..CONNECTIONS_COUNT {
        samples.push(one_connection(addr)?);
        if Instant::now() > cap {
            break;
        }
    }
    let per_sec = samples.len() as f64 / started.elapsed().as_secs_f64();
    Ok(Connections {
        per_sec,
        latency: Latency::of(samples),
    })
}

/// GB/s (10^9 bytes per second) of one connection pushing `BULK_BYTES`.
fn bulk(addr: SocketAddr) -> anyhow::Result<f64> {
    let mut s = client(addr)?;
    let chunk = vec![0x5au8; BULK_WRITE_BYTES];
    let started = Instant::now();
    let cap = started + Duration::from_secs(PHASE_TIME_MAX_SECS);
    let mut sent: u64 = 0;
    while sent < BULK_BYTES && Instant::now() < cap {
        s.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)?;
    let elapsed = started.elapsed().as_secs_f64();
    let received = u64::from_le_bytes(count);
    anyhow::ensure!(received == sent, "the sink received {received} of {sent} bytes");
    Ok(received as f64 / elapsed / 1e9)
}

/// `streams` full-speed bulk streams into the sink proxy, one blocking
/// thread each (like as many `nc` processes), until [`LoadStreams::finish`].
/// Threads rather than tasks on one runtime: one thread cannot write as fast
/// as the proxy copies, and a source that idles lets the proxy's sockets go
/// quiet, which hides an unfair copy loop.
struct LoadStreams {
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicUsize>,
    bytes: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl LoadStreams {
    fn start(sink: SocketAddr, streams: usize) -> LoadStreams {
        let stop = Arc::new(AtomicBool::new(false));
        let connected = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let threads = (0..streams)
            .map(|_| {
                let (s, c, b) = (stop.clone(), connected.clone(), bytes.clone());
                std::thread::spawn(move || load_stream(sink, &s, &c, &b))
            })
            .collect();
        LoadStreams {
            stop,
            connected,
            bytes,
            threads,
        }
    }

    /// Waits (bounded) until every stream is connected.
    fn wait_connected(&self, streams: usize) -> anyhow::Result<()> {
        let cap = Instant::now() + Duration::from_secs(CLIENT_IO_TIMEOUT_SECS);
        while self.connected.load(Relaxed) < streams {
            anyhow::ensure!(
                !self.threads.iter().any(|t| t.is_finished()),
                "a load stream ended early"
            );
            anyhow::ensure!(Instant::now() < cap, "the load streams did not connect in time");
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Stops the streams; each checks that the sink got every byte it sent.
    fn finish(self) -> anyhow::Result<()> {
        self.stop.store(true, Relaxed);
        let mut first_error = None;
        for t in self.threads {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a load thread panicked")));
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// One bulk stream: write until told to stop, then half-close and check
/// the sink's count.
fn load_stream(sink: SocketAddr, stop: &AtomicBool, connected: &AtomicUsize, bytes: &AtomicU64) -> anyhow::Result<()> {
    let mut s = client(sink)?;
    connected.fetch_add(1, Relaxed);
    let chunk = vec![0xa5u8; BULK_WRITE_BYTES];
    let mut sent: u64 = 0;
    while !stop.load(Relaxed) {
        s.write_all(&chunk)?;
        sent += chunk.len() as u64;
        bytes.fetch_add(chunk.len() as u64, Relaxed);
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)?;
    let received = u64::from_le_bytes(count);
    anyhow::ensure!(received == sent, "the sink received {received} of {sent} bytes");
    Ok(())
}

/// The proxy's responsiveness while bulk streams run through it.
struct LoadReport {
    streams: usize,
    window: Duration,
    bulk_gbps: f64,
    api: Latency,
    api_count: usize,
    conn: Latency,
    conn_count: usize,
}

impl LoadReport {
    fn measure(proxy: &ProxyUnderTest, streams: usize) -> anyhow::Result<LoadReport> {
        let load = LoadStreams::start(proxy.sink, streams);
        load.wait_connected(streams)?;
        std::thread::sleep(Duration::from_millis(LOAD_WARMUP_MS));
        let (bytes_before, started) = (load.bytes.load(Relaxed), Instant::now());
        let probed = probe(proxy);
        let window = started.elapsed();
        let bytes = load.bytes.load(Relaxed) - bytes_before;
        load.finish()?;
        let (api, conn) = probed?;
        Ok(LoadReport {
            streams,
            window,
            bulk_gbps: bytes as f64 / window.as_secs_f64() / 1e9,
            api_count: api.len(),
            api: Latency::of(api),
            conn_count: conn.len(),
            conn: Latency::of(conn),
        })
    }

    fn print(&self) {
        println!(
            "under load: {} bulk streams through the proxy, probed for {:.1} s",
            self.streams,
            self.window.as_secs_f64()
        );
        println!("{}", "-".repeat(78));
        println!("{:<38} {:>7.2} GB/s", "bulk throughput (all streams)", self.bulk_gbps);
        let row = |what: &str, l: Latency, n: usize| {
            println!(
                "{what:<38} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  ({n} samples)",
                l.p50_us / 1000.0,
                l.p99_us / 1000.0,
                l.max_us / 1000.0
            );
        };
        row("API GET /version (new connection)", self.api, self.api_count);
        row("new proxied connection (echo)", self.conn, self.conn_count);
    }
}

/// Alternates an API `GET /version` and a new proxied connection, each on
/// a fresh connection, for [`LOAD_MEASURE_SECS`].
fn probe(proxy: &ProxyUnderTest) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let mut api = Vec::with_capacity(LOAD_PROBES_COUNT_MAX);
    let mut conn = Vec::with_capacity(LOAD_PROBES_COUNT_MAX);
    let end = Instant::now() + Duration::from_secs(LOAD_MEASURE_SECS);
    while Instant::now() < end && api.len() < LOAD_PROBES_COUNT_MAX {
        let t = Instant::now();
        let (status, body) = http_call(proxy.api, "GET", "/version")?;
        anyhow::ensure!(status == 200, "GET /version: {status} {body}");
        api.push(t.elapsed());
        conn.push(one_connection(proxy.echo)?);
        std::thread::sleep(Duration::from_millis(LOAD_PROBE_INTERVAL_MS));
    }
    Ok((api, conn))
}
