//! `payment-service bench --db-url postgres://...`: durable keyed payments/s
//! on SQLite and on PostgreSQL in the same run, with one and with three
//! replicas, next to PostgreSQL's own ceiling on this machine (pgbench's
//! single-row INSERT transaction at the same concurrencies).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};

use super::Running;
use super::http::{self, Load};
use crate::config::{Config, Synchronous};

/// Replica counts measured on each backend.
const REPLICA_COUNTS: [usize; 2] = [1, 3];
/// Seconds pgbench runs at each concurrency.
const PGBENCH_SECONDS: u32 = 10;
/// pgbench's worker threads (the machine's two cores).
const PGBENCH_THREADS: usize = 2;

/// One line of the table: a backend, a replica count, a concurrency.
struct Line {
    backend: &'static str,
    replicas: usize,
    concurrency: usize,
    per_s: f64,
}

/// Measures both backends and pgbench, and prints the table and ratios.
pub(crate) async fn run(
    admin_url: &str,
    dir: &Path,
    (payments, concurrencies): (usize, &[usize]),
    synchronous: Synchronous,
) -> anyhow::Result<()> {
    println!();
    println!("SQLite and PostgreSQL: keyed POST /payments acknowledged after a durable COMMIT,");
    println!("each replica a service in this process, clients spread over the replicas");
    let mut lines = Vec::new();
    for (index, &replicas) in REPLICA_COUNTS.iter().enumerate() {
        let file = dir.join(format!("replicas-{replicas}.db"));
        lines.extend(measure("sqlite", file, replicas, (payments, concurrencies), synchronous).await?);
        let (admin, name) = (admin_url.to_owned(), format!("bench_{}_{index}", std::process::id()));
        let url = tokio::task::spawn_blocking(move || crate::pg::fresh_database(&admin, &name)).await??;
        lines.extend(
            measure(
                "postgres",
                PathBuf::from(url),
                replicas,
                (payments, concurrencies),
                synchronous,
            )
            .await?,
        );
    }
    let ceiling = pgbench_ceiling(admin_url, concurrencies).await;
    print_table(&lines, concurrencies, ceiling.as_deref());
    Ok(())
}

/// Payments/s of `replicas` services on `db` at each concurrency.
async fn measure(
    backend: &'static str,
    db: PathBuf,
    replicas: usize,
    (payments, concurrencies): (usize, &[usize]),
    synchronous: Synchronous,
) -> anyhow::Result<Vec<Line>> {
    let mut services = Vec::with_capacity(replicas);
    for _ in 0..replicas {
        let mut config = Config::new(&db);
        config.synchronous = synchronous;
        config.replica = replicas > 1;
        services.push(Running::start(config).await?.0);
    }
    let addrs: Vec<_> = services.iter().map(|s| s.addr).collect();
    let mut lines = Vec::new();
    for (round, &concurrency) in concurrencies.iter().enumerate() {
        let started = Instant::now();
        let rounds = addrs.iter().enumerate().map(|(k, &addr)| {
            // Distinct keys per replica: `bench-{round}-{i}` with its own round.
            let load = Load::Pay {
                round: round * REPLICA_COUNTS.len() * 4 + k,
                replay: false,
            };
            let share = (concurrency / replicas).max(1);
            http::round(addr, load, payments / replicas, share)
        });
        for measured in futures_join(rounds).await {
            measured?;
        }
        let per_s = (payments / replicas * replicas) as f64 / started.elapsed().as_secs_f64();
        lines.push(Line {
            backend,
            replicas,
            concurrency,
            per_s,
        });
    }
    for service in services {
        service.stop().await?;
    }
    Ok(lines)
}

/// Runs the rounds concurrently, each its own task.
async fn futures_join<F>(rounds: impl Iterator<Item = F>) -> Vec<anyhow::Result<http::Measured>>
where
    F: std::future::Future<Output = anyhow::Result<http::Measured>> + Send + 'static,
{
    let tasks: Vec<_> = rounds.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(
            task.await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("a load task failed: {e}"))),
        );
    }
    out
}

/// pgbench's transactions/s of one single-row INSERT at each concurrency,
/// on a fresh database; None (with the reason printed) without pgbench.
async fn pgbench_ceiling(admin_url: &str, concurrencies: &[usize]) -> Option<Vec<f64>> {
    let (admin, list) = (admin_url.to_owned(), concurrencies.to_vec());
    match tokio::task::spawn_blocking(move || pgbench_all(&admin, &list)).await {
        Ok(Ok(tps)) => Some(tps),
        Ok(Err(e)) => {
            println!("  pgbench: not measured ({e:#})");
            None
        }
        Err(e) => {
            println!("  pgbench: not measured ({e})");
            None
        }
    }
}

fn pgbench_all(admin_url: &str, concurrencies: &[usize]) -> anyhow::Result<Vec<f64>> {
    let bin = newest_pgbench().context("no pgbench under /usr/lib/postgresql/*/bin")?;
    let url = crate::pg::fresh_database(admin_url, &format!("bench_pgbench_{}", std::process::id()))?;
    let mut client = crate::db::PgClient::new(crate::pg::connect(&url, "bench")?);
    client.batch_execute(
        "CREATE TABLE raw (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, k TEXT NOT NULL UNIQUE, amount_minor BIGINT NOT NULL)",
    )?;
    let script = tempfile::NamedTempFile::new()?;
    // A unique key per row, as the service's payments carry.
    std::fs::write(
        script.path(),
        "INSERT INTO raw (k, amount_minor) VALUES (md5(random()::text || clock_timestamp()::text), 100);\n",
    )?;
    concurrencies
        .iter()
        .map(|&c| pgbench_once(&bin, &url, script.path(), c))
        .collect()
}

fn pgbench_once(bin: &Path, url: &str, script: &Path, concurrency: usize) -> anyhow::Result<f64> {
    let output = std::process::Command::new(bin)
        .args([
            "-n",
            "-c",
            &concurrency.to_string(),
            "-j",
            &PGBENCH_THREADS.min(concurrency).to_string(),
        ])
        .args(["-T", &PGBENCH_SECONDS.to_string(), "-f"])
        .arg(script)
        .arg(url)
        .output()
        .context("cannot run pgbench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = ")?.split_whitespace().next()?.parse::<f64>().ok());
    match tps {
        Some(tps) if output.status.success() => Ok(tps),
        _ => bail!(
            "pgbench -c {concurrency}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    }
}

fn newest_pgbench() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin/pgbench")))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

fn print_table(lines: &[Line], concurrencies: &[usize], ceiling: Option<&[f64]>) {
    println!(
        "  {:>8}  {:>8}  {:>11}  {:>10}  {:>12}",
        "backend", "replicas", "concurrency", "payments/s", "÷ pgbench"
    );
    for line in lines {
        let at = concurrencies.iter().position(|&c| c == line.concurrency);
        let ratio = match (line.backend, ceiling, at) {
            ("postgres", Some(tps), Some(i)) => format!("{:.2}", line.per_s / tps[i]),
            _ => "-".to_owned(),
        };
        println!(
            "  {:>8}  {:>8}  {:>11}  {:>10.0}  {:>12}",
            line.backend, line.replicas, line.concurrency, line.per_s, ratio
        );
    }
    if let Some(tps) = ceiling {
        let each: Vec<String> = concurrencies
            .iter()
            .zip(tps)
            .map(|(c, t)| format!("c={c}: {t:.0}"))
            .collect();
        println!(
            "  pgbench, one single-row INSERT per transaction ({PGBENCH_SECONDS} s each): {} tps",
            each.join(", ")
        );
    }
}
