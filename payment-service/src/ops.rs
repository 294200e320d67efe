//! What the writer thread is asked to do, how each request runs inside the
//! batch's transaction, and how its answer is sent (and counted) once the
//! COMMIT has made it true.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use crate::batch::{Batch, Step};
use crate::db_error::DbError;
use crate::outbox::{self, Marks};
use crate::payment::PaymentRequest;
use crate::readers::Readers;
use crate::stats::Counters;
use crate::store::{self, Book, Outcome, Wiped};
use crate::totals::{self, Delta, LastAudit};

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
        lease: store::Lease,
        reply: Reply<Outcome>,
    },
    /// Two-phase path, phase two: execute if the lease is still ours.
    Complete {
        request: PaymentRequest,
        key: String,
        lease: store::Lease,
        reply: Reply<Outcome>,
    },
    /// No key check at all (keyless, `--dedup off`, `check-then-insert`).
    Insert {
        request: PaymentRequest,
        key: Option<String>,
        reply: Reply<Outcome>,
    },
    /// `POST /payments/batch`: one step of a batch (all its items in this op).
    Batch {
        batch: Arc<Batch>,
        step: Step,
        reply: Reply<Outcome>,
    },
    /// A write of the workshop's exercise (`--dedup exercise`), built by
    /// `exercise_kit`: it runs in the batch's transaction like the others,
    /// and its answer, too, waits for the COMMIT.
    Exercise {
        work: crate::exercise_kit::Work,
        reply: Reply<Outcome>,
    },
    /// Delete the whole ledger (a fresh database file where possible); the
    /// reader pools whose connections must be closed before the swap.
    Wipe {
        reply: Reply<Wiped>,
        pools: Vec<Arc<Readers>>,
    },
    /// Delete one step of stored responses older than the retention; the
    /// answer is how many, so the reaper knows whether to go on.
    Reap { reply: Reply<usize> },
    /// Expire the leases of replicas found dead (their liveness lock was
    /// free); the answer is how many.
    ExpireLeases { dead: Vec<i64>, reply: Reply<usize> },
    /// The outbox relay's results for a round: delivered, refused, retry at.
    OutboxMark { marks: Marks, reply: Reply<usize> },
    /// `POST /outbox/redeliver`: events delivered within the window, pending again.
    Redeliver { window_ms: i64, reply: Reply<usize> },
    /// Remember an audit's result on the ledger it audited.
    RecordAudit { ledger_uid: i64, audit: LastAudit },
    /// Finish what is queued before this, then stop.
    Shutdown,
}

pub type Reply<T> = oneshot::Sender<Result<T, DbError>>;

/// What an op produced inside the transaction, waiting for the COMMIT.
pub(crate) enum Done {
    Outcome(Outcome),
    Rows(usize),
    Nothing,
}

/// Times and limits an op runs with.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    pub now_ms: i64,
    pub lease_ms: i64,
    pub retention_ms: i64,
    /// `--notify outbox`: every payment booked gets its event.
    pub outbox: bool,
}

impl Clock {
    pub(crate) fn book(self) -> Book {
        Book {
            now_ms: self.now_ms,
            outbox: self.outbox,
        }
    }
}

/// Events a redelivery touches at most: one writer op of this size holds the
/// writer for about a hundred milliseconds.
pub(crate) const REDELIVER_ROWS_MAX: usize = 50_000;

impl Op {
    /// Runs the op on the writer's transaction, adding its change to the
    /// figures to `totals`. An error has written nothing unless the
    /// connection's change count moved (see `writer.rs`).
    pub(crate) fn run(&self, conn: &crate::db::Connection, t: Clock, totals: &mut Delta) -> Result<Done, DbError> {
        let outcome = match self {
            Op::PayKeyed { request, key, .. } => {
                store::pay_keyed(conn, request, key, (t.book(), t.retention_ms), totals)?
            }
            Op::Claim {
                request, key, lease, ..
            } => store::claim(
                conn,
                request,
                (key, *lease),
                (t.now_ms, t.lease_ms, t.retention_ms),
                totals,
            )?,
            Op::Complete {
                request, key, lease, ..
            } => store::complete(conn, request, (key, *lease), t.book(), totals)?,
            Op::Insert { request, key, .. } => {
                let payment = store::insert_unchecked(conn, request, key.as_deref(), t.book(), totals)?;
                let body = request.answer(payment.id, key.as_deref(), payment.created_at_ms);
                Outcome::Executed {
                    payment,
                    body,
                    takeover: false,
                }
            }
            Op::Exercise { work, .. } => work(conn, t.book(), totals)?,
            Op::Batch { batch, step, .. } => crate::batch::run(conn, batch, *step, t, totals)?,
            Op::OutboxMark { marks, .. } => return Ok(Done::Rows(outbox::apply(conn, marks, t.now_ms, totals)?)),
            Op::Redeliver { window_ms, .. } => {
                let n = outbox::redeliver(conn, (t.now_ms, *window_ms), REDELIVER_ROWS_MAX, totals)?;
                return Ok(Done::Rows(n));
            }
            Op::Reap { .. } => return Ok(Done::Rows(store::reap(conn, t.now_ms, t.retention_ms, totals)?)),
            Op::ExpireLeases { dead, .. } => return Ok(Done::Rows(store::expire_leases_of(conn, dead)?)),
            Op::RecordAudit { ledger_uid, audit } => {
                totals::record_audit(conn, *ledger_uid, audit)?;
                return Ok(Done::Nothing);
            }
            // The writer runs a wipe on its own, outside any batch.
            Op::Wipe { .. } | Op::Shutdown => return Ok(Done::Nothing),
        };
        Ok(Done::Outcome(outcome))
    }

    /// True for an op that executed a payment (for the crash dice).
    pub(crate) fn executed(result: &Result<Done, DbError>) -> bool {
        matches!(
            result,
            Ok(Done::Outcome(Outcome::Executed { .. } | Outcome::ExecutedBatch { .. }))
        )
    }

    /// After the COMMIT: counts what happened, whoever still waits for it (a
    /// handler that stopped waiting is fine: the commit stands), and answers.
    pub(crate) fn answer(self, result: Result<Done, DbError>, counters: &Counters) {
        match (self, result) {
            (
                Op::PayKeyed { reply, .. }
                | Op::Claim { reply, .. }
                | Op::Complete { reply, .. }
                | Op::Insert { reply, .. }
                | Op::Batch { reply, .. }
                | Op::Exercise { reply, .. },
                result,
            ) => {
                let result = result.and_then(|done| match done {
                    Done::Outcome(outcome) => Ok(outcome),
                    _ => Err(DbError::Other("the writer lost an answer".into())),
                });
                if let Ok(outcome) = &result {
                    count(counters, outcome);
                }
                drop(reply.send(result));
            }
            (Op::Reap { reply }, result) => {
                let reaped = result.map(|done| match done {
                    Done::Rows(n) => n,
                    _ => 0,
                });
                match &reaped {
                    Ok(n) => drop(counters.keys_reaped.fetch_add(*n as u64, Ordering::Relaxed)),
                    Err(e) => tracing::warn!(error = %e, "reaping stored responses failed; will try again"),
                }
                drop(reply.send(reaped));
            }
            (Op::ExpireLeases { reply, .. } | Op::OutboxMark { reply, .. } | Op::Redeliver { reply, .. }, result) => {
                drop(reply.send(result.map(|done| match done {
                    Done::Rows(n) => n,
                    _ => 0,
                })));
            }
            (Op::RecordAudit { .. }, Err(e)) => tracing::warn!(error = %e, "the audit's result was not recorded"),
            (Op::Wipe { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (Op::RecordAudit { .. } | Op::Wipe { .. } | Op::Shutdown, _) => {}
        }
    }

    /// Answers an op that was not executed (or whose batch did not commit).
    pub(crate) fn refuse(self, why: &DbError) {
        self.answer(Err(why.clone()), &Counters::default());
    }
}

/// The counters an answer moves: counted where the answer is made (the
/// writer after its COMMIT, or a reader), never by the handler that may have
/// stopped waiting for it.
pub(crate) fn count(counters: &Counters, outcome: &Outcome) {
    match outcome {
        Outcome::Executed { takeover, .. } => {
            Counters::bump(&counters.executed);
            if *takeover {
                Counters::bump(&counters.lease_takeovers);
            }
        }
        Outcome::ExecutedBatch { payments, takeover, .. } => {
            counters.executed.fetch_add(payments.len() as u64, Ordering::Relaxed);
            if *takeover {
                Counters::bump(&counters.lease_takeovers);
            }
        }
        Outcome::Replayed { from_ledger, .. } => {
            Counters::bump(&counters.replayed);
            if *from_ledger {
                Counters::bump(&counters.replayed_from_ledger);
            }
        }
        Outcome::Claimed { takeover: true } => Counters::bump(&counters.lease_takeovers),
        _ => {}
    }
}
