//! Responsiveness under bulk traffic: a link whose sockets never block must
//! not hold a worker thread. Before the copy loop yielded, 64 full-speed
//! streams pushed the API's `GET /version` to a 360 ms median and a new
//! proxied connection to 1.2 s (measured with `chaos-proxy bench`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::*;

/// Bulk streams pushed through the proxy while it is probed.
const STREAMS_COUNT: usize = 16;
/// Probes of each kind (API call, new proxied connection).
const PROBES_COUNT: usize = 15;
/// Bound on the median probe. With the yielding copy loop the median is a
/// few milliseconds on a loaded 2-core VM; without it, hundreds.
const PROBE_MEDIAN_MS_MAX: u128 = 100;
/// Each bulk write.
const WRITE_BYTES: usize = 256 * 1024;

/// A blocking sink: one thread per connection reads and discards until EOF.
fn spawn_sink() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
    let addr = listener.local_addr().expect("sink addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; WRITE_BYTES];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// Blocking writers, one thread per stream, as fast as the proxy takes it.
struct Bulk {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Bulk {
    fn start(addr: SocketAddr, streams: usize) -> Bulk {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let threads = (0..streams)
            .map(|_| {
                let (stop, written) = (stop.clone(), written.clone());
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).expect("connect bulk");
                    s.set_write_timeout(Some(HANG_GUARD)).expect("timeout");
                    let chunk = vec![0x5a_u8; WRITE_BYTES];
                    while !stop.load(Relaxed) {
                        s.write_all(&chunk).expect("bulk write");
                        written.fetch_add(WRITE_BYTES as u64, Relaxed);
                    }
                })
            })
            .collect();
        Bulk { stop, written, threads }
    }

    /// Waits (bounded) until the streams have moved `bytes` in total.
    fn wait_written(&self, bytes: u64) {
        let deadline = Instant::now() + HANG_GUARD;
        while self.written.load(Relaxed) < bytes {
            assert!(Instant::now() < deadline, "the bulk streams did not get going");
            std::thread::yield_now();
        }
    }

    fn stop(self) {
        self.stop.store(true, Relaxed);
        for t in self.threads {
            t.join().expect("bulk writer");
        }
    }
}

/// `GET /version` on a fresh connection; returns how long the answer took.
fn api_probe(api: SocketAddr) -> Duration {
    let t = Instant::now();
    let mut s = TcpStream::connect(api).expect("connect api");
    s.set_read_timeout(Some(HANG_GUARD)).expect("timeout");
    s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    t.elapsed()
}

/// A new proxied connection: connect, one byte echoed, close.
fn connection_probe(addr: SocketAddr) -> Duration {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect proxy");
    s.set_read_timeout(Some(HANG_GUARD)).expect("timeout");
    s.write_all(b"n").expect("write");
    let mut byte = [0u8; 1];
    s.read_exact(&mut byte).expect("echo");
    t.elapsed()
}

fn median_ms(mut v: Vec<Duration>) -> u128 {
    v.sort_unstable();
    v[v.len() / 2].as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_new_connections_stay_responsive_under_bulk_streams() {
    let p = spawn_proxy().await;
    let echo = spawn_echo().await;
    let bulk_addr = p.create("bulk", spawn_sink()).await;
    let echo_addr = p.create("echo", echo.addr).await;
    let api = p.api;
    let bulk = Bulk::start(bulk_addr, STREAMS_COUNT);
    let (api_times, conn_times) = guard(
        "probes",
        tokio::task::spawn_blocking(move || {
            // Every stream at full speed before the first probe.
            bulk.wait_written((STREAMS_COUNT * 4 * WRITE_BYTES) as u64);
            let probes: Vec<(Duration, Duration)> = (0..PROBES_COUNT)
                .map(|_| (api_probe(api), connection_probe(echo_addr)))
                .collect();
            bulk.stop();
            probes.into_iter().unzip::<_, _, Vec<_>, Vec<_>>()
        }),
    )
    .await
    .expect("probe thread");
    let (api_ms, conn_ms) = (median_ms(api_times.clone()), median_ms(conn_times.clone()));
    eprintln!("under {STREAMS_COUNT} bulk streams: api {api_times:?}\n  new connection {conn_times:?}");
    assert!(api_ms < PROBE_MEDIAN_MS_MAX, "API median {api_ms} ms");
    assert!(conn_ms < PROBE_MEDIAN_MS_MAX, "new connection median {conn_ms} ms");
    p.shutdown().await;
}
