//! Reference solution 3: a unique key in the database, as the original
//! workshop's solution has it.
//!
//! The ledger refuses a second payment under a key (a UNIQUE column), so
//! neither concurrent copies nor a restart can make one: stages 1 to 3 pass.
//! A duplicate gets 208 Already Reported, as in the original. Stage 4 fails:
//! a key reused for a different amount gets 208 too, so the client believes
//! its new payment was made.

use crate::exercise_kit::{Answer, Failed, Inserted, PaymentRequest, Tx};

/// Decides what a payment request carrying the idempotency key `key` does.
pub(crate) fn handle(tx: &mut Tx, request: &PaymentRequest, key: &str) -> Result<Answer, Failed> {
    match tx.insert_unique(request, key)? {
        Inserted::Paid(payment) => Ok(Answer::created(&payment)),
        // The database refused: this key has paid before. Once is enough.
        Inserted::KeyTaken => Ok(Answer::already_paid()),
    }
}
