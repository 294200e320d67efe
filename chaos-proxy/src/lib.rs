//! chaos-proxy: a seeded, fault-injecting TCP proxy with a
//! toxiproxy-compatible control API.
//!
//! # Layout
//!
//! - [`run`] (this file): the seam. Serves the API on a given listener until
//!   a shutdown future resolves; tests call it on `127.0.0.1:0`, `main.rs`
//!   passes Ctrl-C/SIGTERM.
//! - `api`: the axum router (`api::app`), toxiproxy's routes, status
//!   codes and bodies, the browser guard, body limit and request deadline.
//! - `state`: the control plane. A registry of proxies behind one async
//!   mutex; every API operation with toxiproxy's semantics (populate, reset,
//!   update-restarts, listing order). Names are resolved before the lock.
//! - `registry`: one entry and its two-step changes: `prepare` (binds, all
//!   that can fail) then `apply` (stop the old run, start the new one), so a
//!   failed create, update or populate changes nothing.
//! - `loops`: refuses an upstream that leads back to the proxy, itself or
//!   through other proxies (the data plane also never dials its own address).
//! - `proxy`: the data plane of one proxy: its accept loop and connection
//!   tasks (asynchronous upstream dial with a timeout, connection cap, idle
//!   limit), address parsing (loopback policy, the `payment` alias).
//! - `link`: one direction of a connection: the fast copy path and the
//!   toxic state machine (latency queue, reset/close deadline, shaping);
//!   it yields every `LINK_YIELD_BYTES` so bulk flows cannot starve the API.
//! - `toxic`: toxic types, attributes, defaults, and their exact JSON.
//! - `rng`: deterministic decisions from `(seed, proxy, connection,
//!   direction, toxic, exchange)` through `Xoshiro256PlusPlus`.
//! - `stats`: per-proxy counters and the bounded fault log; `metrics`: the
//!   same counters as Prometheus text (`GET /metrics`, an extension).
//! - `error`: `error::ApiError`, rendered as `{"error","status"}`.
//! - [`config`]: [`Config`], every limit as a named constant, config files.
//! - `bench`: the `chaos-proxy bench` measurement (direct vs proxied, then
//!   the API and new connections under 64 bulk streams).
//!
//! # Invariants
//!
//! - The control plane never waits on a connection: toxic changes are
//!   published with `watch::Sender::send_replace`; the registry lock is never
//!   held across a host-name lookup.
//! - A failed create, update or populate changes nothing.
//! - SO_LINGER 0 is set only on a connection whose reset_peer fired (or
//!   whose peer aborted), never because a toxic merely exists.
//! - Every decision is a pure function of the seed and the connection's
//!   accept index, so a serial replay with the same seed is identical.

// Modules are private to the crate; the public API is `run`, `Config` and
// `config` (scenarios and the binary), `run_bench` (the binary), and the
// seeded roll with its `Direction` (tests replay decisions with them).
pub(crate) mod api;
pub(crate) mod bench;
pub mod config;
pub(crate) mod error;
pub(crate) mod link;
mod loops;
pub(crate) mod metrics;
pub(crate) mod proxy;
mod registry;
pub(crate) mod rng;
pub(crate) mod state;
pub(crate) mod stats;
pub(crate) mod toxic;

use anyhow::Context as _;
use tokio::net::TcpListener;

pub use bench::run_bench;
pub use config::Config;
pub use rng::toxicity_roll;
use state::AppState;
pub use toxic::Direction;

/// Serves the control API on `listener` (after creating the startup
/// proxies) until `shutdown` resolves, then stops every proxy.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState::new(&config);
    if !config.startup_proxies.is_empty() {
        state
            .populate(serde_json::Value::Array(config.startup_proxies.clone()))
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.error.message()))
            .context("creating the startup proxies")?;
    }
    let api_addr = listener.local_addr()?;
    tracing::info!(api = %api_addr, seed = config.seed, "chaos-proxy serving (replay this run with --seed {})", config.seed);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = api::app(state.clone());
    let mut server = tokio::spawn(eo_core::serve::serve(listener, app, config::API_SERVER_LIMITS, async {
        let _ = stop_rx.await;
    }));
    tokio::select! {
        r = &mut server => {
            state.shutdown().await;
            return r.context("api server task")?.context("api server");
        }
        () = shutdown => {}
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(());
    state.shutdown().await;
    // The server drains within API_SERVER_LIMITS.drain_ms_max on its own.
    server.await.context("api server task")?.context("api server")?;
    Ok(())
}
