//! Runtime configuration, the named limits, and the startup proxy list
//! (`--config FILE`, `--workshop`).
//!
//! Every limit lives here as a named constant with its unit in the name, so
//! that a reader can audit the bounds of the whole process in one screen.

use std::time::Duration;

use serde_json::Value;

/// Largest API request body. A populate of [`PROXIES_COUNT_MAX`] proxies with
/// toxics fits in a few hundred KiB; anything bigger is a mistake or abuse.
pub const API_BODY_BYTES_MAX: usize = 1024 * 1024;

/// Whole-request budget of one API call, body read included (toxiproxy: 25 s).
/// No handler waits on the data plane, so a healthy request takes microseconds.
pub const API_REQUEST_TIMEOUT_MS: u64 = 10_000;

/// The API server's bounds (eo-core's bounded server). The API is a local
/// control plane: 1024 connections is far more than any script opens and
/// cheap to hold, so 70 slow clients (which used to take the 64 slots) are
/// harmless; a request head or body must arrive within 10 s (so a slow
/// client costs its attacker a reconnection every 10 s); a connection
/// moving no bytes for 30 s is closed; on shutdown requests get 2 s.
pub const API_SERVER_LIMITS: eo_core::serve::Limits = eo_core::serve::Limits {
    connections_max: 1024,
    header_read_ms_max: 10_000,
    body_read_ms_max: 10_000,
    idle_ms_max: 30_000,
    drain_ms_max: API_SHUTDOWN_GRACE_MS,
};

/// Proxies one process manages: each owns a listening socket.
pub const PROXIES_COUNT_MAX: usize = 256;

/// Toxics per proxy: each one is evaluated on every chunk of a toxic link.
pub const TOXICS_PER_PROXY_COUNT_MAX: usize = 64;

/// Longest proxy or toxic name, in bytes (names appear in URLs and logs).
pub const NAME_BYTES_MAX: usize = 256;

/// Default cap on concurrent proxied connections over all proxies. Each one
/// holds two sockets and two buffers of 16 KiB to [`LINK_BUFFER_BYTES_MAX`].
pub const CONNECTIONS_COUNT_MAX_DEFAULT: usize = 1024;

/// Default budget for resolving and connecting to an upstream.
pub const DIAL_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// Default idle limit of a proxied connection (no byte in either direction).
/// Generous, because pooled database connections idle for minutes.
pub const IDLE_TIMEOUT_SECS_DEFAULT: u64 = 600;

/// Initial read buffer per direction per connection: enough for a typical
/// request or response, so that thousands of idle connections stay cheap.
pub const LINK_BUFFER_BYTES_MIN: usize = 16 * 1024;

/// Largest read buffer per direction: a link whose reads fill its buffer
/// doubles it up to this size, which cuts syscalls per byte on bulk
/// transfers (toxiproxy copies in 32 KiB chunks).
pub const LINK_BUFFER_BYTES_MAX: usize = 512 * 1024;

/// Bytes a link forwards before it yields to the scheduler. A bulk link whose
/// sockets stay ready never returns `Pending` on its own (tokio's budget
/// counts operations, and one read can move [`LINK_BUFFER_BYTES_MAX`]), so
/// without this every other task (the API, the accept loop, new connections)
/// waited behind tens of MiB per bulk link. 256 KiB is about 100 µs of
/// copying here: a yield costs ~1 % of that, and 64 bulk links go round in
/// a few milliseconds.
pub const LINK_YIELD_BYTES: usize = 256 * 1024;

/// Bytes a direction may hold back in its latency queue before it stops
/// reading (backpressure instead of unbounded buffering).
pub const LATENCY_QUEUE_BYTES_MAX: usize = 1024 * 1024;

/// Fired faults kept per proxy in the fault log (oldest dropped first).
pub const FAULT_LOG_ENTRIES_MAX: usize = 4096;

/// Largest duration a toxic attribute can express, in ms. Larger values are
/// clamped so that deadline arithmetic can never overflow.
pub const TOXIC_DURATION_MS_MAX: i64 = 24 * 60 * 60 * 1000;

/// Time the API waits for a proxy's accept loop to release its port when
/// the proxy is stopped. The loop exits at its next poll, so this is a hang
/// guard, not an expected wait.
pub const PROXY_STOP_TIMEOUT_MS: u64 = 2_000;

/// Back-off ceiling after a failed `accept` (EMFILE and friends), so that a
/// resource shortage does not turn the accept loop into a busy loop.
pub const ACCEPT_ERROR_BACKOFF_MS_MAX: u64 = 1_000;

/// How long `run` waits for open API requests after the shutdown signal.
pub const API_SHUTDOWN_GRACE_MS: u64 = 2_000;

/// The workshop's proxy, as its `toxi.http` populates it (upstream resolved
/// through the `payment` alias, see [`UPSTREAM_HOST_ALIASES`]).
pub const WORKSHOP_PROXY_NAME: &str = "payment";
/// Listen address of the workshop proxy.
pub const WORKSHOP_PROXY_LISTEN: &str = "127.0.0.1:8888";
/// Upstream of the workshop proxy (the payment service).
pub const WORKSHOP_PROXY_UPSTREAM: &str = "127.0.0.1:8080";

/// Upstream host names that mean "this machine". `payment` is the workshop's
/// docker-compose service name, which its `toxi.http` sends unmodified.
pub const UPSTREAM_HOST_ALIASES: &[&str] = &["localhost", "payment"];

/// Everything `run` needs besides the API listener.
#[derive(Clone, Debug)]
pub struct Config {
    /// Root of every random decision (see `rng.rs`).
    pub seed: u64,
    /// Allow listen and upstream addresses other than loopback. Off by
    /// default: wildcard listens are then rewritten to 127.0.0.1.
    pub allow_remote: bool,
    /// Cap on concurrent proxied connections, all proxies together.
    pub connections_count_max: usize,
    /// Upstream resolve + connect budget.
    pub dial_timeout: Duration,
    /// A proxied connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Proxies (with optional toxics) created before the API serves.
    pub startup_proxies: Vec<Value>,
}

impl Config {
    /// A configuration with the defaults and the given seed.
    pub fn new(seed: u64) -> Self {
        Config {
            seed,
            allow_remote: false,
            connections_count_max: CONNECTIONS_COUNT_MAX_DEFAULT,
            dial_timeout: Duration::from_millis(DIAL_TIMEOUT_MS_DEFAULT),
            idle_timeout: Duration::from_secs(IDLE_TIMEOUT_SECS_DEFAULT),
            startup_proxies: Vec::new(),
        }
    }
}

/// The populate item for the workshop's proxy.
pub fn workshop_proxy() -> Value {
    serde_json::json!({
        "name": WORKSHOP_PROXY_NAME,
        "listen": WORKSHOP_PROXY_LISTEN,
        "upstream": WORKSHOP_PROXY_UPSTREAM,
        "enabled": true,
    })
}

/// Parses a `--config` file: a JSON array in `/populate` format whose items
/// may also carry `toxics` (an extension; toxiproxy ignores that key).
/// Item validation happens later, through the same code as `/populate`.
pub fn parse_config_file(text: &str) -> anyhow::Result<Vec<Value>> {
    let value: Value = serde_json::from_str(text)?;
    match value {
        Value::Array(items) => Ok(items),
        _ => anyhow::bail!("a config file must hold a JSON array of proxies (populate format)"),
    }
}

/// A fresh seed for runs started without `--seed` (printed so it can be replayed).
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Mix in the pid so two processes started in the same tick differ; keep
    // the result small enough to type back in comfortably.
    eo_core::seed::mix64(nanos ^ u64::from(std::process::id()).rotate_left(32)) % 1_000_000_000
}
