//! payment-service: a SQLite ledger of payments behind idempotency keys.
//!
//! # Layout
//! - `api`: the router, its state, the in-flight bound and the small routes;
//!   `create` (the write routes) and `reads` (the read routes) hold the rest.
//! - `extract`: axum extractors for the key headers and JSON bodies.
//! - `writer`: the one thread that writes, with group commit and crash injection;
//!   `ops`: what it is asked to do, and how answers are sent after the COMMIT.
//! - `schema`: the tables, connection settings, and bringing an older file up
//!   to date; `store`: every SQL statement, as plain functions of a connection;
//!   `totals`: the figures `/stats` shows, maintained in the same transactions;
//!   `audit`: the same figures recomputed from the payments, in chunks.
//! - `readers`: small pools of read-only connections on the blocking pool
//!   (one for requests, one for the audit, one for the replay desk);
//!   `desk`: the thread in front of the writer that answers certain replays.
//! - `db_error`: database failures, typed (transient → 503, permanent → 4xx).
//! - `db_lock`: one service per database file, or several `--replica`s, and
//!   which replica is alive; `db_file`: is the file at the path still the one
//!   the service opened?
//! - `memory_dedup`: `--dedup memory`, a map of seen keys in this process.
//! - `payment`, `money`, `key`, `lookup`: parsing and validating what clients send.
//! - `error`: one error type, rendered as RFC 9457 problem+json.
//! - `stats`: request counters and the `/stats` document.
//! - `exercise`: the workshop's exercise, the one file an attendee edits
//!   (`--dedup exercise`); `exercise_kit`: its transaction, helpers and
//!   answers; `solutions`: the reference solutions, one per stage.
//! - `outbox`: the events that commit with their payments, their counts and
//!   the ledger id; `relay`: the task that delivers them to the receipts
//!   service; `notify`: the after-commit call (`--notify after-commit`);
//!   `batch`: `POST /payments/batch`.
//! - `metrics`: `GET /metrics`, Prometheus text (prometheus-client).
//! - `events`: a bounded in-memory record of what was done with recent
//!   requests, by key or `X-Request-Id` (`GET /events`).
//! - [`bench`]: the durable-commit benchmark behind `payment-service bench`.
//!
//! The seam for tests and the binary is [`run`]: give it a bound listener, a
//! [`Config`] and a shutdown future. [`Service`] and [`app`] are the parts.

mod api;
mod audit;
mod audit_route;
mod balances;
mod batch;
pub mod bench;
pub mod cli_audit;
mod clock;
pub mod config;
mod create;
mod db;
mod db_error;
mod db_file;
mod db_lock;
mod desk;
mod error;
mod events;
mod exercise;
mod exercise_kit;
mod extract;
mod generation;
mod key;
mod lookup;
mod memory_dedup;
mod metrics;
mod money;
mod notify;
mod ops;
mod outbox;
mod payment;
mod pg;
mod readers;
mod reads;
mod relay;
mod schema;
mod solutions;
mod stats;
mod store;
mod totals;
mod wal_gather;
mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub use api::{AppState, REQUESTS_IN_FLIGHT_MAX, app};
pub use config::{Config, DedupMode, NotifyMode, RelayLimits, Settings, Synchronous};
pub use events::EVENTS_MAX;
pub use exercise_kit::EXERCISE_FILE;
pub use lookup::{LOOKUP_KEYS_MAX, LOOKUP_ROWS_MAX};
pub use pg::fresh_database;
/// The exercise's reference solutions' source text (0: the starting state).
pub use solutions::SOURCES as EXERCISE_SOLUTIONS;

/// How long the writer gets to finish what is queued when the service stops.
const WRITER_STOP_MS_MAX: u64 = 10_000;

/// The running parts behind the router: the writer thread, the replay desk,
/// the outbox relay (with `--notify outbox`) and the reaper.
///
/// Dropping a `Service` without [`Service::stop`] (an early `?`, a panic)
/// still stops both: the reaper is aborted and the writer thread is asked to
/// stop, which releases the database lock (a drop guard, as mini-redis has).
pub struct Service {
    pub state: api::AppState,
    // Before the writer: dropped first, it passes on what it holds.
    // Before the writer: the relay marks through it.
    relay: Option<relay::RelayHandle>,
    desk: desk::DeskHandle,
    writer: writer::WriterHandle,
    reaper: AbortOnDrop,
    /// With `--replica`: looks for replicas that died, to expire their leases.
    watcher: Option<AbortOnDrop>,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Service {
    /// Takes the database lock, opens the database (creating the schema),
    /// expires the leases of dead replicas and starts the writer thread and
    /// the reaper. Blocks while the database opens: from async code, use
    /// [`Service::open`]. Needs a Tokio runtime (for the reaper).
    pub fn start(config: Config) -> anyhow::Result<Service> {
        config.validate().map_err(anyhow::Error::msg)?;
        let runtime = tokio::runtime::Handle::try_current()
            .context("the payment service must be started inside a Tokio runtime")?;
        let counters = Arc::new(stats::Counters::default());
        let relay_wake = Arc::new(tokio::sync::Notify::new());
        let writer = writer::spawn(&config, Arc::clone(&counters), Arc::clone(&relay_wake))?;
        let pool = |count| readers::Readers::new(config.db.clone(), Arc::clone(&writer.watch), count);
        // Requests, the audit and the desk each have their own connections:
        // a long audit never takes a request's reader, nor the desk's.
        let pools = api::Pools {
            requests: pool(readers::READERS_COUNT_MAX),
            audit: pool(1),
            desk: pool(1),
            relay: pool(1),
        };
        let relay = match config.notify {
            config::NotifyMode::Outbox => {
                let relay = relay::Relay::new(
                    &config,
                    Arc::clone(&pools.relay),
                    writer.queue.clone(),
                    Arc::clone(&relay_wake),
                )?;
                Some(relay.spawn(&runtime))
            }
            _ => None,
        };
        let desk = desk::Desk {
            pool: Arc::clone(&pools.desk),
            writer: writer.queue.clone(),
            counters: Arc::clone(&counters),
            retention_ms: writer::duration_ms(config.key_retention),
        }
        .spawn(config.queue_depth_max)?;
        let reaper = AbortOnDrop(runtime.spawn(reap_periodically(writer.queue.clone(), config.key_retention)));
        // An exclusive service has no live peers to lose: its start-up did it.
        let watcher = config.replica.then(|| {
            let watch = watch_replicas(writer.queue.clone(), Arc::clone(&writer.presence));
            AbortOnDrop(runtime.spawn(watch))
        });
        let queues = (writer.queue.clone(), desk.queue.clone());
        let state = api::AppState::new(
            config,
            queues,
            pools,
            counters,
            (Arc::clone(&writer.watch), writer.replica),
        )
        .with_relay_wake(relay_wake);
        Ok(Service {
            state,
            relay,
            desk,
            writer,
            reaper,
            watcher,
        })
    }

    /// [`Service::start`] on the blocking pool, so that opening the database
    /// never blocks an async worker thread.
    pub async fn open(config: Config) -> anyhow::Result<Service> {
        tokio::task::spawn_blocking(move || Service::start(config))
            .await
            .context("the start-up task failed")?
    }

    /// Lets the writer finish what is queued, then stops it.
    pub async fn stop(mut self) {
        self.reaper.0.abort();
        // The relay first: it finishes its round and has it marked.
        if let Some(relay) = self.relay.take() {
            relay.stop(Duration::from_millis(WRITER_STOP_MS_MAX)).await;
        }
        if let Some(watcher) = &self.watcher {
            watcher.0.abort();
        }
        // The desk next: what it holds goes on to the writer, which then
        // finishes its queue.
        self.desk.stop(Duration::from_millis(WRITER_STOP_MS_MAX)).await;
        self.writer.stop(Duration::from_millis(WRITER_STOP_MS_MAX)).await;
    }
}

/// Reaping steps per tick at most: 10,000 steps of
/// [`store::REAP_ROWS_MAX`] rows are 20 million stored responses a tick, far
/// more than a writer commits in a minute.
const REAP_STEPS_PER_TICK_MAX: usize = 10_000;

/// Asks the writer to delete expired stored responses, at an interval that
/// follows the retention (at least every second, at most every minute), in
/// bounded steps repeated while they come back full: so it keeps up with any
/// rate the writer can sustain, and payments run between the steps.
async fn reap_periodically(writer: mpsc::Sender<writer::Op>, retention: Duration) {
    let every = retention.clamp(Duration::from_secs(1), Duration::from_secs(60));
    // Not at once: a start-up has nothing due, and the writer's first batch
    // should be the first request's.
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if reap_while_full(&writer, REAP_STEPS_PER_TICK_MAX).await.is_err() {
            return;
        }
    }
}

/// One tick of the reaper: steps until one deletes fewer than a full step,
/// the queue is full (the writer is busy; the next tick will do), or
/// `steps_max`. Returns the rows reaped; Err once the writer has stopped.
async fn reap_while_full(writer: &mpsc::Sender<writer::Op>, steps_max: usize) -> Result<usize, ()> {
    let mut reaped = 0;
    for _ in 0..steps_max {
        let (reply, answer) = tokio::sync::oneshot::channel();
        match writer.try_send(writer::Op::Reap { reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => break,
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(()),
        }
        match answer.await {
            Ok(Ok(n)) => {
                reaped += n;
                if n < store::REAP_ROWS_MAX {
                    break;
                }
            }
            _ => break,
        }
    }
    Ok(reaped)
}

/// How often a replica looks for replicas that died: a retry of a key that a
/// dead replica held in flight waits at most this long (instead of the
/// lease) before it takes the key over. A scan is a directory listing and a
/// lock attempt per replica: cheap.
const DEAD_REPLICA_SCAN_MS: u64 = 1_000;

/// Every [`DEAD_REPLICA_SCAN_MS`], finds the replicas of `db` that died (their
/// liveness lock is free) and has the writer expire their leases; then
/// forgets them. The scan's file I/O runs on the blocking pool.
async fn watch_replicas(writer: mpsc::Sender<writer::Op>, presence: Arc<db_lock::Presence>) {
    let every = Duration::from_millis(DEAD_REPLICA_SCAN_MS);
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let scan = Arc::clone(&presence);
        let dead = match tokio::task::spawn_blocking(move || scan.dead()).await {
            Ok(Ok(dead)) if !dead.ids().is_empty() => dead,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot look for dead replicas; will try again");
                continue;
            }
            Err(_) => return,
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let ids = dead.ids().iter().map(|id| id.as_i64()).collect();
        if writer
            .send(writer::Op::ExpireLeases { dead: ids, reply })
            .await
            .is_err()
        {
            return;
        }
        match answer.await {
            Ok(Ok(keys)) => {
                let names: Vec<String> = dead.ids().iter().map(ToString::to_string).collect();
                tracing::warn!(replicas = ?names, keys, "replicas died: the keys they held in flight are free for their retries");
                // Unlinking (or a PostgreSQL round trip): off the async worker.
                let presence = Arc::clone(&presence);
                drop(tokio::task::spawn_blocking(move || presence.forget(dead)));
            }
            // Not expired: the locks are released, and the next scan finds
            // them again.
            _ => {
                tracing::warn!("the leases of dead replicas were not expired; will try again");
                let presence = Arc::clone(&presence);
                drop(tokio::task::spawn_blocking(move || presence.release(dead)));
            }
        }
    }
}

/// Opens the service for `config`, then [`serve`]s it on `listener`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let service = Service::open(config).await?;
    serve(listener, service, shutdown).await
}

/// Serves an opened `service` on `listener` until `shutdown` completes, then
/// drains open requests (bounded) and stops the writer. The binary opens the
/// service first, so it announces "listening" only once the database is its own.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = service.state.0.config.server_limits;
    let app = api::app(service.state.clone());
    let served = eo_core::serve::serve(listener, app, limits, shutdown).await;
    service.stop().await;
    served.context("the HTTP server failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that answers `Reap` with full steps `full` times, then a short one.
    fn fake_writer(full: usize) -> (mpsc::Sender<writer::Op>, tokio::task::JoinHandle<usize>) {
        let (queue, mut rx) = mpsc::channel(4);
        let writer = tokio::spawn(async move {
            let mut steps = 0;
            while let Some(op) = rx.recv().await {
                let writer::Op::Reap { reply } = op else { continue };
                steps += 1;
                let n = if steps <= full { store::REAP_ROWS_MAX } else { 5 };
                let _ = reply.send(Ok(n));
            }
            steps
        });
        (queue, writer)
    }

    #[tokio::test]
    async fn the_reaper_repeats_steps_while_they_come_back_full() {
        let (queue, writer) = fake_writer(3);
        assert_eq!(reap_while_full(&queue, 100).await, Ok(3 * store::REAP_ROWS_MAX + 5));
        drop(queue);
        assert_eq!(writer.await.unwrap(), 4);
    }

    #[tokio::test]
    async fn the_reaper_stops_at_its_bound_and_when_the_writer_is_gone() {
        let (queue, writer) = fake_writer(usize::MAX);
        assert_eq!(reap_while_full(&queue, 7).await, Ok(7 * store::REAP_ROWS_MAX));
        drop(queue);
        assert_eq!(writer.await.unwrap(), 7);
        let (queue, rx) = mpsc::channel(1);
        drop(rx);
        assert_eq!(reap_while_full(&queue, 7).await, Err(()));
    }
}
