//! The writer alone: keyed payments handed straight to the writer's batch
//! code (`writer::Alone`), with no HTTP, no replay desk and no queue, so
//! its CPU time per payment is measured apart from everything around it.
//! `payment-service bench --only writer` runs just this, for a profiler
//! (`perf record`, `valgrind --tool=callgrind`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, bail};
use tokio::sync::oneshot;

use crate::config::{Config, Synchronous};
use crate::payment::PaymentRequest;
use crate::stats::Counters;
use crate::store::Outcome;
use crate::writer::{Alone, Op};

/// What the writer alone did with one group size.
pub(crate) struct WriterAlone {
    pub batch: usize,
    pub per_s: f64,
    pub cpu_us_per_payment: f64,
}

/// `count` new keyed payments (the HTTP load's accounts and amount) in
/// groups of `batch`, each group one transaction, on a fresh file in `dir`.
pub(crate) fn run(dir: &Path, count: usize, batch: usize, synchronous: Synchronous) -> anyhow::Result<WriterAlone> {
    let mut config = Config::new(dir.join(format!("writer-{batch}.db")));
    config.synchronous = synchronous;
    let counters = Arc::new(Counters::default());
    let request = PaymentRequest::from_json(super::http::BODY.as_bytes())
        .map_err(|e| anyhow::anyhow!("the benchmark's payment is refused: {}", e.detail))?;
    let mut writer = Alone::open(&config, Arc::clone(&counters))?;
    let started = Instant::now();
    let mut paid = 0;
    while paid < count {
        let n = batch.min(count - paid);
        let (mut ops, replies): (Vec<Op>, Vec<_>) = (paid..paid + n).map(|i| payment(&request, i)).unzip();
        writer.commit(&mut ops);
        for (i, mut reply) in replies.into_iter().enumerate() {
            match reply.try_recv() {
                Ok(Ok(Outcome::Executed { .. })) => {}
                other => bail!("payment {} was not executed: {other:?}", paid + i),
            }
        }
        paid += n;
    }
    let elapsed = started.elapsed();
    let cpu_ns = counters.writer_cpu_ns.load(Ordering::Relaxed);
    Ok(WriterAlone {
        batch,
        per_s: count as f64 / elapsed.as_secs_f64(),
        cpu_us_per_payment: cpu_ns as f64 / 1000.0 / count as f64,
    })
}

type Replied = oneshot::Receiver<Result<Outcome, crate::db_error::DbError>>;

/// The `i`-th payment of the run: the HTTP load's request under a key of its own.
fn payment(request: &PaymentRequest, i: usize) -> (Op, Replied) {
    let (reply, rx) = oneshot::channel();
    let op = Op::PayKeyed {
        request: request.clone(),
        key: format!("alone-{i}"),
        reply,
    };
    (op, rx)
}

/// Prints the writer alone at each group size.
pub(crate) fn report(dir: &Path, count: usize, batches: &[usize], synchronous: Synchronous) -> anyhow::Result<()> {
    println!();
    println!("the writer alone: new keyed payments handed to its batch code, no HTTP, one transaction per group");
    println!("  {:>6}  {:>10}  {:>13}", "group", "payments/s", "writer µs/pay");
    for &batch in batches {
        let m = run(dir, count, batch, synchronous).with_context(|| format!("the writer alone, groups of {batch}"))?;
        println!("  {:>6}  {:>10.0}  {:>13.1}", m.batch, m.per_s, m.cpu_us_per_payment);
    }
    Ok(())
}
