//! The replay desk: a thread with a reader connection of its own in front of
//! the writer, for keyed requests under `--dedup unique`.
//!
//! It takes what is queued (up to [`DESK_BATCH_COUNT_MAX`]), reads each key's
//! row in one short read transaction, and answers on the spot every retry
//! whose stored answer makes the outcome certain (same request, completed,
//! within the retention): byte-identical, `Idempotent-Replayed: true`, and
//! never in the writer's queue. Everything else (a new key, a key in flight,
//! a mismatch, an expired answer, or a read that failed) goes on to the
//! writer, in arrival order, which decides as before. Batching keeps the cost
//! of the extra step to one thread wake-up per batch, not per request.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::clock;
use crate::db_error::{DbError, DbResult};
use crate::ops::{Done, Op};
use crate::readers::Readers;
use crate::stats::Counters;
use crate::store::{self, Outcome};

/// Requests looked up in one read transaction at most: bounds how long the
/// snapshot lives and the latency a batch adds.
pub(crate) const DESK_BATCH_COUNT_MAX: usize = 512;

/// The desk thread, seen from the service.
pub(crate) struct DeskHandle {
    pub(crate) queue: mpsc::Sender<Op>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the desk thread needs.
pub(crate) struct Desk {
    pub pool: Arc<Readers>,
    pub writer: mpsc::Sender<Op>,
    pub counters: Arc<Counters>,
    pub retention_ms: i64,
}

impl Desk {
    /// Starts the thread with a queue of `depth` requests.
    pub(crate) fn spawn(self, depth: usize) -> anyhow::Result<DeskHandle> {
        let (queue, rx) = mpsc::channel(depth);
        let thread = std::thread::Builder::new()
            .name("payment-desk".into())
            .spawn(move || self.run(rx))
            .context("cannot start the replay desk thread")?;
        Ok(DeskHandle {
            queue,
            thread: Some(thread),
        })
    }

    fn run(self, mut rx: mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(DESK_BATCH_COUNT_MAX);
        loop {
            let Some(first) = rx.blocking_recv() else { break };
            batch.push(first);
            while batch.len() < DESK_BATCH_COUNT_MAX {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let stop = batch.iter().position(|op| matches!(op, Op::Shutdown));
            if let Some(at) = stop {
                batch.truncate(at);
            }
            let answers = self.lookup(&batch).unwrap_or_else(|e| {
                tracing::debug!(error = %e, "replay desk: lookup failed; the writer decides");
                Vec::new()
            });
            let mut answers = answers.into_iter();
            for op in batch.drain(..) {
                match answers.next().flatten() {
                    Some(outcome) => op.answer(Ok(Done::Outcome(outcome)), &self.counters),
                    None => self.forward(op),
                }
            }
            if stop.is_some() {
                break;
            }
        }
        tracing::debug!("replay desk stopped");
    }

    /// Each request's certain replay, if it has one, read in one snapshot.
    /// Before any is answered, the file must still be the one the service
    /// opened (a replay from a replaced file would claim a success a restart
    /// forgets: then the writer refuses it); a batch without replays skips
    /// that check (two `stat`s).
    fn lookup(&self, batch: &[Op]) -> DbResult<Vec<Option<Outcome>>> {
        let now_ms = clock::now_ms();
        let answers: Vec<Option<Outcome>> = self.pool.run(|conn| {
            conn.snapshot(|tx| {
                batch
                    .iter()
                    .map(|op| match op {
                        Op::PayKeyed { request, key, .. } | Op::Claim { request, key, .. } => {
                            store::stored_answer(tx, request, key, now_ms, self.retention_ms)
                        }
                        _ => Ok(None),
                    })
                    .collect()
            })
        })?;
        if answers.iter().any(Option::is_some) {
            self.pool.check_file()?;
        }
        Ok(answers)
    }

    /// Hands a request to the writer; a full queue is a 503 with nothing stored.
    fn forward(&self, op: Op) {
        match self.writer.try_send(op) {
            Ok(()) => {}
            Err(TrySendError::Full(op)) => op.refuse(&DbError::QueueFull),
            Err(TrySendError::Closed(op)) => op.refuse(&DbError::Stopped),
        }
    }
}

impl DeskHandle {
    /// Without waiting: the desk answers or forwards what is queued, then stops.
    pub(crate) fn stop_soon(&self) {
        let _ = self.queue.try_send(Op::Shutdown);
    }

    /// Lets the desk pass on what is queued, then waits (bounded) for it.
    pub(crate) async fn stop(&mut self, wait: Duration) {
        let _ = self.queue.send(Op::Shutdown).await;
        let Some(thread) = self.thread.take() else { return };
        let joined = tokio::task::spawn_blocking(move || thread.join());
        if !matches!(tokio::time::timeout(wait, joined).await, Ok(Ok(Ok(())))) {
            tracing::error!("the replay desk did not stop cleanly");
        }
    }
}

impl Drop for DeskHandle {
    fn drop(&mut self) {
        self.stop_soon();
    }
}
