//! Reference solution 4: the unique key, and the stored first answer.
//!
//! As solution 3, but a duplicate is compared with the request its key first
//! answered, which the stored answer keeps (as the IETF draft's stores do):
//! the same request gets the first answer again, a different one 422.
//! Stages 1 to 4 pass. Stage 5 fails: stored answers are deleted after
//! `--key-retention`, so a retry that comes later finds none and is told to
//! come back later (409), for ever.

use crate::exercise_kit::{Answer, Failed, Inserted, PaymentRequest, Tx};

/// Decides what a payment request carrying the idempotency key `key` does.
pub(crate) fn handle(tx: &mut Tx, request: &PaymentRequest, key: &str) -> Result<Answer, Failed> {
    match tx.insert_unique(request, key)? {
        Inserted::Paid(payment) => Ok(Answer::created(&payment)),
        Inserted::KeyTaken => match tx.stored_answer(key)? {
            Some(first) if first.matches(request) => Ok(first.replay()),
            Some(_) => Ok(Answer::key_reused()),
            // No answer stored: the first request must still be at work.
            None => Ok(Answer::in_flight()),
        },
    }
}
