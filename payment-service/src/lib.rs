//! payment-service: a SQLite ledger of payments behind idempotency keys.
//!
//! # Layout
//! - [`api`]: the axum router and handlers; turns writer outcomes into answers.
//! - [`writer`]: the one thread that writes, with group commit and crash injection.
//! - [`store`]: schema and every SQL statement, as plain functions of a connection.
//! - [`readers`]: a small pool of read-only connections for GETs.
//! - [`payment`], [`money`], [`key`], [`lookup`]: parsing and validating what clients send.
//! - [`error`]: one error type, rendered as RFC 9457 problem+json.
//! - [`stats`]: request counters and the `/stats` document.
//! - [`listener`]: bounds open connections and closes idle ones.
//! - [`bench`]: the durable-commit benchmark behind `payment-service bench`.
//!
//! The seam for tests and the binary is [`run`]: give it a bound listener, a
//! [`Config`] and a shutdown future.

pub mod api;
pub mod bench;
pub mod clock;
pub mod config;
pub mod error;
pub mod key;
pub mod listener;
pub mod lookup;
pub mod money;
pub mod payment;
pub mod readers;
pub mod stats;
pub mod store;
pub mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub use config::{Config, DedupMode, Synchronous};

/// After the shutdown signal, how long open requests get to finish before the
/// server stops waiting for them.
const SHUTDOWN_GRACE_MS: u64 = 10_000;

/// The running parts behind the router: the writer thread and its queue.
pub struct Service {
    pub state: api::AppState,
    writer: mpsc::Sender<writer::Op>,
    writer_thread: std::thread::JoinHandle<()>,
    reaper: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Opens the database (creating the schema), expires leases left by a
    /// dead process and starts the writer thread.
    pub fn start(config: Config) -> anyhow::Result<Service> {
        config.validate().map_err(anyhow::Error::msg)?;
        let conn = store::open_writer(&config.db, config.synchronous)
            .with_context(|| format!("cannot open the database {}", config.db.display()))?;
        let expired = store::expire_leases(&conn)?;
        if expired > 0 {
            tracing::warn!(
                keys = expired,
                "keys left in flight by a previous process; their retries take over"
            );
        }
        let counters = Arc::new(stats::Counters::default());
        let (writer, writer_thread) = writer::spawn(conn, &config, Arc::clone(&counters))?;
        let readers = readers::Readers::new(config.db.clone());
        let reaper = tokio::spawn(reap_periodically(writer.clone(), config.key_retention));
        let state = api::AppState::new(config, writer.clone(), readers, counters);
        Ok(Service {
            state,
            writer,
            writer_thread,
            reaper,
        })
    }

    /// Lets the writer finish what is queued, then stops it.
    pub async fn stop(self) {
        self.reaper.abort();
        if self.writer.send(writer::Op::Shutdown).await.is_err() {
            tracing::warn!("the writer had already stopped");
        }
        let joined = tokio::task::spawn_blocking(move || self.writer_thread.join());
        match tokio::time::timeout(Duration::from_millis(SHUTDOWN_GRACE_MS), joined).await {
            Ok(Ok(Ok(()))) => tracing::debug!("writer joined"),
            _ => tracing::error!("the writer did not stop cleanly"),
        }
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

/// Serves the payment API on `listener` until `shutdown` completes, then
/// drains open requests (bounded) and stops the writer.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let service = Service::start(config)?;
    let app = api::app(service.state.clone());
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = signalled_tx.send(());
    };
    let listener = listener::LimitedListener::new(listener);
    let server = axum::serve(listener, app).with_graceful_shutdown(signal).into_future();
    let grace = async move {
        if signalled_rx.await.is_ok() {
            tokio::time::sleep(Duration::from_millis(SHUTDOWN_GRACE_MS)).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result.context("the HTTP server failed")?,
        () = grace => tracing::warn!("open requests did not finish within the grace period; stopping anyway"),
    }
    service.stop().await;
    Ok(())
}
