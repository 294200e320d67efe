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
use std::sync::atomic::Ordering;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::clock;
use crate::config::Config;
use crate::payment::PaymentRequest;
use crate::stats::Counters;
use crate::store::{self, Outcome, Wiped};

/// Requests committed together at most. Bounds the latency one batch adds
/// and the work lost to one failed COMMIT.
pub const BATCH_COUNT_MAX: usize = 512;

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

pub type Reply<T> = oneshot::Sender<Result<T, String>>;

/// A request's answer waiting for the batch's COMMIT.
enum Pending {
    Outcome(Reply<Outcome>, Result<Outcome, String>),
    Wiped(Reply<Wiped>, Result<Wiped, String>),
}

impl Pending {
    fn executed(&self) -> bool {
        matches!(self, Pending::Outcome(_, Ok(Outcome::Executed { .. })))
    }

    fn send(self) {
        // A handler that stopped waiting (client gone) is fine: the commit stands.
        match self {
            Pending::Outcome(reply, result) => drop(reply.send(result)),
            Pending::Wiped(reply, result) => drop(reply.send(result)),
        }
    }

    fn fail(self, why: &str) {
        match self {
            Pending::Outcome(reply, _) => drop(reply.send(Err(why.to_owned()))),
            Pending::Wiped(reply, _) => drop(reply.send(Err(why.to_owned()))),
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

/// Starts the writer thread on an open connection. Returns the queue's sender
/// and the thread's handle.
pub fn spawn(
    conn: Connection,
    config: &Config,
    counters: Arc<Counters>,
) -> std::io::Result<(mpsc::Sender<Op>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(config.queue_depth_max);
    let mut writer = Writer {
        conn,
        crash: CrashPoints::new(config),
        retention_ms: duration_ms(config.key_retention),
        lease_ms: duration_ms(config.key_lease),
        counters,
    };
    let handle = std::thread::Builder::new()
        .name("payment-writer".into())
        .spawn(move || writer.run(rx))?;
    Ok((tx, handle))
}

pub fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

struct Writer {
    conn: Connection,
    crash: CrashPoints,
    retention_ms: i64,
    lease_ms: i64,
    counters: Arc<Counters>,
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(BATCH_COUNT_MAX);
        let mut stopping = false;
        while !stopping {
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
                stopping = true;
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
            }
        }
        tracing::debug!("writer stopped");
    }

    fn commit_batch(&mut self, batch: &mut Vec<Op>) {
        let now_ms = clock::now_ms();
        let mut pending = Vec::with_capacity(batch.len());
        // The number of payments this batch executes, once it has run.
        let result = (|| -> rusqlite::Result<usize> {
            let mut tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for op in batch.drain(..) {
                let sp = tx.savepoint()?;
                let (done, ok) = apply(&sp, op, now_ms, self.lease_ms, self.retention_ms, &self.counters);
                if ok {
                    sp.commit()?;
                } else {
                    drop(sp); // rolls back this request only
                }
                if let Some(done) = done {
                    pending.push(done);
                }
            }
            let executed = pending.iter().filter(|p| p.executed()).count();
            CrashPoints::maybe_crash(
                &mut self.crash.before_rng,
                self.crash.before_commit,
                executed,
                "before-commit",
            );
            tx.commit().map(|()| executed)
        })();
        batch.clear();
        match result {
            Ok(executed) => {
                CrashPoints::maybe_crash(
                    &mut self.crash.after_rng,
                    self.crash.after_commit,
                    executed,
                    "after-commit",
                );
                pending.into_iter().for_each(Pending::send);
            }
            Err(e) => {
                tracing::error!(error = %e, requests = pending.len(), "batch rolled back");
                let why = format!("the database refused the commit: {e}");
                pending.into_iter().for_each(|p| p.fail(&why));
            }
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
    fn outcome(reply: Reply<Outcome>, r: rusqlite::Result<Outcome>) -> (Option<Pending>, bool) {
        let ok = r.is_ok();
        (Some(Pending::Outcome(reply, r.map_err(|e| e.to_string()))), ok)
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
            (Some(Pending::Wiped(reply, r.map_err(|e| e.to_string()))), ok)
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
