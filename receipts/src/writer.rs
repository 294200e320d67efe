//! The single writer: one thread owns the only read-write connection and
//! commits deliveries in groups.
//!
//! Deliveries queue in a bounded channel (full → 503, nothing stored). The
//! thread takes what is queued (at most [`BATCH_COUNT_MAX`]), runs each in
//! its own savepoint inside one `BEGIN IMMEDIATE` transaction, adds the
//! batch's change to the figures, commits once, and only then answers every
//! delivery of the batch: one fsync covers many receipts, and no
//! acknowledgement leaves before the COMMIT that makes it true. Because the
//! one thread runs deliveries one after the other, two deliveries of the
//! same event (in one batch or in two) never both find the inbox empty.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use anyhow::Context;
use eo_core::wire::PaymentEvent;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::config::{BATCH_COUNT_MAX, Config, DedupMode};
use crate::db_error::{DbError, DbResult};
use crate::db_lock::DbLock;
use crate::schema;
use crate::stats::Counters;
use crate::store::{self, Delivered, Delta};

/// Longest wait for the writer thread to open the database at start-up
/// (SQLite may have to recover a large WAL left by a crash).
const STARTUP_MS_MAX: u64 = 600_000;

/// What the writer is asked to do.
pub(crate) enum Op {
    Deliver {
        event: PaymentEvent,
        reply: oneshot::Sender<DbResult<Delivered>>,
    },
    /// Finish what was queued before, then stop.
    Shutdown,
}

/// The writer thread, seen from the service. Dropping it asks the thread to
/// stop (a drop guard: an early `?` or a panic still releases the database).
pub(crate) struct WriterHandle {
    pub(crate) queue: mpsc::Sender<Op>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts the writer thread: it takes the database lock and opens the
/// database itself (no SQLite call on an async worker). Returns once the
/// database is open, so it blocks: call it from a blocking context. On
/// failure the thread has ended and the lock is released.
pub(crate) fn spawn(config: &Config, counters: Arc<Counters>) -> anyhow::Result<WriterHandle> {
    let (queue, rx) = mpsc::channel(config.queue_depth_max);
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let stop = Arc::new(AtomicBool::new(false));
    let (db, dedup, thread_stop) = (config.db.clone(), config.dedup, Arc::clone(&stop));
    let thread = std::thread::Builder::new()
        .name("receipts-writer".into())
        .spawn(move || match Writer::open(&db, dedup, counters, thread_stop) {
            Ok(mut writer) => {
                let _ = ready_tx.send(Ok(()));
                writer.run(rx);
            }
            Err(e) => drop(ready_tx.send(Err(e))),
        })
        .context("cannot start the writer thread")?;
    ready_rx
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
        stop,
        thread: Some(thread),
    })
}

impl WriterHandle {
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
        // Without blocking: the thread stops after its current batch; a
        // thread waiting for work is woken by the Shutdown (or by the queue
        // closing when the last sender is dropped).
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.queue.try_send(Op::Shutdown);
    }
}

struct Writer {
    conn: Connection,
    dedup: DedupMode,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    // Last, so it is released after the connection closes.
    _lock: DbLock,
}

impl Writer {
    fn open(db: &Path, dedup: DedupMode, counters: Arc<Counters>, stop: Arc<AtomicBool>) -> anyhow::Result<Writer> {
        let lock = DbLock::acquire(db)?;
        let conn = schema::open_writer(db).with_context(|| format!("cannot open the database {}", db.display()))?;
        Ok(Writer {
            conn,
            dedup,
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
                // What was queued before the stop is answered; what comes
                // after is refused when the receiver drops.
                batch.truncate(at);
                self.stop.store(true, Ordering::SeqCst);
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
            }
        }
        tracing::debug!("writer stopped");
    }

    /// Runs a batch in one transaction and answers it, only after COMMIT.
    fn commit_batch(&mut self, batch: &mut Vec<Op>) {
        let now_ms = i64::try_from(eo_core::wire::unix_us_now() / 1000).unwrap_or(i64::MAX);
        match run_batch(&self.conn, batch, self.dedup, now_ms) {
            Ok(results) => {
                Counters::bump(&self.counters.writer_commits);
                for (op, result) in batch.drain(..).zip(results) {
                    if let Op::Deliver { reply, .. } = op {
                        // The handler may have stopped waiting; the receipt
                        // is committed all the same.
                        let _ = reply.send(result);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, deliveries = batch.len(), "batch not committed; nothing of it is stored");
                for op in batch.drain(..) {
                    if let Op::Deliver { reply, .. } = op {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// BEGIN, each delivery in its own savepoint (a refused one leaves nothing
/// behind), the batch's change to the figures, COMMIT. An error that ends
/// the transaction (I/O, a full disk) fails the whole batch: nothing of it
/// is stored.
fn run_batch(conn: &Connection, batch: &[Op], dedup: DedupMode, now_ms: i64) -> DbResult<Vec<DbResult<Delivered>>> {
    let tx = Tx::begin(conn)?;
    let mut figures = Delta::default();
    let mut results = Vec::with_capacity(batch.len());
    for op in batch {
        let Op::Deliver { event, .. } = op else {
            results.push(Err(DbError::Stopped));
            continue;
        };
        conn.prepare_cached("SAVEPOINT delivery")?.execute([])?;
        let mut delta = Delta::default();
        let result = store::deliver(conn, event, dedup, now_ms, &mut delta);
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back.
            return Err(result
                .err()
                .unwrap_or_else(|| DbError::Io("SQLite rolled the transaction back".into())));
        }
        match &result {
            Ok(_) => figures += delta,
            Err(_) => conn.prepare_cached("ROLLBACK TO delivery")?.execute([]).map(drop)?,
        }
        conn.prepare_cached("RELEASE delivery")?.execute([])?;
        results.push(result);
    }
    store::add_totals(conn, &figures)?;
    tx.commit()?;
    Ok(results)
}

/// `BEGIN IMMEDIATE` ... `COMMIT` through cached statements; rolled back if
/// dropped uncommitted.
struct Tx<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> Tx<'c> {
    fn begin(conn: &'c Connection) -> rusqlite::Result<Tx<'c>> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(Tx { conn, open: true })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}
