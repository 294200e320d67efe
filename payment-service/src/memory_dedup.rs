//! `--dedup memory`: keys remembered in a map of this process, as an
//! in-process event handler keeps its seen ids (`map[string]struct{}`). For
//! the lesson: it deduplicates what reaches *this* process while it lives.
//! A retry that a load balancer sends to another replica, or that reaches
//! this one after a restart, finds nothing and pays again. The database is
//! never asked about keys: the payment is a plain insert (its key is stored on
//! the row, for the judge, without the UNIQUE column and without a key row).
//!
//! A key seen with the same request: the answer this process stored; while
//! its first request is still in flight: 409; with another request: 422.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::api::AppState;
use crate::create::submit;
use crate::error::ApiError;
use crate::ops;
use crate::payment::PaymentRequest;
use crate::store::Outcome;
use crate::writer::Op;

/// Keys remembered at most, the oldest forgotten first: a map that grows with
/// every payment would take the process down long before the ledger is large
/// (a key with its stored answer is a few hundred bytes: 100,000 is ~30 MB).
pub(crate) const MEMORY_KEYS_MAX: usize = 100_000;

#[derive(Debug, Clone)]
enum Seen {
    InFlight,
    Answered { status: u16, body: String, payment_id: i64 },
}

#[derive(Debug)]
struct Entry {
    /// Arrival number: tells the queue's entry for this key from an older,
    /// forgotten one.
    seq: u64,
    fingerprint: String,
    seen: Seen,
}

/// The seen keys of this process, bounded.
#[derive(Debug, Default)]
pub(crate) struct SeenKeys {
    inner: Mutex<Keys>,
}

#[derive(Debug, Default)]
struct Keys {
    map: HashMap<String, Entry>,
    /// Keys in arrival order (with their arrival number), for forgetting the oldest.
    order: VecDeque<(u64, String)>,
    next_seq: u64,
}

/// What the map says about a request before anything is paid.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// New here: now in flight, the caller pays.
    Pay,
    Done(Outcome),
}

impl SeenKeys {
    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        // A panic while holding the lock leaves a consistent map (every
        // change is one insert or remove): keep going.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Looks the key up; a new key is remembered as in flight.
    fn check_in(&self, key: &str, fingerprint: &str, keys_max: usize) -> Verdict {
        let mut keys = self.lock();
        if let Some(entry) = keys.map.get(key) {
            if entry.fingerprint != fingerprint {
                return Verdict::Done(Outcome::Mismatch);
            }
            return Verdict::Done(match &entry.seen {
                Seen::InFlight => Outcome::InFlight,
                Seen::Answered {
                    status,
                    body,
                    payment_id,
                } => Outcome::Replayed {
                    status: *status,
                    body: body.clone(),
                    payment_id: Some(*payment_id),
                    from_ledger: false,
                },
            });
        }
        let seq = keys.next_seq;
        keys.next_seq += 1;
        let entry = Entry {
            seq,
            fingerprint: fingerprint.to_owned(),
            seen: Seen::InFlight,
        };
        keys.map.insert(key.to_owned(), entry);
        keys.order.push_back((seq, key.to_owned()));
        // The queue holds every remembered key (and some forgotten ones), so
        // bounding it bounds the map.
        while keys.order.len() > keys_max {
            let Some((seq, oldest)) = keys.order.pop_front() else {
                break;
            };
            if keys.map.get(&oldest).is_some_and(|e| e.seq == seq) {
                keys.map.remove(&oldest);
            }
        }
        Verdict::Pay
    }

    /// The key's payment committed: its answer, for the retries that reach
    /// this process. Nothing if the key was forgotten meanwhile.
    fn answered(&self, key: &str, outcome: &Outcome) {
        let Outcome::Executed { payment, body, .. } = outcome else {
            return self.forget(key);
        };
        if let Some(entry) = self.lock().map.get_mut(key) {
            entry.seen = Seen::Answered {
                status: 201,
                body: body.clone(),
                payment_id: payment.id,
            };
        }
    }

    /// The payment failed (nothing stored, or unknown after a timeout): the
    /// key is forgotten so a retry may pay.
    fn forget(&self, key: &str) {
        self.lock().map.remove(key);
    }
}

/// The answer to a keyed request under `--dedup memory`.
pub(crate) async fn process(state: &AppState, request: PaymentRequest, key: String) -> Result<Outcome, ApiError> {
    let seen = &state.0.seen_keys;
    match seen.check_in(&key, request.fingerprint(), MEMORY_KEYS_MAX) {
        Verdict::Done(outcome) => {
            ops::count(&state.0.counters, &outcome);
            return Ok(outcome);
        }
        Verdict::Pay => {}
    }
    let delay = state.0.config.processing_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let key_on_row = Some(key.clone());
    let paid = submit(state, &state.0.writer, |reply| Op::Insert {
        request,
        key: key_on_row,
        reply,
    })
    .await;
    match &paid {
        Ok(outcome) => seen.answered(&key, outcome),
        Err(_) => seen.forget(&key),
    }
    paid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::Payment;

    fn executed(id: i64) -> Outcome {
        let payment = Payment {
            id,
            src: "a".into(),
            dest: "b".into(),
            amount_minor: 1,
            idempotency_key: Some("k".into()),
            created_at_ms: 0,
        };
        Outcome::Executed {
            body: payment.to_json(),
            payment,
            takeover: false,
        }
    }

    #[test]
    fn in_flight_then_replayed_and_a_mismatch_is_refused() {
        let seen = SeenKeys::default();
        assert_eq!(seen.check_in("k", "f", 10), Verdict::Pay);
        assert_eq!(seen.check_in("k", "f", 10), Verdict::Done(Outcome::InFlight));
        assert_eq!(seen.check_in("k", "g", 10), Verdict::Done(Outcome::Mismatch));
        let first = executed(7);
        seen.answered("k", &first);
        let Outcome::Executed { body, .. } = first else {
            unreachable!()
        };
        let replay = Outcome::Replayed {
            status: 201,
            body,
            payment_id: Some(7),
            from_ledger: false,
        };
        assert_eq!(seen.check_in("k", "f", 10), Verdict::Done(replay));
        seen.forget("k");
        assert_eq!(seen.check_in("k", "f", 10), Verdict::Pay, "forgotten: pays again");
    }

    #[test]
    fn the_oldest_keys_are_forgotten_beyond_the_bound() {
        let seen = SeenKeys::default();
        for i in 0..5 {
            assert_eq!(seen.check_in(&format!("k{i}"), "f", 3), Verdict::Pay);
        }
        assert_eq!(seen.lock().map.len(), 3);
        assert_eq!(seen.check_in("k0", "f", 3), Verdict::Pay, "the oldest was forgotten");
        assert_eq!(seen.check_in("k4", "f", 3), Verdict::Done(Outcome::InFlight));
        // Forgotten keys do not let the queue grow past the bound.
        for i in 0..100 {
            seen.check_in(&format!("x{i}"), "f", 3);
            seen.forget(&format!("x{i}"));
        }
        assert!(seen.lock().order.len() <= 3);
    }
}
