//! Reference solution 1: look the key up, then insert.
//!
//! A retry finds the payment its first attempt made and gets that answer
//! again: stage 1 (sequential retries) passes. Stage 2 fails: two copies of
//! a request sent at the same moment both look up before either inserts,
//! and both pay.

use crate::exercise_kit::{Answer, Failed, PaymentRequest, Tx};

/// Decides what a payment request carrying the idempotency key `key` does.
pub(crate) fn handle(tx: &mut Tx, request: &PaymentRequest, key: &str) -> Result<Answer, Failed> {
    // Seen before? Then it was paid: answer as the first time.
    if let Some(first) = tx.payment_with_key(key)? {
        return Ok(Answer::replay(&first));
    }
    // Not seen: pay. Nothing stops a concurrent copy of this request from
    // passing the same look-up while this one is at work.
    let payment = tx.insert(request, key)?;
    Ok(Answer::created(&payment))
}
