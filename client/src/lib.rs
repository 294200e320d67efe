//! client: a retrying payment client, and the checker that says whether each
//! payment happened exactly once.
//!
//! # Layout
//! - [`flow`]: `client pay` and `client resume` from start to verdict, and
//!   how their end is printed; the binary only parses flags.
//! - [`strategy`]: the knobs: key per payment / per attempt / none, retries,
//!   backoff, timeouts, connection reuse.
//! - [`batch`]: several payments per request under one key (`KEY:ITEM_ID` per
//!   item), or the mistake of one key for every item.
//! - [`intents`]: the payments of a run, compactly (32 bytes each; generated
//!   keys derived, not stored).
//! - [`runner`]: the retry loop per payment, `concurrency` at once, every
//!   attempt counted into an 8-byte outcome and streamed ([`history`]).
//! - [`classify`]: what an answer or error means (ok / fail / unknown) and
//!   whether to retry.
//! - [`backoff`]: seeded full-jitter delays.
//! - [`ledger`]: intents made durable (atomically) before the first attempt,
//!   for `resume`.
//! - [`service`]: reading the service for the judge, with retries within a
//!   deadline; what cannot be read is inconclusive.
//! - [`reconcile`]: the per-key check against the service's ledger and the verdict.
//! - [`receipts`]: the second hop's judge: every executed payment has exactly one
//!   receipt at the receipts service (read by lookup; inconclusive when unreadable).

mod backoff;
pub mod batch;
pub mod classify;
pub mod flow;
pub mod history;
pub mod intents;
pub mod ledger;
mod lines;
pub mod money;
pub mod receipts;
pub mod reconcile;
mod report;
pub mod runner;
pub mod service;
pub mod strategy;
