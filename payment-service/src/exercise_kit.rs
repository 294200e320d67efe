//! The service's side of the workshop exercise (`--dedup exercise`).
//!
//! The attendee edits one function, `exercise::handle`. This module gives it
//! the request's transaction ([`Tx`]) with four safe helpers and the answers
//! it may give ([`Answer`]), and runs it for every keyed payment (or reference
//! solution N of `solutions/`, with the hidden `--exercise-solution N`).
//!
//! What the transaction promises, as a database at READ COMMITTED does:
//! - a look-up sees what was committed when it ran, never what another
//!   request is about to insert (it reads on a reader connection);
//! - an insert first does the payment's work (`--processing-delay-ms`: say,
//!   asking the bank), then books the payment, both balances and its stored
//!   answer in one commit of the single writer, before it returns;
//! - the answer leaves only after the function returns: after every commit
//!   it made.
//!
//! The function runs on the blocking pool: the helpers block on a reader or
//! on the writer's answer, never on an async worker thread.

use crate::db::{Connection, OptionalExtension};
use axum::http::StatusCode;
use axum::response::Response;
use tokio::runtime::Handle;

use crate::api::{AppState, json};
use crate::config::DedupMode;
use crate::db_error::{DbError, DbResult};
use crate::error::{ApiError, Problem};
pub(crate) use crate::payment::{Payment, PaymentRequest};
use crate::stats::Counters;
use crate::store::{self, Outcome};
use crate::totals::Delta;
use crate::writer::{Op, duration_ms};
use crate::{clock, create, solutions};

/// A write of the exercise, run by the writer thread inside its batch's
/// transaction (and savepoint): `(connection, when and whether with an
/// outbox event, the figures)`.
pub(crate) type Work = Box<dyn Fn(&Connection, store::Book, &mut Delta) -> DbResult<Outcome> + Send>;

/// The shape of the attendee's function and of every reference solution.
pub(crate) type Handler = fn(&mut Tx, &PaymentRequest, &str) -> Result<Answer, Failed>;

/// Where the attendee's file is, for messages and docs.
pub const EXERCISE_FILE: &str = "payment-service/src/exercise.rs";

/// The body of a 208: what the original workshop's service said.
const ALREADY_PAID_BODY: &str =
    r#"{"status":208,"detail":"Once is enough: a payment with this idempotency key was already made"}"#;

/// One request's transaction: the helpers the exercise may use.
pub(crate) struct Tx {
    state: AppState,
    runtime: Handle,
}

/// What [`Tx::insert_unique`] did.
#[derive(Debug)]
pub(crate) enum Inserted {
    /// The payment was made (and committed) under the key.
    Paid(Payment),
    /// A payment with this key exists: the UNIQUE key refused a second one;
    /// nothing was stored.
    KeyTaken,
}

/// Why a helper failed: the database or the service could not do it. Pass it
/// on with `?`; the client gets the matching error (503: retry, or 422).
#[derive(Debug)]
pub(crate) struct Failed(ApiError);

impl From<ApiError> for Failed {
    fn from(error: ApiError) -> Failed {
        Failed(error)
    }
}

impl From<DbError> for Failed {
    fn from(error: DbError) -> Failed {
        Failed(error.to_api())
    }
}

impl Tx {
    /// The first payment made under `key`, read from the ledger, which keeps
    /// every payment's key for ever. Sees what is committed now.
    pub(crate) fn payment_with_key(&mut self, key: &str) -> Result<Option<Payment>, Failed> {
        let key = key.to_owned();
        let read = self
            .state
            .0
            .readers
            .read(move |c| store::first_payment_with_key(c, &key));
        Ok(self.runtime.block_on(read)?)
    }

    /// The first answer given under `key`, with the request it answered. Kept
    /// for `--key-retention` (24 h unless told), then deleted: after that,
    /// `None`, as if the key had never been seen.
    pub(crate) fn stored_answer(&mut self, key: &str) -> Result<Option<StoredAnswer>, Failed> {
        let retention_ms = duration_ms(self.state.0.config.key_retention);
        let now_ms = clock::now_ms();
        let key = key.to_owned();
        let read = self
            .state
            .0
            .readers
            .read(move |c| store::fresh_answer(c, &key, now_ms, retention_ms));
        Ok(self.runtime.block_on(read)?)
    }

    /// Pays: does the payment's work, then books it with `key` on it (a second
    /// payment under the same key is booked too) and stores its answer.
    pub(crate) fn insert(&mut self, request: &PaymentRequest, key: &str) -> Result<Payment, Failed> {
        match self.book(request, key, false)? {
            Inserted::Paid(payment) => Ok(payment),
            Inserted::KeyTaken => Err(Failed(ApiError::new(
                Problem::TemporarilyUnavailable,
                "the ledger refused a plain insert as a duplicate; nothing was stored",
            ))),
        }
    }

    /// Pays like [`Tx::insert`], unless a payment with `key` exists: the key
    /// is UNIQUE in the ledger, checked and written in one step of the single
    /// writer, so of two concurrent requests exactly one pays.
    pub(crate) fn insert_unique(&mut self, request: &PaymentRequest, key: &str) -> Result<Inserted, Failed> {
        self.book(request, key, true)
    }

    fn book(&mut self, request: &PaymentRequest, key: &str, unique: bool) -> Result<Inserted, Failed> {
        let delay = self.state.0.config.processing_delay;
        if !delay.is_zero() {
            // The payment's work before it is booked: this thread is one of
            // the blocking pool's, not an async worker.
            std::thread::sleep(delay);
        }
        let work = booking(request.clone(), key.to_owned(), unique);
        let submitted = create::submit(&self.state, &self.state.0.writer, |reply| Op::Exercise { work, reply });
        match self.runtime.block_on(submitted)? {
            Outcome::Executed { payment, .. } => Ok(Inserted::Paid(payment)),
            Outcome::Replayed { .. } => Ok(Inserted::KeyTaken),
            other => Err(Failed(ApiError::new(
                Problem::TemporarilyUnavailable,
                format!("the writer answered {other:?} to a booking; nothing was stored"),
            ))),
        }
    }
}

/// The writer's side of an insert. A taken key is reported as
/// `Outcome::Replayed` (nothing executed, so the crash dice do not roll).
fn booking(request: PaymentRequest, key: String, unique: bool) -> Work {
    Box::new(move |conn, book, totals| {
        if unique && let Some(id) = paid_under(conn, &key)? {
            return Ok(Outcome::Replayed {
                status: 0,
                body: String::new(),
                payment_id: Some(id),
                from_ledger: true,
            });
        }
        store::book_exercise(conn, &request, (&key, unique), book, totals)
    })
}

/// The payment holding `key` in the UNIQUE column, if any.
fn paid_under(conn: &Connection, key: &str) -> DbResult<Option<i64>> {
    conn.prepare_cached("SELECT id FROM payments WHERE dedup_key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()
}

/// The first answer given under a key, and which request it answered.
pub(crate) use crate::store::FreshAnswer as StoredAnswer;

impl StoredAnswer {
    /// Is `request` the one this answer was given to (same src, dest, amount)?
    pub(crate) fn matches(&self, request: &PaymentRequest) -> bool {
        self.fingerprint == request.fingerprint()
    }

    /// This answer again, byte for byte, marked `Idempotent-Replayed: true`.
    pub(crate) fn replay(&self) -> Answer {
        Answer(Kind::Payment {
            status: self.status,
            body: self.body.clone(),
            payment_id: self.payment_id,
            replayed: true,
        })
    }
}

/// What the client is told.
#[derive(Debug, Clone)]
pub(crate) struct Answer(Kind);

#[derive(Debug, Clone)]
enum Kind {
    Payment {
        status: u16,
        body: String,
        payment_id: Option<i64>,
        replayed: bool,
    },
    AlreadyPaid,
    Refused(Problem),
}

impl Answer {
    /// 201 Created with the payment: the first answer under a key.
    pub(crate) fn created(payment: &Payment) -> Answer {
        Answer(Kind::Payment {
            status: 201,
            body: payment.to_json(),
            payment_id: Some(payment.id),
            replayed: false,
        })
    }

    /// The first answer of `first` again (rebuilt from the ledger, byte for
    /// byte), marked `Idempotent-Replayed: true`.
    pub(crate) fn replay(first: &Payment) -> Answer {
        Answer::created(first).replayed()
    }

    /// This answer, marked as a replay of an earlier one.
    pub(crate) fn replayed(self) -> Answer {
        match self.0 {
            Kind::Payment {
                status,
                body,
                payment_id,
                ..
            } => Answer(Kind::Payment {
                status,
                body,
                payment_id,
                replayed: true,
            }),
            other => Answer(other),
        }
    }

    /// 208 Already Reported, "Once is enough.": the original workshop's
    /// answer to a duplicate (no payment in the body).
    pub(crate) fn already_paid() -> Answer {
        Answer(Kind::AlreadyPaid)
    }

    /// 422: the key was first used for a different payment; nothing stored.
    pub(crate) fn key_reused() -> Answer {
        Answer(Kind::Refused(Problem::IdempotencyKeyReused))
    }

    /// 409 with `Retry-After`: a request with this key is still at work.
    pub(crate) fn in_flight() -> Answer {
        Answer(Kind::Refused(Problem::IdempotencyKeyInUse))
    }
}

/// Checks `--exercise-solution N` against the solutions there are.
pub(crate) fn check_solution(n: u8, dedup: DedupMode) -> Result<(), String> {
    let count = solutions::HANDLERS.len();
    if usize::from(n) >= count {
        return Err(format!("--exercise-solution must be 0 to {}, got {n}", count - 1));
    }
    if dedup != DedupMode::Exercise {
        return Err("--exercise-solution needs --dedup exercise".into());
    }
    Ok(())
}

fn handler(solution: Option<u8>) -> Handler {
    match solution.and_then(|n| solutions::HANDLERS.get(usize::from(n))) {
        Some(reference) => *reference,
        None => crate::exercise::handle,
    }
}

/// Runs the exercise for one keyed request on the blocking pool and turns
/// its answer into the response.
pub(crate) async fn answer(state: &AppState, request: PaymentRequest, key: String) -> Result<Response, ApiError> {
    let handle = handler(state.0.config.exercise_solution);
    let mut tx = Tx {
        state: state.clone(),
        runtime: Handle::current(),
    };
    let ran = tokio::task::spawn_blocking(move || handle(&mut tx, &request, &key)).await;
    match ran {
        Ok(Ok(answer)) => render(state, answer),
        Ok(Err(Failed(error))) => Err(error),
        Err(panicked) => {
            tracing::error!(error = %panicked, "the exercise's code panicked");
            Ok(panicked_answer(&panicked.to_string()))
        }
    }
}

/// 500 for a panic in the exercise's code (a `todo!()`, an `unwrap` on
/// `None`): a retry may or may not help, so the client retries without
/// waiting for a `Retry-After`, and a stage fails in seconds, not minutes.
fn panicked_answer(why: &str) -> Response {
    let detail = format!("the exercise's code in {EXERCISE_FILE} panicked ({why}); see the service's log");
    let body = serde_json::json!({
        "type": "about:blank", "title": "Internal Server Error", "status": 500, "detail": detail,
    });
    let mut response = json(StatusCode::INTERNAL_SERVER_ERROR, body.to_string());
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/problem+json"),
    );
    response
}

fn render(state: &AppState, answer: Answer) -> Result<Response, ApiError> {
    let counters = &state.0.counters;
    match answer.0 {
        Kind::Payment {
            status,
            body,
            payment_id,
            replayed,
        } => {
            Counters::bump(if replayed {
                &counters.replayed
            } else {
                &counters.executed
            });
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
            Ok(create::answer(status, body, payment_id, replayed))
        }
        Kind::AlreadyPaid => {
            Counters::bump(&counters.replayed);
            Ok(json(StatusCode::ALREADY_REPORTED, ALREADY_PAID_BODY.to_owned()))
        }
        Kind::Refused(problem) => {
            let detail = match problem {
                Problem::IdempotencyKeyReused => "this key was first used for a different payment; nothing was stored",
                _ => "a request with this key is still being processed; retry with the same key",
            };
            Err(ApiError::new(problem, detail))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_a_500_problem_without_retry_after() {
        let response = panicked_answer("not yet implemented");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "application/problem+json");
        assert!(headers.get("retry-after").is_none());
    }
}
