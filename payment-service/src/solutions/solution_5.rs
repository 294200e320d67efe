//! Reference solution 5: the full solution.
//!
//! The unique key decides who pays (concurrent copies, restarts), and a
//! duplicate is compared with the payment its key made, read from the
//! ledger, where keys never expire: the same request gets its first answer
//! again and a different one 422, however late it comes. Every stage passes.

use crate::exercise_kit::{Answer, Failed, Inserted, PaymentRequest, Tx};

/// Decides what a payment request carrying the idempotency key `key` does.
pub(crate) fn handle(tx: &mut Tx, request: &PaymentRequest, key: &str) -> Result<Answer, Failed> {
    match tx.insert_unique(request, key)? {
        Inserted::Paid(payment) => Ok(Answer::created(&payment)),
        Inserted::KeyTaken => match tx.payment_with_key(key)? {
            Some(first) if first.matches(request) => Ok(Answer::replay(&first)),
            Some(_) => Ok(Answer::key_reused()),
            // The key's payment is committed before KeyTaken is answered,
            // so this only happens if the ledger was wiped meanwhile.
            None => Ok(Answer::in_flight()),
        },
    }
}
