//! client: a retrying payment client, and the checker that says whether each
//! payment happened exactly once.
//!
//! # Layout
//! - [`strategy`]: the knobs: key per payment / per attempt / none, retries,
//!   backoff, timeouts, connection reuse.
//! - [`runner`]: the retry loop per payment, `concurrency` at once, every
//!   attempt recorded ([`history`]).
//! - [`classify`]: what an answer or error means (ok / fail / unknown) and
//!   whether to retry.
//! - [`backoff`]: seeded full-jitter delays.
//! - [`ledger`]: intents synced to disk before the first attempt, for `resume`.
//! - [`reconcile`]: the per-key check against the service's ledger and the verdict.
//! - [`report`]: the human-readable summary.

pub mod backoff;
pub mod classify;
pub mod history;
pub mod ledger;
pub mod money;
pub mod reconcile;
pub mod report;
pub mod runner;
pub mod strategy;
