//! The write routes: `POST /payments` (the three paths through the writer)
//! and `DELETE /payments`, and how writer outcomes become answers (status,
//! `Location`, `Idempotent-Replayed`).

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{mpsc, oneshot};

use crate::api::{AppState, json};
use crate::config::DedupMode;
use crate::db_error::DbError;
use crate::error::{ApiError, Problem};
use crate::events::{RequestId, Trace};
use crate::extract::{Body, IdempotencyKey};
use crate::ops;
use crate::payment::PaymentRequest;
use crate::stats::Counters;
use crate::store::{self, Outcome};
use crate::writer::{Op, Reply};

pub(crate) async fn wipe(State(state): State<AppState>) -> Result<Response, ApiError> {
    let pools = state.0.pools.all();
    let wiped = submit(&state, &state.0.writer, |reply| Op::Wipe { reply, pools }).await?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "deleted": wiped }).to_string(),
    ))
}

/// Sends an op to `queue` (the writer, or the replay desk in front of it)
/// without waiting for queue space (full → 503) and waits, bounded, for its
/// answer.
pub(crate) async fn submit<T>(
    state: &AppState,
    queue: &mpsc::Sender<Op>,
    make: impl FnOnce(Reply<T>) -> Op,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    queue.try_send(make(tx)).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => ApiError::new(
            Problem::Overloaded,
            format!(
                "the write queue is full ({} waiting); nothing was stored",
                state.0.config.queue_depth_max
            ),
        ),
        mpsc::error::TrySendError::Closed(_) => with_detail_suffix(DbError::Stopped.to_api(), "nothing was stored"),
    })?;
    await_reply(state, rx).await
}

/// Waits for the writer's answer, at most `write_wait` (then 503: the
/// payment may still commit; the client retries with its key).
async fn await_reply<T>(state: &AppState, rx: oneshot::Receiver<Result<T, DbError>>) -> Result<T, ApiError> {
    let unavailable = |why: &str| ApiError::new(Problem::TemporarilyUnavailable, why);
    match tokio::time::timeout(state.0.config.write_wait, rx).await {
        Ok(Ok(Ok(value))) => Ok(value),
        // The writer's own words say whether the request may have taken
        // effect; every other failure happened before any COMMIT.
        Ok(Ok(Err(e @ DbError::FileReplaced(_)))) => Err(e.to_api()),
        Ok(Ok(Err(e))) => Err(with_detail_suffix(e.to_api(), "nothing was stored")),
        Ok(Err(_)) => Err(unavailable(
            "the writer stopped before answering; the request may or may not have taken effect",
        )),
        Err(_) => Err(unavailable(
            "the database did not answer in time; the request may or may not have taken effect",
        )),
    }
}

fn with_detail_suffix(mut error: ApiError, suffix: &str) -> ApiError {
    error.detail = format!("{}; {suffix}", error.detail);
    error
}

pub(crate) async fn create_payment(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Body<PaymentRequest>, ApiError>,
) -> Response {
    let worker = state.clone();
    let work = |Body(request), key| async move { create(&worker, request, key).await };
    traced(&state, request_id, (key, body), work).await
}

/// A keyed write from arrival to answer (a payment, a batch): counted,
/// recorded in `/events` (received, then its outcome), and answered from
/// `work` or refused.
pub(crate) async fn traced<B, Work, Done>(
    state: &AppState,
    request_id: Option<String>,
    (key, body): (Result<IdempotencyKey, ApiError>, Result<B, ApiError>),
    work: Work,
) -> Response
where
    Work: FnOnce(B, Option<String>) -> Done,
    Done: std::future::Future<Output = Result<Response, ApiError>>,
{
    Counters::bump(&state.0.counters.received);
    let key_for_errors = key.as_ref().ok().and_then(|k| k.0.clone());
    let trace = Trace {
        key: key_for_errors.clone(),
        request_id,
    };
    state.0.events.received(&trace);
    let result = match (body, key) {
        (Err(e), _) | (_, Err(e)) => Err(e),
        (Ok(body), Ok(IdempotencyKey(key))) => work(body, key).await,
    };
    let problem = result.as_ref().err().map(|e| e.problem);
    let response = answer_or_refuse(state, result, key_for_errors.as_deref());
    state.0.events.answered(&trace, &response, problem);
    response
}

pub(crate) fn answer_or_refuse(
    state: &AppState,
    result: Result<Response, ApiError>,
    key_for_errors: Option<&str>,
) -> Response {
    let counters = &state.0.counters;
    result.unwrap_or_else(|error| {
        let counter = match (error.problem, error.problem.status()) {
            (_, StatusCode::CONFLICT) => &counters.conflicts_409,
            (Problem::IdempotencyKeyReused, _) => &counters.mismatches_422,
            (_, StatusCode::SERVICE_UNAVAILABLE) => &counters.unavailable_503,
            _ => &counters.rejected,
        };
        Counters::bump(counter);
        if !matches!(
            error.problem,
            Problem::IdempotencyKeyInUse | Problem::IdempotencyKeyReused
        ) {
            counters.recorded.refused(error.problem);
        }
        tracing::debug!(problem = error.problem.slug(), detail = %error.detail, "payment refused");
        error.with_key(key_for_errors).into_response()
    })
}

/// A valid request: refused if a key is required and missing, else
/// processed. The router runs this as its own task (see
/// `api::limit_in_flight`), so a client that disconnects cannot cancel it
/// between claim and commit.
async fn create(state: &AppState, request: PaymentRequest, key: Option<String>) -> Result<Response, ApiError> {
    if key.is_none() && state.0.config.require_key {
        return Err(ApiError::new(
            Problem::IdempotencyKeyMissing,
            "this service requires an Idempotency-Key (or Payment-Idempotence-Key) header on every payment",
        ));
    }
    tracing::debug!(key = key.as_deref().unwrap_or("-"), src = %request.src(), dest = %request.dest(), amount_minor = request.amount_minor(), "payment received");
    if state.0.config.dedup == DedupMode::Exercise
        && let Some(key) = key
    {
        // The workshop's exercise decides what a keyed request does.
        return crate::exercise_kit::answer(state, request, key).await;
    }
    if state.0.config.dedup == DedupMode::Memory
        && let Some(key) = key
    {
        // The lesson's map of seen keys, in this process only.
        let outcome = crate::memory_dedup::process(state, request, key.clone()).await?;
        return respond(outcome, Some(&key));
    }
    let outcome = process(state, request, key.clone()).await?;
    if let Outcome::Executed { payment, .. } = &outcome {
        crate::notify::after_commit(state, std::slice::from_ref(payment)).await;
    }
    respond(outcome, key.as_deref())
}

/// The answer to a valid request: from the replay desk when the key's
/// stored answer makes it certain, else from the writer.
async fn process(state: &AppState, request: PaymentRequest, key: Option<String>) -> Result<Outcome, ApiError> {
    let config = &state.0.config;
    let delay = config.processing_delay;
    match (key, config.dedup) {
        // Through the replay desk: a certain replay is answered there.
        (Some(key), DedupMode::Unique) if delay.is_zero() => {
            submit(state, &state.0.desk, |reply| Op::PayKeyed { request, key, reply }).await
        }
        (Some(key), DedupMode::Unique) => claim_then_complete(state, request, key).await,
        (key, dedup) => {
            // Keyless requests, `off` and `check-then-insert` all end in a
            // plain insert (`memory` too, after its own check, above). The check is deliberately racy: nothing stops a
            // concurrent duplicate between it and the insert.
            if dedup == DedupMode::CheckThenInsert
                && let Some(lookup_key) = key.clone()
                && let Some(payment) = state
                    .0
                    .readers
                    .read(move |c| store::first_payment_with_key(c, &lookup_key))
                    .await?
            {
                let outcome = store::answer_from_ledger(&payment, &request);
                ops::count(&state.0.counters, &outcome);
                return Ok(outcome);
            }
            sleep(delay).await;
            submit(state, &state.0.writer, |reply| Op::Insert { request, key, reply }).await
        }
    }
}

/// `unique` with a processing delay: claim the key, work, then complete.
async fn claim_then_complete(state: &AppState, request: PaymentRequest, key: String) -> Result<Outcome, ApiError> {
    let lease = state.new_lease();
    let claimed = submit(state, &state.0.desk, |reply| Op::Claim {
        request: request.clone(),
        key: key.clone(),
        lease,
        reply,
    })
    .await?;
    let Outcome::Claimed { takeover } = claimed else {
        return Ok(claimed);
    };
    if takeover {
        tracing::info!(key = %key, "lease of a dead worker taken over");
    }
    sleep(state.0.config.processing_delay).await;
    // The key is leased to us: wait for queue space rather than give
    // up, or the key would stay blocked until the lease runs out.
    let (tx, rx) = oneshot::channel();
    let op = Op::Complete {
        request,
        key,
        lease,
        reply: tx,
    };
    state
        .0
        .writer
        .send_timeout(op, state.0.config.write_wait)
        .await
        .map_err(|_| {
            ApiError::new(
                Problem::TemporarilyUnavailable,
                "the write queue stayed full; retry with the same key",
            )
        })?;
    await_reply(state, rx).await
}

async fn sleep(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// The answer to a request the writer (or a reader) decided on; counted
/// where it was decided (see `ops::count`).
pub(crate) fn respond(outcome: Outcome, key: Option<&str>) -> Result<Response, ApiError> {
    let shown_key = key.unwrap_or("-");
    let (status, body, payment_id, replayed) = match outcome {
        Outcome::Executed {
            payment,
            body,
            takeover,
        } => {
            if takeover {
                tracing::info!(key = shown_key, "key left in flight by a dead worker taken over");
            }
            tracing::debug!(key = shown_key, id = payment.id, "payment executed");
            (StatusCode::CREATED, body, Some(payment.id), false)
        }
        Outcome::ExecutedBatch { payments, body, .. } => {
            tracing::debug!(key = shown_key, items = payments.len(), "batch executed");
            (StatusCode::CREATED, body, None, false)
        }
        Outcome::Replayed {
            status,
            body,
            payment_id,
            from_ledger,
        } => {
            tracing::debug!(
                key = shown_key,
                from_ledger,
                "duplicate detected: first answer replayed"
            );
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
            (status, body, payment_id, true)
        }
        refused => return Err(refusal(refused, shown_key)),
    };
    Ok(answer(status, body, payment_id, replayed))
}

/// The outcomes that are not an answer with a payment.
fn refusal(outcome: Outcome, shown_key: &str) -> ApiError {
    match outcome {
        Outcome::Mismatch => ApiError::new(
            Problem::IdempotencyKeyReused,
            format!(
                "key {shown_key:?} was already used for a payment with a different src, dest or amount; nothing was stored"
            ),
        ),
        Outcome::InFlight | Outcome::LostLease => ApiError::new(
            Problem::IdempotencyKeyInUse,
            format!("a request with key {shown_key:?} is still being processed; retry with the same key"),
        ),
        Outcome::Refused(e) => with_detail_suffix(e.to_api(), "nothing was stored"),
        Outcome::Claimed { .. }
        | Outcome::Executed { .. }
        | Outcome::ExecutedBatch { .. }
        | Outcome::Replayed { .. } => ApiError::new(
            Problem::TemporarilyUnavailable,
            "the payment was claimed but not completed",
        ),
    }
}

pub(crate) fn answer(status: StatusCode, body: String, payment_id: Option<i64>, replayed: bool) -> Response {
    let mut response = json(status, body);
    let headers = response.headers_mut();
    if let Some(id) = payment_id
        && let Ok(location) = HeaderValue::from_str(&format!("/payments/{id}"))
    {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(
        eo_core::wire::IDEMPOTENT_REPLAYED,
        HeaderValue::from_static(if replayed { "true" } else { "false" }),
    );
    response
}
