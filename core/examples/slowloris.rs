//! Measures what a slow-client (slowloris) attack does to ordinary requests.
//!
//! ```sh
//! cargo run --release -p eo-core --example slowloris -- 127.0.0.1:8080 /health 800 20
//! ```
//!
//! Opens CONNECTIONS connections that each send a request head one byte a
//! second and never finish it (reconnecting when the server closes them, as
//! an attacker would), and meanwhile sends one ordinary `GET PATH` every 10 ms
//! on a fresh connection. Prints the ordinary requests' latency before and
//! during the attack. Loopback only: it refuses any other address.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An ordinary request that takes longer than this counts as failed.
const ORDINARY_TIMEOUT_MS: u64 = 10_000;
/// Pause between two ordinary requests.
const ORDINARY_EVERY_MS: u64 = 10;
/// The attack's pace: one header byte per connection this often.
const TRICKLE_EVERY_MS: u64 = 1_000;
/// Attacking connections at most, so a typo cannot exhaust this machine.
const CONNECTIONS_MAX: usize = 10_000;
/// The longest run.
const SECONDS_MAX: u64 = 600;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [target, path, connections, seconds] = args.as_slice() else {
        return Err("usage: slowloris ADDR PATH CONNECTIONS SECONDS (e.g. 127.0.0.1:8080 /health 800 20)".into());
    };
    let target: SocketAddr = target.parse()?;
    if !target.ip().is_loopback() {
        return Err("slowloris only attacks loopback addresses".into());
    }
    let connections: usize = connections.parse::<usize>()?.min(CONNECTIONS_MAX);
    let seconds: u64 = seconds.parse::<u64>()?.min(SECONDS_MAX);
    eo_core::serve::raise_open_files_limit();

    let before = ordinary(target, path, Duration::from_secs(3)).await;
    report("before the attack", &before);
    let until = Instant::now() + Duration::from_secs(seconds);
    let attackers: Vec<_> = (0..connections).map(|_| tokio::spawn(attack(target, until))).collect();
    // Let the attack build up before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = ordinary(target, path, until.saturating_duration_since(Instant::now())).await;
    let mut held = 0u64;
    for a in attackers {
        held += a.await.unwrap_or(0);
    }
    report(&format!("during {connections} slow connections"), &during);
    println!("attack: {held} connections opened in all (each reopened when the server closed it)");
    Ok(())
}

/// Ordinary requests for `span`: latencies in µs of the answered, and failures.
async fn ordinary(target: SocketAddr, path: &str, span: Duration) -> (Vec<u64>, u64) {
    let until = Instant::now() + span;
    let (mut latencies, mut failed) = (Vec::new(), 0u64);
    while Instant::now() < until {
        let start = Instant::now();
        let call = tokio::time::timeout(Duration::from_millis(ORDINARY_TIMEOUT_MS), get(target, path));
        match call.await {
            Ok(Ok(true)) => latencies.push(start.elapsed().as_micros() as u64),
            _ => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(ORDINARY_EVERY_MS)).await;
    }
    (latencies, failed)
}

async fn get(target: SocketAddr, path: &str) -> std::io::Result<bool> {
    let mut s = TcpStream::connect(target).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await?;
    Ok(head.starts_with(b"HTTP/1.1 2"))
}

/// One attacker: a head trickled a byte a second, reopened when closed.
async fn attack(target: SocketAddr, until: Instant) -> u64 {
    let mut opened = 0;
    while Instant::now() < until {
        let Ok(mut s) = TcpStream::connect(target).await else {
            tokio::time::sleep(Duration::from_millis(TRICKLE_EVERY_MS)).await;
            continue;
        };
        opened += 1;
        if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.is_err() {
            continue;
        }
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(TRICKLE_EVERY_MS)).await;
            if s.write_all(b"X").await.is_err() {
                break;
            }
        }
    }
    opened
}

fn report(label: &str, (latencies, failed): &(Vec<u64>, u64)) {
    let mut sorted = latencies.clone();
    sorted.sort_unstable();
    let at = |q: f64| eo_core::measure::quantile(&sorted, q);
    match (at(0.5), at(0.99), sorted.last()) {
        (Some(p50), Some(p99), Some(max)) => println!(
            "{label}: {} answered, {failed} failed; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            sorted.len(),
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
            *max as f64 / 1000.0
        ),
        _ => println!("{label}: none answered, {failed} failed"),
    }
}
