//! chaos-proxy integration tests: one binary, real sockets on 127.0.0.1:0.
//!
//! Every network await is wrapped in a hang guard ([`HANG_GUARD`]); nothing
//! waits on a sleep to let something happen, tests sync on socket events.

mod api;
mod atomic;
mod cli;
mod determinism;
mod harness;
mod load;
mod loops;
mod metrics;
mod resets;
mod robustness;
mod style;
mod toxics;
mod validation;
