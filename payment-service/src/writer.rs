//! The single writer: one thread owns the only read-write connection and
//! commits requests in groups.
//!
//! SQLite allows one writer at a time, so more write connections would only
//! add lock waits. Requests queue in a bounded channel (full → the handler
//! answers 503). The thread takes whatever is queued (up to
//! [`BATCH_COUNT_MAX`]), runs each request in its own SAVEPOINT inside one
//! `BEGIN IMMEDIATE` transaction, commits once, and only then answers every
//! request of the batch. One fsync thus covers many payments (group commit),
//! one failing request rolls back only its savepoint, and no answer ever
//! leaves before the COMMIT that makes it true.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use anyhow::Context;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::clock;
use crate::config::Config;
use crate::db_error::DbError;
use crate::db_file::DbWatch;
use crate::db_lock::DbLock;
use crate::payment::PaymentRequest;
use crate::stats::Counters;
use crate::store::{self, Outcome, Wiped};

/// Requests committed together at most. Bounds the latency one batch adds
/// and the work lost to one failed COMMIT.
pub(crate) const BATCH_COUNT_MAX: usize = 512;

/// Longest wait for the writer thread to open the database at startup (the
/// lock is not waited for; opening may have to recover a large WAL).
const STARTUP_MS_MAX: u64 = 60_000;

/// What the writer thread is asked to do.
pub enum Op {
    /// `--dedup unique`, no processing delay: claim and execute in one step.
    PayKeyed {
        request: PaymentRequest,
        key: String,
        reply: Reply<Outcome>,
    },
    /// Two-phase path, phase one: lease the key.
    Claim {
        request: PaymentRequest,
        key: String,
        token: i64,
        reply: Reply<Outcome>,
    },
    /// Two-phase path, phase two: execute if the lease is still ours.
    Complete {
        request: PaymentRequest,
        key: String,
        token: i64,
        reply: Reply<Outcome>,
    },
    /// No key check at all (keyless, `--dedup off`, `check-then-insert`).
    Insert {
        request: PaymentRequest,
        key: Option<String>,
        reply: Reply<Outcome>,
    },
    Wipe {
        reply: Reply<Wiped>,
    },
    /// Delete stored responses older than the retention.
    Reap,
    /// Finish what is queued before this, then stop.
    Shutdown,
}

pub type Reply<T> = oneshot::Sender<Result<T, DbError>>;

/// A request's answer waiting for the batch's COMMIT.
enum Pending {
    Outcome(Reply<Outcome>, Result<Outcome, DbError>),
    Wiped(Reply<Wiped>, Result<Wiped, DbError>),
}

impl Pending {
    fn executed(&self) -> bool {
        matches!(self, Pending::Outcome(_, Ok(Outcome::Executed { .. })))
    }

    fn error(&self) -> Option<&DbError> {
        match self {
            Pending::Outcome(_, Err(e)) | Pending::Wiped(_, Err(e)) => Some(e),
            _ => None,
        }
    }

    fn send(self) {
        // A handler that stopped waiting (client gone) is fine: the commit stands.
        match self {
            Pending::Outcome(reply, result) => drop(reply.send(result)),
            Pending::Wiped(reply, result) => drop(reply.send(result)),
        }
    }

    fn fail(self, why: &DbError) {
        match self {
            Pending::Outcome(reply, _) => drop(reply.send(Err(why.clone()))),
            Pending::Wiped(reply, _) => drop(reply.send(Err(why.clone()))),
        }
    }
}

/// Crash injection for the lessons: kills the whole process at a commit
/// point with a seeded probability, so a run can be replayed.
struct CrashPoints {
    before_commit: f64,
    after_commit: f64,
    // Separate streams: the k-th executed payment gets the same rolls however
    // the payments happen to be grouped into batches.
    before_rng: Xoshiro256PlusPlus,
    after_rng: Xoshiro256PlusPlus,
}

impl CrashPoints {
    fn new(config: &Config) -> CrashPoints {
        CrashPoints {
            before_commit: config.crash_before_commit,
            after_commit: config.crash_after_commit,
            before_rng: Xoshiro256PlusPlus::seed_from_u64(config.seed ^ 0xB3F0_2E00_C0DE_0001),
            after_rng: Xoshiro256PlusPlus::seed_from_u64(config.seed ^ 0xAF7E_2C00_C0DE_0002),
        }
    }

    fn maybe_crash(rng: &mut Xoshiro256PlusPlus, probability: f64, executed: usize, point: &str) {
        if probability <= 0.0 {
            return;
        }
        for _ in 0..executed {
            if rng.random::<f64>() < probability {
                tracing::error!(point, "crash injected: killing the process");
                eprintln!("payment-service: crash injected {point} (--crash-{point} is set); kill -9 self");
                kill_self();
            }
        }
    }
}

/// Dies at once, like `kill -9`: no destructor, no flush, no answer. SIGKILL
/// rather than `abort()`, so desktops with core-dump collection do not store
/// a core for every injected crash.
fn kill_self() -> ! {
    #[cfg(unix)]
    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

/// The writer thread, seen from the service: its queue, a stop flag, and the
/// thread itself. Dropping it asks the thread to stop (see [`stop_soon`]).
///
/// [`stop_soon`]: WriterHandle::stop_soon
pub(crate) struct WriterHandle {
    pub(crate) queue: mpsc::Sender<Op>,
    pub(crate) watch: Arc<DbWatch>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts the writer thread: it takes the database lock, opens the database,
/// expires leases of the previous process, then serves the queue. Returns
/// once the database is open; blocks meanwhile, so call it from a blocking
/// context. On failure the thread has ended and the lock is released.
pub(crate) fn spawn(config: &Config, counters: Arc<Counters>) -> anyhow::Result<WriterHandle> {
    let (queue, rx) = mpsc::channel(config.queue_depth_max);
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let stop = Arc::new(AtomicBool::new(false));
    let (config, thread_stop) = (config.clone(), Arc::clone(&stop));
    let thread = std::thread::Builder::new()
        .name("payment-writer".into())
        .spawn(move || match Writer::open(&config, counters, thread_stop) {
            Ok(mut writer) => {
                let _ = ready_tx.send(Ok(Arc::clone(&writer.watch)));
                writer.run(rx);
            }
            // The writer (and with it the lock) is gone before this is sent.
            Err(e) => drop(ready_tx.send(Err(e))),
        })
        .context("cannot start the writer thread")?;
    let watch = ready_rx
        .recv_timeout(Duration::from_millis(STARTUP_MS_MAX))
        .map_err(|e| {
            stop.store(true, Ordering::SeqCst);
            match e {
                RecvTimeoutError::Timeout => anyhow::anyhow!("the database did not open within {STARTUP_MS_MAX} ms"),
                RecvTimeoutError::Disconnected => anyhow::anyhow!("the writer thread died while opening the database"),
            }
        })??;
    Ok(WriterHandle {
        queue,
        watch,
        stop,
        thread: Some(thread),
    })
}

impl WriterHandle {
    /// Asks the thread to stop after its current batch, without waiting and
    /// without blocking: what a drop on an error path needs.
    pub(crate) fn stop_soon(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes a thread waiting for work; a full queue wakes it anyway.
        let _ = self.queue.try_send(Op::Shutdown);
    }

    /// Lets the writer finish what is queued, then waits (bounded) for it.
    pub(crate) async fn stop(&mut self, wait: Duration) {
        if self.queue.send(Op::Shutdown).await.is_err() {
            tracing::warn!("the writer had already stopped");
        }
        let Some(thread) = self.thread.take() else { return };
        let joined = tokio::task::spawn_blocking(move || thread.join());
        match tokio::time::timeout(wait, joined).await {
            Ok(Ok(Ok(()))) => tracing::debug!("writer joined"),
            _ => tracing::error!("the writer did not stop cleanly"),
        }
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.stop_soon();
    }
}

pub(crate) fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

struct Writer {
    conn: Connection,
    watch: Arc<DbWatch>,
    crash: CrashPoints,
    retention_ms: i64,
    lease_ms: i64,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    // Last, so it is released after the connection closes.
    _lock: DbLock,
}

impl Writer {
    /// Everything the writer owns, opened in its own thread so that no
    /// SQLite call or fsync runs on an async worker.
    fn open(config: &Config, counters: Arc<Counters>, stop: Arc<AtomicBool>) -> anyhow::Result<Writer> {
        let lock = DbLock::acquire(&config.db)?;
        let db = config.db.display();
        let conn = store::open_writer(&config.db, config.synchronous)
            .with_context(|| format!("cannot open the database {db}"))?;
        let watch = DbWatch::record(&config.db).with_context(|| format!("cannot stat the database {db}"))?;
        let expired = store::expire_leases(&conn).with_context(|| format!("cannot update the database {db}"))?;
        if expired > 0 {
            tracing::warn!(
                keys = expired,
                "keys left in flight by a previous process; their retries take over"
            );
        }
        Ok(Writer {
            conn,
            watch: Arc::new(watch),
            crash: CrashPoints::new(config),
            retention_ms: duration_ms(config.key_retention),
            lease_ms: duration_ms(config.key_lease),
            counters,
            stop,
            _lock: lock,
        })
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(BATCH_COUNT_MAX);
        while !self.stop.load(Ordering::SeqCst) {
            let Some(first) = rx.blocking_recv() else { break };
            batch.push(first);
            while batch.len() < BATCH_COUNT_MAX {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            if let Some(at) = batch.iter().position(|op| matches!(op, Op::Shutdown)) {
                // Everything queued before the stop is answered; anything
                // after it is refused when the receiver drops.
                batch.truncate(at);
                self.stop.store(true, Ordering::SeqCst);
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
            }
        }
        tracing::debug!("writer stopped");
    }

    /// Runs a batch in one transaction and answers it, only after COMMIT and
    /// only while the database file is still the one at its path.
    fn commit_batch(&mut self, batch: &mut Vec<Op>) {
        let (started, requests) = (std::time::Instant::now(), batch.len());
        let mut pending = Vec::with_capacity(batch.len());
        let result = self
            .watch
            .check()
            .map_err(|e| annotate_replaced(e, "nothing was stored"))
            .and_then(|()| self.execute(batch, &mut pending))
            .and_then(|executed| {
                CrashPoints::maybe_crash(
                    &mut self.crash.after_rng,
                    self.crash.after_commit,
                    executed,
                    "after-commit",
                );
                // Committed, but to a file that a restart would not find:
                // the answer cannot be an acknowledgement.
                self.watch
                    .check()
                    .map_err(|e| annotate_replaced(e, "this request was committed to the old file and may be lost"))
            });
        match result {
            Ok(()) => {
                self.counters.recorded.batch(requests, started.elapsed());
                pending.into_iter().for_each(Pending::send);
            }
            Err(e) => {
                tracing::error!(error = %e, requests = pending.len() + batch.len(), "batch not acknowledged");
                pending.into_iter().for_each(|p| p.fail(&e));
                batch.drain(..).for_each(|op| op.refuse(&e));
            }
        }
        batch.clear();
    }

    /// BEGIN, one savepoint per request, COMMIT. Returns the number of
    /// payments executed. On failure, ops not reached are left in `batch`.
    fn execute(&mut self, batch: &mut Vec<Op>, pending: &mut Vec<Pending>) -> Result<usize, DbError> {
        let now_ms = clock::now_ms();
        let mut tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut ops = std::mem::take(batch).into_iter();
        let ran = run_ops(
            &mut tx,
            &mut ops,
            pending,
            now_ms,
            (self.lease_ms, self.retention_ms),
            &self.counters,
        );
        batch.extend(ops);
        ran?;
        let executed = pending.iter().filter(|p| p.executed()).count();
        CrashPoints::maybe_crash(
            &mut self.crash.before_rng,
            self.crash.before_commit,
            executed,
            "before-commit",
        );
        tx.commit()?;
        Ok(executed)
    }
}

fn annotate_replaced(e: DbError, what: &str) -> DbError {
    match e {
        DbError::FileReplaced(why) => DbError::FileReplaced(format!("{why}; {what}")),
        other => other,
    }
}

/// Runs each op in its own savepoint, until the ops run out or the
/// transaction fails.
fn run_ops(
    tx: &mut rusqlite::Transaction<'_>,
    ops: &mut impl Iterator<Item = Op>,
    pending: &mut Vec<Pending>,
    now_ms: i64,
    (lease_ms, retention_ms): (i64, i64),
    counters: &Counters,
) -> Result<(), DbError> {
    for op in ops {
        let sp = tx.savepoint()?;
        let (done, ok) = apply(&sp, op, now_ms, lease_ms, retention_ms, counters);
        if ok {
            sp.commit()?;
        } else {
            drop(sp); // rolls back this request only
        }
        pending.extend(done);
        // After some errors (I/O, a full disk) SQLite rolls back the whole
        // transaction, and what followed would run and commit outside it.
        // Stop: the batch failed, and nothing of it is stored.
        if tx.is_autocommit() {
            let cause = pending.last().and_then(Pending::error).cloned();
            return Err(cause.unwrap_or_else(|| DbError::Io("SQLite rolled the transaction back".into())));
        }
    }
    Ok(())
}

impl Op {
    /// Answers an op that was not executed.
    fn refuse(self, why: &DbError) {
        match self {
            Op::PayKeyed { reply, .. }
            | Op::Claim { reply, .. }
            | Op::Complete { reply, .. }
            | Op::Insert { reply, .. } => drop(reply.send(Err(why.clone()))),
            Op::Wipe { reply } => drop(reply.send(Err(why.clone()))),
            Op::Reap | Op::Shutdown => {}
        }
    }
}

/// Runs one request inside its savepoint. Returns the answer to send after
/// COMMIT and whether the savepoint should be kept.
fn apply(
    conn: &Connection,
    op: Op,
    now_ms: i64,
    lease_ms: i64,
    retention_ms: i64,
    counters: &Counters,
) -> (Option<Pending>, bool) {
    fn outcome(reply: Reply<Outcome>, r: Result<Outcome, DbError>) -> (Option<Pending>, bool) {
        let ok = r.is_ok();
        (Some(Pending::Outcome(reply, r)), ok)
    }
    match op {
        Op::PayKeyed { request, key, reply } => {
            outcome(reply, store::pay_keyed(conn, &request, &key, now_ms, retention_ms))
        }
        Op::Claim {
            request,
            key,
            token,
            reply,
        } => outcome(
            reply,
            store::claim(conn, &request, &key, token, now_ms, lease_ms, retention_ms),
        ),
        Op::Complete {
            request,
            key,
            token,
            reply,
        } => outcome(reply, store::complete(conn, &request, &key, token, now_ms)),
        Op::Insert { request, key, reply } => {
            let r = store::insert_unchecked(conn, &request, key.as_deref(), now_ms).map(|payment| {
                let body = payment.to_json();
                Outcome::Executed {
                    payment,
                    body,
                    takeover: false,
                }
            });
            outcome(reply, r)
        }
        Op::Wipe { reply } => {
            let r = store::wipe(conn);
            let ok = r.is_ok();
            (Some(Pending::Wiped(reply, r)), ok)
        }
        Op::Reap => match store::reap(conn, now_ms, retention_ms) {
            Ok(n) => {
                counters.keys_reaped.fetch_add(n as u64, Ordering::Relaxed);
                (None, true)
            }
            Err(e) => {
                tracing::warn!(error = %e, "reaping stored responses failed; will try again");
                (None, false)
            }
        },
        Op::Shutdown => (None, true),
    }
}
