//! scenarios: plays the exactly-once lessons end to end, in one process.
//!
//! # Layout
//! - [`catalog`]: the scenario files (`scenarios/catalog/*.toml`, built in)
//!   and their validation.
//! - [`parts`]: starting and stopping the payment service (in process, or as
//!   a supervised child when it must crash) and the chaos proxy (driven
//!   through its toxiproxy-compatible HTTP API).
//! - [`play`]: one scenario: act (payments, duplicates, outages, crashes),
//!   then judge from `/stats`, the proxy's fault counters and the client's
//!   history and reconciliation.
//! - [`report`]: the narrative and the final table.

pub mod catalog;
pub mod parts;
pub mod play;
pub mod report;
