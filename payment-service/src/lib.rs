//! payment-service: a SQLite ledger of payments behind idempotency keys.
//!
//! # Layout
//! - `api`: the router, its state, the in-flight bound and the small routes;
//!   `create` (the write routes) and `reads` (the read routes) hold the rest.
//! - `extract`: axum extractors for the key headers and JSON bodies.
//! - `writer`: the one thread that writes, with group commit and crash injection.
//! - `store`: schema and every SQL statement, as plain functions of a connection;
//!   `ledger_stats`: the `/stats` figures, with sums that cannot overflow.
//! - `readers`: a small pool of read-only connections on the blocking pool.
//! - `db_error`: database failures, typed (transient → 503, permanent → 4xx).
//! - `db_lock`: one service per database file; `db_file`: is the file at the
//!   path still the one the service opened?
//! - `payment`, `money`, `key`, `lookup`: parsing and validating what clients send.
//! - `error`: one error type, rendered as RFC 9457 problem+json.
//! - `stats`: request counters and the `/stats` document.
//! - `metrics`: `GET /metrics`, Prometheus text (prometheus-client).
//! - `events`: a bounded in-memory record of what was done with recent
//!   requests, by key or `X-Request-Id` (`GET /events`).
//! - [`bench`]: the durable-commit benchmark behind `payment-service bench`.
//!
//! The seam for tests and the binary is [`run`]: give it a bound listener, a
//! [`Config`] and a shutdown future. [`Service`] and [`app`] are the parts.

mod api;
pub mod bench;
mod clock;
pub mod config;
mod create;
mod db_error;
mod db_file;
mod db_lock;
mod error;
mod events;
mod extract;
mod key;
mod ledger_stats;
mod lookup;
mod metrics;
mod money;
mod payment;
mod readers;
mod reads;
mod stats;
mod store;
mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub use api::{AppState, REQUESTS_IN_FLIGHT_MAX, app};
pub use config::{Config, DedupMode, Settings, Synchronous};
pub use events::EVENTS_MAX;
pub use lookup::{LOOKUP_KEYS_MAX, LOOKUP_ROWS_MAX};

/// How long the writer gets to finish what is queued when the service stops.
const WRITER_STOP_MS_MAX: u64 = 10_000;

/// The running parts behind the router: the writer thread and the reaper.
///
/// Dropping a `Service` without [`Service::stop`] (an early `?`, a panic)
/// still stops both: the reaper is aborted and the writer thread is asked to
/// stop, which releases the database lock (a drop guard, as mini-redis has).
pub struct Service {
    pub state: api::AppState,
    writer: writer::WriterHandle,
    reaper: AbortOnDrop,
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
    /// expires leases left by a dead process and starts the writer thread and
    /// the reaper. Blocks while the database opens: from async code, use
    /// [`Service::open`]. Needs a Tokio runtime (for the reaper).
    pub fn start(config: Config) -> anyhow::Result<Service> {
        config.validate().map_err(anyhow::Error::msg)?;
        let runtime = tokio::runtime::Handle::try_current()
            .context("the payment service must be started inside a Tokio runtime")?;
        let counters = Arc::new(stats::Counters::default());
        let writer = writer::spawn(&config, Arc::clone(&counters))?;
        let readers = readers::Readers::new(config.db.clone(), Arc::clone(&writer.watch));
        let reaper = AbortOnDrop(runtime.spawn(reap_periodically(writer.queue.clone(), config.key_retention)));
        let state = api::AppState::new(
            config,
            writer.queue.clone(),
            readers,
            counters,
            Arc::clone(&writer.watch),
        );
        Ok(Service { state, writer, reaper })
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
        self.writer.stop(Duration::from_millis(WRITER_STOP_MS_MAX)).await;
    }
}

/// Asks the writer to delete expired stored responses, at an interval that
/// follows the retention (at least every second, at most every minute).
async fn reap_periodically(writer: mpsc::Sender<writer::Op>, retention: Duration) {
    let every = retention.clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        // A full queue means the writer is busy; the next tick will do.
        if let Err(mpsc::error::TrySendError::Closed(_)) = writer.try_send(writer::Op::Reap) {
            return;
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
