//! The single writer: one thread owns the only read-write connection and
//! commits requests in groups.
//!
//! SQLite allows one writer at a time, so more write connections would only
//! add lock waits. Requests queue in a bounded channel (full → the handler
//! answers 503). The thread takes whatever is queued (up to
//! [`BATCH_COUNT_MAX`]), runs them in one `BEGIN IMMEDIATE` transaction,
//! commits once, and only then answers every request of the batch. One fsync
//! thus covers many payments (group commit), and no answer ever leaves
//! before the COMMIT that makes it true.
//!
//! No savepoint per request: every write in `store` checks before its first
//! write, and a refused statement undoes itself, so a refused request has
//! written nothing and the others go on. Should a request ever fail after
//! writing (the connection's change count moved), the whole transaction is
//! rolled back and the batch runs again with a savepoint around each request.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use anyhow::Context;

use crate::db::{Connection, Dialect, Savepoint};
use crate::pg;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use tokio::sync::{Notify, mpsc};

use crate::balances;
use crate::clock;
use crate::config::Synchronous;
use crate::config::{Config, NotifyMode};
use crate::db_error::DbError;
use crate::db_error::DbResult;
use crate::db_file::DbWatch;
use crate::db_lock::{Presence, ReplicaId, Sharing};
use crate::generation;
use crate::ops::{Clock, Done};
pub use crate::ops::{Op, Reply};
use crate::readers::Readers;
use crate::stats::Counters;
use crate::store::{self, Wiped};
use crate::totals::{self, Delta};

/// Requests committed together at most. Bounds the latency one batch adds
/// and the work lost to one failed COMMIT.
pub(crate) const BATCH_COUNT_MAX: usize = 512;

/// Longest wait for the writer thread to open the database at startup (the
/// lock is not waited for; opening may have to recover a large WAL, or bring
/// the file of an older version up to date).
const STARTUP_MS_MAX: u64 = 600_000;

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
pub(crate) fn kill_self() -> ! {
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
    /// This service's replica id: its leases carry it.
    pub(crate) replica: ReplicaId,
    /// Shared with the replica watcher (`lib.rs`).
    pub(crate) presence: Arc<Presence>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts the writer thread: it takes the database lock and its replica's
/// liveness lock, opens the database, expires the leases of dead replicas,
/// then serves the queue. Returns
/// once the database is open; blocks meanwhile, so call it from a blocking
/// context. On failure the thread has ended and the lock is released.
pub(crate) fn spawn(config: &Config, counters: Arc<Counters>, relay: Arc<Notify>) -> anyhow::Result<WriterHandle> {
    let (queue, rx) = mpsc::channel(config.queue_depth_max);
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let stop = Arc::new(AtomicBool::new(false));
    let (config, thread_stop) = (config.clone(), Arc::clone(&stop));
    let thread = std::thread::Builder::new()
        .name("payment-writer".into())
        .spawn(move || match Writer::open(&config, counters, thread_stop, relay) {
            Ok(mut writer) => {
                let _ = ready_tx.send(Ok((Arc::clone(&writer.watch), Arc::clone(&writer.presence))));
                writer.run(rx);
            }
            // The writer (and with it the lock) is gone before this is sent.
            Err(e) => drop(ready_tx.send(Err(e))),
        })
        .context("cannot start the writer thread")?;
    let (watch, presence) = ready_rx
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
        replica: presence.id(),
        presence,
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

/// The writer without its thread and queue, for the benchmark: opened as
/// the service opens it, committing the batches it is given on the calling
/// thread through the same code ([`Writer::commit_batch`]), so its CPU time
/// per payment can be measured (and profiled) apart from HTTP.
pub(crate) struct Alone(Writer);

impl Alone {
    pub(crate) fn open(config: &Config, counters: Arc<Counters>) -> anyhow::Result<Alone> {
        let stop = Arc::new(AtomicBool::new(false));
        Writer::open(config, counters, stop, Arc::new(Notify::new())).map(Alone)
    }

    /// Runs `batch` as one transaction and answers its ops.
    pub(crate) fn commit(&mut self, batch: &mut Vec<Op>) {
        self.0.commit_batch(batch);
    }
}

impl Drop for Alone {
    fn drop(&mut self) {
        self.0.release_own_leases();
    }
}

pub(crate) fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

struct Writer {
    /// None only between closing the old file and opening the fresh one in
    /// a DELETE; a batch meanwhile (none can run) would be refused.
    conn: Option<Connection>,
    db: PathBuf,
    synchronous: Synchronous,
    watch: Arc<DbWatch>,
    crash: CrashPoints,
    retention_ms: i64,
    lease_ms: i64,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    /// Shared by replicas: then a DELETE never swaps the file (see `wipe`).
    sharing: Sharing,
    /// `--notify outbox`: payments are booked with their events.
    outbox: bool,
    /// Woken after a COMMIT that made events pending, so the relay need not poll.
    relay: Arc<Notify>,
    // Last, so it is released after the connection closes.
    presence: Arc<Presence>,
}

impl Writer {
    /// Everything the writer owns, opened in its own thread so that no
    /// SQLite call or fsync runs on an async worker.
    fn open(
        config: &Config,
        counters: Arc<Counters>,
        stop: Arc<AtomicBool>,
        relay: Arc<Notify>,
    ) -> anyhow::Result<Writer> {
        let sharing = if config.replica {
            Sharing::Replica
        } else {
            Sharing::Exclusive
        };
        let (conn, watch, presence) = open_database(config, sharing)?;
        let db = describe(&config.db);
        let expired =
            expire_dead_replicas(&conn, &presence).with_context(|| format!("cannot update the database {db}"))?;
        if expired > 0 {
            tracing::warn!(
                keys = expired,
                "keys left in flight by replicas that died; their retries take over"
            );
        }
        Ok(Writer {
            conn: Some(conn),
            db: config.db.clone(),
            synchronous: config.synchronous,
            watch: Arc::new(watch),
            crash: CrashPoints::new(config),
            retention_ms: duration_ms(config.key_retention),
            lease_ms: duration_ms(config.key_lease),
            counters,
            stop,
            sharing,
            presence: Arc::new(presence),
            outbox: config.notify == NotifyMode::Outbox,
            relay,
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
            // A wipe runs on its own: what came before it commits first,
            // what came after it runs on the emptied ledger.
            while let Some(at) = batch.iter().position(|op| matches!(op, Op::Wipe { .. })) {
                let rest = batch.split_off(at + 1);
                let wipe = batch.pop();
                self.commit_batch(&mut batch);
                if let Some(Op::Wipe { reply, pools }) = wipe {
                    self.wipe(reply, &pools);
                }
                batch = rest;
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
            }
        }
        self.release_own_leases();
        tracing::debug!("writer stopped");
    }

    /// A clean stop: this replica's leases are expired (their requests will
    /// not complete) and its liveness file removed, so nobody has to find it
    /// dead later. If the leases cannot be expired, the file stays: the next
    /// replica to start (or a running one) finds it unlocked and does it.
    fn release_own_leases(&mut self) {
        let me = self.presence.id();
        let expired = connection(&mut self.conn).and_then(|conn| store::expire_leases_of(conn, &[me.as_i64()]));
        match expired {
            Ok(keys) => {
                if keys > 0 {
                    tracing::info!(keys, "keys this replica left in flight are free for their retries");
                }
                self.presence.remove();
            }
            Err(e) => tracing::warn!(error = %e, "cannot expire this replica's leases; the next start will"),
        }
    }

    /// Runs a batch in one transaction and answers it, only after COMMIT and
    /// only while the database file is still the one at its path.
    fn commit_batch(&mut self, batch: &mut Vec<Op>) {
        if batch.is_empty() {
            return;
        }
        self.reconnect_if_broken();
        let cpu_started = thread_cpu_ns();
        let clock = Clock {
            now_ms: clock::now_ms(),
            lease_ms: self.lease_ms,
            retention_ms: self.retention_ms,
            outbox: self.outbox,
        };
        let (started, requests) = (std::time::Instant::now(), batch.len());
        let result = self
            .watch
            .check()
            .map_err(|e| annotate_replaced(e, "nothing was stored"))
            .and_then(|()| self.execute(batch, clock))
            .and_then(|results| {
                let executed = results.iter().filter(|r| Op::executed(r)).count();
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
                    .map(|()| results)
            });
        match result {
            Ok(results) => {
                for (op, result) in batch.drain(..).zip(results) {
                    op.answer(result, &self.counters);
                }
                self.counters.recorded.batch(requests, started.elapsed());
            }
            Err(e) => {
                tracing::error!(error = %e, requests = batch.len(), "batch not acknowledged");
                batch.drain(..).for_each(|op| op.refuse(&e));
            }
        }
        let cpu_ns = thread_cpu_ns().saturating_sub(cpu_started);
        self.counters.writer_cpu_ns.fetch_add(cpu_ns, Ordering::Relaxed);
    }

    /// One transaction for the batch; again with a savepoint per request if
    /// a request failed halfway the first time.
    fn execute(&mut self, batch: &[Op], clock: Clock) -> Result<Vec<Result<Done, DbError>>, DbError> {
        match self.run_batch(batch, clock, false) {
            Err(Attempt::Partial) => {
                if connection(&mut self.conn)?.errors_abort_transaction() {
                    tracing::debug!("a request failed: the batch runs again with a savepoint per request");
                } else {
                    tracing::warn!("a request failed after writing: the batch runs again with a savepoint per request");
                }
                self.run_batch(batch, clock, true).map_err(Attempt::into_error)
            }
            other => other.map_err(Attempt::into_error),
        }
    }

    /// BEGIN, every op, the batch's change to the figures, COMMIT. With
    /// `savepoints`, each op in its own.
    fn run_batch(
        &mut self,
        batch: &[Op],
        clock: Clock,
        savepoints: bool,
    ) -> Result<Vec<Result<Done, DbError>>, Attempt> {
        let tx = Tx::begin(connection(&mut self.conn)?)?;
        tx.conn.set_careful(savepoints);
        let mut results = Vec::with_capacity(batch.len());
        let mut figures = Delta::default();
        for op in batch {
            results.push(run_op(tx.conn, op, clock, savepoints, &mut figures)?);
        }
        totals::add(tx.conn, &figures)?;
        let executed = results.iter().filter(|r| Op::executed(r)).count();
        CrashPoints::maybe_crash(
            &mut self.crash.before_rng,
            self.crash.before_commit,
            executed,
            "before-commit",
        );
        tx.commit()?;
        Counters::bump(&self.counters.writer_commits);
        if figures.outbox_pending > 0 {
            self.relay.notify_one();
        }
        Ok(results)
    }

    /// Deletes the whole ledger: a fresh database file swapped in (O(1)),
    /// or, where that cannot be done, every row deleted in place.
    fn wipe(&mut self, reply: Reply<Wiped>, pools: &[Arc<Readers>]) {
        self.reconnect_if_broken();
        // Replicas never swap: another one may open the file at any moment,
        // and would find its WAL gone under it. One transaction in place is
        // safe with any number of them (O(n): slow on a large ledger).
        let result = self.watch.check().and_then(|()| {
            let swapped = match (self.sharing, self.conn.as_ref().map(Connection::dialect)) {
                (Sharing::Exclusive, Some(Dialect::Sqlite)) => self.swap_in_fresh_file(pools)?,
                _ => None,
            };
            match swapped {
                Some(wiped) => Ok(wiped),
                None => self.wipe_in_place(),
            }
        });
        match &result {
            Ok(wiped) => tracing::info!(payments = wiped.payments, "all payments, keys and balances deleted"),
            Err(e) => tracing::error!(error = %e, "DELETE /payments failed"),
        }
        drop(reply.send(result));
    }

    fn wipe_in_place(&mut self) -> DbResult<Wiped> {
        let tx = Tx::begin(connection(&mut self.conn)?)?;
        let wiped = store::wipe(tx.conn)?;
        tx.commit()?;
        self.watch.check().map(|()| wiped)
    }

    /// Swaps a fresh, empty database file in for the old one (see
    /// `generation.rs`). None when it cannot be done here (nothing changed).
    fn swap_in_fresh_file(&mut self, pools: &[Arc<Readers>]) -> DbResult<Option<Wiped>> {
        if !generation::EXCHANGE_SUPPORTED {
            return Ok(None);
        }
        let next = generation::prepare_fresh(&self.db, self.synchronous)?;
        let wiped = Wiped::of(&totals::read(connection(&mut self.conn)?)?.figures);
        let watch = Arc::clone(&self.watch);
        let swapped = watch.swap(|| {
            pools.iter().for_each(|pool| pool.close_idle());
            self.close()?;
            // Sidecars left: another process has the file open. Then, or if
            // the exchange fails, the old file is reopened as it was.
            let exchanged = match generation::sidecars_present(&self.db) {
                true => Ok(false),
                false => generation::exchange(&next, &self.db),
            };
            self.reopen(matches!(exchanged, Ok(true)))?;
            exchanged.map_err(|e| DbError::Io(format!("cannot swap in a fresh database file: {e}")))
        });
        match swapped {
            Ok(true) => {
                generation::remove_in_background(next);
                Ok(Some(wiped))
            }
            Ok(false) => {
                tracing::warn!("another process has the database open: the ledger is deleted in place (slow)");
                let _ = generation::remove_leftovers(&self.db);
                Ok(None)
            }
            Err(e) => {
                let _ = generation::remove_leftovers(&self.db);
                Err(e)
            }
        }
    }

    /// PostgreSQL: a connection the server closed (a restart, the network)
    /// is replaced before the next batch. The batch that met the break was
    /// refused (503) and nothing of it committed; if the new connection
    /// cannot be opened either, the next batch is refused the same way.
    fn reconnect_if_broken(&mut self) {
        if crate::config::postgres_url(&self.db).is_none() || self.conn.as_ref().is_some_and(|c| !c.is_broken()) {
            return;
        }
        self.conn = None;
        match store::open_writer(&self.db, self.synchronous) {
            Ok(conn) => {
                tracing::warn!("the connection to PostgreSQL was lost; the writer reconnected");
                self.conn = Some(conn);
            }
            Err(e) => tracing::error!(error = %e, "the connection to PostgreSQL is lost; will try again"),
        }
    }

    /// Closes the writer's connection (the last one of this service on the
    /// file: SQLite checkpoints and removes the WAL).
    fn close(&mut self) -> DbResult<()> {
        if let Some(conn) = self.conn.take()
            && let Err(failed) = conn.close()
        {
            let (conn, e) = *failed;
            self.conn = Some(conn);
            return Err(e);
        }
        Ok(())
    }

    /// Opens the file at the database path again: the fresh one if
    /// `exchanged`, else the old one. If that fails, the service cannot
    /// write any more: it stops acknowledging, saying why.
    fn reopen(&mut self, exchanged: bool) -> DbResult<()> {
        match store::open_writer(&self.db, self.synchronous) {
            Ok(conn) => {
                self.conn = Some(conn);
                Ok(())
            }
            Err(e) => {
                let state = if exchanged {
                    "the fresh, empty ledger"
                } else {
                    "the old ledger (nothing was deleted)"
                };
                self.watch.lose(format!(
                    "after DELETE /payments the database could not be opened again ({e}); it holds {state}"
                ));
                Err(e)
            }
        }
    }
}

/// Expires the leases of the replicas of `db` that are dead (nobody holds
/// their liveness lock; leases without a replica too), then forgets them.
/// Blocking: the writer thread at start-up. Returns the keys expired.
fn expire_dead_replicas(conn: &Connection, presence: &Presence) -> anyhow::Result<usize> {
    let dead = presence.dead().context("cannot look for dead replicas")?;
    let ids: Vec<i64> = dead.ids().iter().map(|id| id.as_i64()).collect();
    match store::expire_leases_of(conn, &ids) {
        Ok(expired) => {
            presence.forget(dead);
            Ok(expired)
        }
        Err(e) => {
            presence.release(dead);
            Err(e.into())
        }
    }
}

/// The database as the writer needs it: its presence (the database's lock
/// and this replica's liveness), its connection, and what watches the file
/// (nothing for PostgreSQL). Blocking: the writer thread.
fn open_database(config: &Config, sharing: Sharing) -> anyhow::Result<(Connection, DbWatch, Presence)> {
    let db = describe(&config.db);
    if crate::config::postgres_url(&config.db).is_some() {
        // The schema first: the presence's row lives in `replicas`.
        let conn = store::open_writer(&config.db, config.synchronous)
            .with_context(|| format!("cannot open the database {db}"))?;
        let presence = Presence::take(&config.db, sharing)?;
        return Ok((conn, DbWatch::unwatched(&config.db), presence));
    }
    let presence = Presence::take(&config.db, sharing)?;
    generation::remove_leftovers(&config.db)
        .with_context(|| format!("cannot remove what an interrupted DELETE left next to {db}"))?;
    let conn =
        store::open_writer(&config.db, config.synchronous).with_context(|| format!("cannot open the database {db}"))?;
    let watch = DbWatch::record(&config.db).with_context(|| format!("cannot stat the database {db}"))?;
    Ok((conn, watch, presence))
}

/// The database for messages: a path, or a URL without its password.
pub(crate) fn describe(db: &std::path::Path) -> String {
    match crate::config::postgres_url(db) {
        Some(url) => crate::pg::redact(url),
        None => db.display().to_string(),
    }
}

/// The writer's connection, unless a DELETE failed between closing the old
/// file and opening the new one.
fn connection(conn: &mut Option<Connection>) -> DbResult<&mut Connection> {
    conn.as_mut()
        .ok_or_else(|| DbError::Io("the database is not open (a DELETE failed to reopen it)".into()))
}

/// Runs one op in the batch's transaction and adds its change to the
/// figures to `figures` if it is kept.
fn run_op(
    conn: &Connection,
    op: &Op,
    clock: Clock,
    savepoints: bool,
    figures: &mut Delta,
) -> Result<Result<Done, DbError>, Attempt> {
    let changes = conn.total_changes();
    let savepoint = match savepoints {
        true => Some(conn.savepoint(Savepoint::Op)?),
        false => None,
    };
    let mut delta = Delta::default();
    let result = op.run(conn, clock, &mut delta);
    // After some errors (I/O, a full disk) SQLite rolls back the whole
    // transaction, and what followed would run and commit outside it.
    // Stop: the batch failed, and nothing of it is stored.
    if conn.is_autocommit() {
        let cause = result.err();
        return Err(Attempt::Failed(
            cause.unwrap_or_else(|| DbError::Io("SQLite rolled the transaction back".into())),
        ));
    }
    match (&result, &savepoint) {
        // The caller drops the transaction: rolled back. On PostgreSQL any
        // failure: the transaction may be aborted, and there is no change
        // count to tell whether the request wrote before it failed.
        (Err(_), None) if conn.errors_abort_transaction() || conn.total_changes() != changes => {
            return Err(Attempt::Partial);
        }
        (Err(_), Some(savepoint)) => savepoint.roll_back()?,
        (Ok(_), _) => *figures += delta,
        (Err(_), None) => {}
    }
    if let Some(savepoint) = savepoint {
        savepoint.release()?;
    }
    Ok(result)
}

/// `BEGIN IMMEDIATE` ... `COMMIT` through cached statements (rusqlite's
/// `Transaction` parses both every time); rolled back if dropped uncommitted.
struct Tx<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> Tx<'c> {
    /// SQLite: `BEGIN IMMEDIATE` takes the file's write lock. PostgreSQL:
    /// the ledger's write lock (see `pg::lock_ledger_for_write`), so writes
    /// of replicas run one transaction at a time as on SQLite. From then on
    /// the balances are kept in memory until the COMMIT.
    fn begin(conn: &'c Connection) -> DbResult<Tx<'c>> {
        let begin = match conn.dialect() {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        };
        conn.prepare_cached(begin)?.execute(())?;
        // Built before the lock is taken: a failure to take it rolls back.
        let tx = Tx { conn, open: true };
        if conn.dialect() == Dialect::Postgres {
            pg::lock_ledger_for_write(conn)?;
        }
        balances::begin(conn);
        Ok(tx)
    }

    /// Writes the balances kept in memory, then commits.
    fn commit(mut self) -> DbResult<()> {
        balances::flush(self.conn)?;
        self.conn.prepare_cached("COMMIT")?.execute(())?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        balances::discard(self.conn);
        if self.open && (self.conn.errors_abort_transaction() || !self.conn.is_autocommit()) {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// Why a batch did not commit.
enum Attempt {
    /// A request failed after writing part of its work (rolled back).
    Partial,
    Failed(DbError),
}

impl From<rusqlite::Error> for Attempt {
    fn from(e: rusqlite::Error) -> Attempt {
        Attempt::Failed(e.into())
    }
}

impl From<DbError> for Attempt {
    fn from(e: DbError) -> Attempt {
        Attempt::Failed(e)
    }
}

impl Attempt {
    fn into_error(self) -> DbError {
        match self {
            Attempt::Partial => DbError::Other("a request failed halfway even inside its savepoint".into()),
            Attempt::Failed(e) => e,
        }
    }
}

/// CPU time consumed by the calling thread, in nanoseconds (0 where the
/// platform has no per-thread clock): what the benchmark divides by payments.
fn thread_cpu_ns() -> u64 {
    #[cfg(target_os = "linux")]
    return cpu_clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
    #[cfg(not(target_os = "linux"))]
    0
}

/// CPU time consumed by this process (every thread, user and kernel), in
/// nanoseconds (0 where the platform has no such clock): the benchmark's
/// cost of a request.
pub(crate) fn process_cpu_ns() -> u64 {
    #[cfg(target_os = "linux")]
    return cpu_clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID);
    #[cfg(not(target_os = "linux"))]
    0
}

/// One of the kernel's CPU-time clocks, in nanoseconds; 0 if it cannot be read.
#[cfg(target_os = "linux")]
fn cpu_clock_ns(clock: libc::clockid_t) -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(clock, &mut t) } != 0 {
        return 0;
    }
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

fn annotate_replaced(e: DbError, what: &str) -> DbError {
    match e {
        DbError::FileReplaced(why) => DbError::FileReplaced(format!("{why}; {what}")),
        other => other,
    }
}
