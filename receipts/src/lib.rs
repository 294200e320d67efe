//! receipts: the second hop's consumer. The payment service's relay delivers
//! one [`eo_core::wire::PaymentEvent`] per executed payment, at least once;
//! this service must issue exactly one receipt per event.
//!
//! Under `--dedup inbox` (the default) the event id goes into the `inbox`
//! table, under its primary key, in the same transaction as the receipt and
//! the figures: a redelivery finds it and is answered 200 with the first
//! receipt (`Idempotent-Replayed: true`), never a second receipt and never
//! an error (an error would make the relay deliver it again, for ever).
//! Under `--dedup off` (the lesson's naive consumer) every delivery issues a
//! receipt, and `/stats` shows the duplicates.
//!
//! # Layout
//! - `api`: the router, its state, the in-flight bound, `POST /receipts`
//!   and the small routes; `reads`: the read routes.
//! - `event`: what senders send, parsed and checked (nothing is stored on a refusal).
//! - `writer`: the one thread that writes, with group commit; `readers`:
//!   read-only connections on the blocking pool.
//! - `schema`: tables, settings, the check that `--db` is a receipts file;
//!   `store`: every SQL statement; `db_lock`: one service per file;
//!   `db_error`: database failures, typed (transient → 503, permanent → 4xx).
//! - `error`: problem+json; `stats`: counters and the `/stats` document;
//!   [`config`]: settings and every limit.
//!
//! The seam for tests and the binary is [`run`]: a bound listener, a
//! [`Config`] and a shutdown future. [`Service`] and [`app`] are the parts.

mod api;
pub mod config;
mod db_error;
mod db_lock;
mod error;
mod event;
mod readers;
mod reads;
mod schema;
mod stats;
mod store;
mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

pub use api::{AppState, app};
pub use config::{Config, DedupMode};
pub use store::Receipt;

/// The running parts behind the router: the writer thread and the state.
///
/// Dropping a `Service` without [`Service::stop`] (an early `?`, a panic)
/// still stops the writer thread, which releases the database lock.
pub struct Service {
    pub state: AppState,
    writer: writer::WriterHandle,
}

impl Service {
    /// Takes the database lock, opens the database (creating the schema)
    /// and starts the writer thread. Blocks while the database opens: from
    /// async code, use [`Service::open`].
    pub fn start(config: Config) -> anyhow::Result<Service> {
        config.validate().map_err(anyhow::Error::msg)?;
        let counters = Arc::new(stats::Counters::default());
        let writer = writer::spawn(&config, Arc::clone(&counters))?;
        let readers = readers::Readers::new(config.db.clone());
        let state = AppState::new(config, writer.queue.clone(), readers, counters);
        Ok(Service { state, writer })
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
        let wait = Duration::from_millis(config::WRITER_STOP_MS_MAX);
        self.writer.stop(wait).await;
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
