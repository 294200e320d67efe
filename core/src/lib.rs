//! eo-core: what the exactly-once crates share, written once.
//!
//! - [`money`]: amounts as integer minor units; the one decimal parser and its limits.
//! - [`wire`]: the HTTP contract's shared parts: header names, key, lookup and page
//!   bounds, the `/stats` fields a judge reads, the audit report, the payment event the
//!   second hop delivers, the wall clock.
//! - [`retry`]: the retry rules the client and the outbox relay share: what a
//!   status means, `Retry-After` (capped), seeded full-jitter backoff.
//! - [`problem`]: errors as problem+json (each service lists its causes), the
//!   `/problems/{type}` page, a JSON answer, a request run owning its in-flight permit.
//! - [`measure`]: the quantile every benchmark and example prints (p50, p99).
//! - [`seed`]: SplitMix64 and FNV-1a, to derive independent seeds from one.
//! - [`serve`]: a bounded HTTP/1.1 server for an axum router (connection cap, header-read,
//!   body-read and idle deadlines, graceful drain).
//! - [`shutdown`]: the Ctrl-C / SIGTERM future every binary stops on.
//! - [`logging`]: `RUST_LOG`-driven tracing on stderr, colour only on a terminal.

pub mod logging;
pub mod measure;
pub mod money;
pub mod problem;
pub mod retry;
pub mod seed;
pub mod serve;
pub mod shutdown;
pub mod wire;
