//! Reference solution 2: remember the keys in memory.
//!
//! A map of the keys seen, as an in-process event handler keeps one: the
//! key is claimed under a lock before paying, so a concurrent copy finds it
//! claimed, is told to retry (409) and then gets the first answer. Stages 1
//! and 2 pass. Stage 3 fails: the map dies with the process, so after a
//! restart a retry pays again. (The map also grows without bound.)

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

use crate::exercise_kit::{Answer, Failed, PaymentRequest, Tx};

/// Each key seen: `None` while its payment is being made, then its answer.
static SEEN: LazyLock<Mutex<HashMap<String, Option<Answer>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn seen() -> MutexGuard<'static, HashMap<String, Option<Answer>>> {
    SEEN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Decides what a payment request carrying the idempotency key `key` does.
pub(crate) fn handle(tx: &mut Tx, request: &PaymentRequest, key: &str) -> Result<Answer, Failed> {
    // Check and claim the key in one step, under the lock.
    {
        let mut seen = seen();
        match seen.get(key) {
            Some(Some(first)) => return Ok(first.clone().replayed()),
            Some(None) => return Ok(Answer::in_flight()),
            None => seen.insert(key.to_owned(), None),
        };
    }
    let paid = tx.insert(request, key);
    let mut seen = seen();
    match paid {
        Ok(payment) => {
            let answer = Answer::created(&payment);
            seen.insert(key.to_owned(), Some(answer.clone()));
            Ok(answer)
        }
        Err(failed) => {
            // Free the key so that a retry can try again.
            seen.remove(key);
            Err(failed)
        }
    }
}
