//! The workshop's exercise: make the service pay each payment only once.
//!
//! `payment-service --dedup exercise` calls `handle` for every payment that
//! carries an idempotency key (header `Idempotency-Key`, or the original
//! workshop's `Payment-Idempotence-Key`), as the workshop's PaymentController
//! is called. As it stands it reads the key and ignores it, so every retry
//! pays again. Change it so that a key pays once, whatever the network, the
//! timing or a restart do; then check it with
//!
//! ```sh
//! cargo run -p scenarios -- exercise
//! ```
//!
//! which plays five stages of faults against it, stops at the first that
//! fails and gives a hint.
//!
//! `tx` is this request's transaction; what it offers (details in
//! `exercise_kit.rs`):
//! - `tx.payment_with_key(key)?`: the first payment made under `key`, if any
//!   (the ledger keeps every payment's key for ever);
//! - `tx.stored_answer(key)?`: the first answer given under `key` and the
//!   request it answered (kept for `--key-retention`, then deleted);
//! - `tx.insert(request, key)?`: pays, with the key on the payment;
//! - `tx.insert_unique(request, key)?`: pays, unless a payment with this key
//!   exists (the key is UNIQUE in the ledger): `Inserted::KeyTaken`.
//!
//! A look-up sees only what is already committed; an insert commits before
//! it returns. `payment.matches(request)` and `stored.matches(request)` say
//! whether a request is the same payment (src, dest and amount).
//!
//! Answers: `Answer::created(&payment)` (201), `Answer::replay(&payment)` and
//! `stored.replay()` (the first answer again), `Answer::already_paid()` (208,
//! as the original workshop), `Answer::key_reused()` (422) and
//! `Answer::in_flight()` (409: retry later).
//!
//! Stuck? `scenarios exercise --show-solution N` shows the reference
//! solution that passes stage N; `--reference N` plays it.

use crate::exercise_kit::{Answer, Failed, PaymentRequest, Tx};

/// Decides what a payment request carrying the idempotency key `key` does.
pub(crate) fn handle(tx: &mut Tx, request: &PaymentRequest, key: &str) -> Result<Answer, Failed> {
    // The key arrives and is logged (RUST_LOG=payment_service=debug), then
    // ignored: every request pays, retries included.
    tracing::debug!(key, "invoked with idempotence key");
    let payment = tx.insert(request, key)?;
    Ok(Answer::created(&payment))
}
