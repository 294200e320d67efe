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
//! - [`report`]: the narrative and the final table, at most 100 columns.
//! - [`tour`]: playing lessons for a room (narrative first, pauses, the
//!   command that reproduces the run); [`progress`]: the "still playing"
//!   line; [`logs`]: the parts' logs into each lesson's `parts.log`;
//!   [`observe`]: what a lesson tells its watchers while it plays.
//! - [`explain`]: one payment's story from what the parts recorded
//!   ([`story`]), drawn as a sequence diagram ([`diagram`]).
//! - [`live`]: `--live`, a page on loopback fed by server-sent events.
//! - [`exercise`]: the workshop's exercise as a ladder of five stages, the
//!   reference solutions' diffs.
//! - [`second_hop`]: a lesson's receipts service behind its own proxy route,
//!   the redelivery storm, and the receipts verdict.
//! - [`target`]: lessons against a service this runner did not start
//!   (`--service-url`), with `command` supervising `--service-cmd`, and
//!   `restart`: the act that kills the service between a payment and its retry.

pub mod catalog;
mod command;
pub mod diagram;
pub mod exercise;
pub mod explain;
pub mod live;
pub mod logs;
pub mod observe;
pub mod parts;
pub mod play;
pub mod progress;
pub mod report;
mod restart;
pub mod second_hop;
pub mod story;
pub mod target;
pub mod tour;
