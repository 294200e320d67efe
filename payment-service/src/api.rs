//! The HTTP surface: routes, handlers, and how writer outcomes become answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::config::{Config, DedupMode};
use crate::error::{ApiError, Problem};
use crate::key;
use crate::lookup::{LOOKUP_BODY_BYTES_MAX, LOOKUP_ROWS_MAX, Lookup};
use crate::payment::{Payment, PaymentRequest};
use crate::readers::Readers;
use crate::stats::{Counters, StatsJson};
use crate::store::{self, Outcome};
use crate::writer::{Op, Reply};

/// Largest request body accepted: a payment is under 200 bytes; 16 KiB leaves
/// room for clients that add fields, and refuses anything absurd.
pub const BODY_BYTES_MAX: usize = 16 * 1024;

/// Requests handled at once; beyond it the service answers 503 at once rather
/// than building an unbounded backlog of tasks.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1024;

/// Longest wait for the writer's answer. A commit normally takes well under a
/// millisecond; this only trips when the disk stalls, and the answer is then
/// 503 (the payment may still commit: the client retries with its key).
const WRITE_WAIT_MS_MAX: u64 = 30_000;

/// Page size of `GET /payments` when none is asked for, and the largest allowed.
const PAGE_LIMIT_DEFAULT: usize = 100;
const PAGE_LIMIT_MAX: usize = 1000;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    config: Config,
    writer: mpsc::Sender<Op>,
    readers: Arc<Readers>,
    counters: Arc<Counters>,
    requests: Arc<Semaphore>,
    /// Lease tokens: random start, so tokens of a previous process never match.
    next_token: AtomicI64,
}

impl AppState {
    pub fn new(config: Config, writer: mpsc::Sender<Op>, readers: Arc<Readers>, counters: Arc<Counters>) -> AppState {
        AppState(Arc::new(Inner {
            config,
            writer,
            readers,
            counters,
            requests: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX)),
            next_token: AtomicI64::new(rand::random::<i64>() & 0x3fff_ffff_ffff_ffff),
        }))
    }
}

/// The router, apart from any socket so tests and the binary share it.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/stats", get(stats))
        .route("/payments", get(list_payments).post(create_payment).delete(wipe))
        .route("/payments/", get(list_payments).post(create_payment).delete(wipe))
        .route(
            "/payments/lookup",
            post(lookup).layer(DefaultBodyLimit::max(LOOKUP_BODY_BYTES_MAX)),
        )
        .route("/payments/{id}", get(get_payment))
        .route("/problems/{slug}", get(problem_doc))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(middleware::from_fn_with_state(state.clone(), limit_in_flight))
        .with_state(state)
}

async fn limit_in_flight(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match Arc::clone(&state.0.requests).try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            Counters::bump(&state.0.counters.unavailable_503);
            ApiError::new(
                Problem::Overloaded,
                format!("more than {REQUESTS_IN_FLIGHT_MAX} requests are in flight"),
            )
            .into_response()
        }
    }
}

fn json(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

async fn index(State(state): State<AppState>) -> Response {
    let c = &state.0.config;
    let body = serde_json::json!({
        "service": "payment-service",
        "routes": {
            "POST /payments": "make a payment: {\"src\", \"dest\", \"amount\"} with header Idempotency-Key (or Payment-Idempotence-Key)",
            "GET /payments/{id}": "one payment",
            "GET /payments?after_id=&limit=": "payments in id order, at most 1000 a page",
            "GET /payments?key=K": "the payments made under key K",
            "POST /payments/lookup": "the payments of up to 1000 keys: {\"keys\": [...], \"after_id\": 0}, paged by id (reconciliation)",
            "DELETE /payments": "wipe payments, keys and balances",
            "GET /stats": "money moved, invariants checked against the database, request counters",
            "GET /health": "liveness",
            "GET /problems/{type}": "what an error type means and what to do",
        },
        "settings": {
            "dedup": c.dedup.as_str(),
            "require_key": c.require_key,
            "processing_delay_ms": c.processing_delay.as_millis() as u64,
            "synchronous": c.synchronous.pragma(),
            "key_retention_s": c.key_retention.as_secs(),
            "key_lease_ms": c.key_lease.as_millis() as u64,
        },
    });
    json(StatusCode::OK, body.to_string())
}

async fn health() -> Response {
    json(StatusCode::OK, r#"{"status":"ok"}"#.to_owned())
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        Problem::NotFound,
        format!(
            "no route for {} {}; GET / lists the routes",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn problem_doc(Path(slug): Path<String>) -> Result<Response, ApiError> {
    let problem = Problem::ALL
        .into_iter()
        .find(|p| p.slug() == slug)
        .ok_or_else(|| ApiError::new(Problem::NotFound, format!("there is no problem type {slug:?}")))?;
    let body = serde_json::json!({
        "type": format!("/problems/{}", problem.slug()),
        "title": problem.title(),
        "status": problem.status().as_u16(),
        "what_to_do": problem.advice(),
    });
    Ok(json(StatusCode::OK, body.to_string()))
}

async fn stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    let db = state.0.readers.read(store::ledger_stats).await?;
    let stats = StatsJson::new(&db, &state.0.counters, state.0.config.dedup);
    Ok(json(StatusCode::OK, serde_json::to_string(&stats).unwrap_or_default()))
}

async fn get_payment(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let not_found = || ApiError::new(Problem::NotFound, format!("there is no payment {id:?}"));
    let Ok(number) = id.parse::<i64>() else {
        return Err(not_found());
    };
    match state.0.readers.read(move |c| store::payment(c, number)).await? {
        Some(payment) => Ok(json(StatusCode::OK, payment.to_json())),
        None => Err(not_found()),
    }
}

async fn list_payments(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let invalid = |detail: String| ApiError::new(Problem::InvalidQuery, detail);
    let Query(pairs) = query.map_err(|e| invalid(format!("the query string cannot be read: {e}")))?;
    let (mut after_id, mut limit, mut key) = (None, None, None);
    for (name, value) in pairs {
        let slot_taken = match name.as_str() {
            "after_id" => after_id.replace(value.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
                invalid(format!("after_id must be a whole number >= 0, got {value:?}")).with_field("after_id")
            })?),
            "limit" => limit
                .replace(
                    value
                        .parse::<usize>()
                        .ok()
                        .filter(|v| (1..=PAGE_LIMIT_MAX).contains(v))
                        .ok_or_else(|| {
                            invalid(format!("limit must be between 1 and {PAGE_LIMIT_MAX}, got {value:?}"))
                                .with_field("limit")
                        })?,
                )
                .map(|v| v as i64),
            "key" => {
                if value.is_empty() || value.len() > key::KEY_BYTES_MAX {
                    return Err(invalid("key must be 1 to 255 characters".into()).with_field("key"));
                }
                key.replace(value).map(|_| 0)
            }
            other => {
                return Err(invalid(format!(
                    "unknown parameter {other:?}; use after_id, limit or key"
                )));
            }
        };
        if slot_taken.is_some() {
            return Err(invalid(format!("parameter {name} is given more than once")));
        }
    }
    let (after_id, limit) = (after_id.unwrap_or(0), limit.unwrap_or(PAGE_LIMIT_DEFAULT));
    let page = state
        .0
        .readers
        .read(move |c| store::payments(c, after_id, limit, key.as_deref()))
        .await?;
    Ok(page_json(&page, limit))
}

/// A page of payments, each rendered as `GET /payments/{id}` renders it;
/// `next_after_id` is the last id when the page is full (more may follow).
fn page_json(page: &[Payment], limit: usize) -> Response {
    let next = match page.last() {
        Some(last) if page.len() == limit => last.id.to_string(),
        _ => "null".to_owned(),
    };
    let items: Vec<String> = page.iter().map(Payment::to_json).collect();
    json(
        StatusCode::OK,
        format!("{{\"payments\":[{}],\"next_after_id\":{next}}}", items.join(",")),
    )
}

/// `POST /payments/lookup`: the payments of many keys, paged by id, read on
/// a reader connection (the blocking pool), never on an async worker.
async fn lookup(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_content_type(&headers)?;
    let body = body.map_err(|rejection| body_rejection(rejection, LOOKUP_BODY_BYTES_MAX))?;
    let Lookup { keys, after_id } = Lookup::from_json(&body)?;
    let page = state
        .0
        .readers
        .read(move |c| store::payments_by_keys(c, &keys, after_id, LOOKUP_ROWS_MAX))
        .await?;
    Ok(page_json(&page, LOOKUP_ROWS_MAX))
}

fn body_rejection(rejection: BytesRejection, bytes_max: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            Problem::BodyTooLarge,
            format!("the body is larger than {bytes_max} bytes"),
        )
    } else {
        ApiError::new(
            Problem::MalformedJson,
            format!("the body could not be read: {rejection}"),
        )
    }
}

async fn wipe(State(state): State<AppState>) -> Result<Response, ApiError> {
    let wiped = submit(&state, |reply| Op::Wipe { reply }).await?;
    tracing::info!(payments = wiped.payments, "all payments, keys and balances deleted");
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "deleted": wiped }).to_string(),
    ))
}

/// Sends an op to the writer without waiting for queue space (full → 503)
/// and waits, bounded, for its answer.
async fn submit<T>(state: &AppState, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    state.0.writer.try_send(make(tx)).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => ApiError::new(
            Problem::Overloaded,
            format!(
                "the write queue is full ({} waiting); nothing was stored",
                state.0.config.queue_depth_max
            ),
        ),
        mpsc::error::TrySendError::Closed(_) => ApiError::new(
            Problem::TemporarilyUnavailable,
            "the service is shutting down; nothing was stored",
        ),
    })?;
    await_reply(rx).await
}

async fn await_reply<T>(rx: oneshot::Receiver<Result<T, String>>) -> Result<T, ApiError> {
    let unavailable = |why: String| ApiError::new(Problem::TemporarilyUnavailable, why);
    match tokio::time::timeout(Duration::from_millis(WRITE_WAIT_MS_MAX), rx).await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(why))) => Err(unavailable(format!("{why}; nothing was stored"))),
        Ok(Err(_)) => Err(unavailable(
            "the writer stopped before answering; the request may or may not have taken effect".into(),
        )),
        Err(_) => Err(unavailable(
            "the database did not answer in time; the request may or may not have taken effect".into(),
        )),
    }
}

async fn create_payment(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let counters = &state.0.counters;
    Counters::bump(&counters.received);
    let key = key::from_headers(&headers);
    let key_for_errors = key.as_ref().ok().cloned().flatten();
    match create(&state, &headers, key, body).await {
        Ok(response) => response,
        Err(error) => {
            let counter = match error.problem.status() {
                StatusCode::CONFLICT => &counters.conflicts_409,
                StatusCode::UNPROCESSABLE_ENTITY => &counters.mismatches_422,
                StatusCode::SERVICE_UNAVAILABLE => &counters.unavailable_503,
                _ => &counters.rejected,
            };
            Counters::bump(counter);
            tracing::debug!(problem = error.problem.slug(), detail = %error.detail, "payment refused");
            error.with_key(key_for_errors.as_deref()).into_response()
        }
    }
}

async fn create(
    state: &AppState,
    headers: &HeaderMap,
    key: Result<Option<String>, key::KeyError>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_content_type(headers)?;
    let body = body.map_err(|rejection| body_rejection(rejection, BODY_BYTES_MAX))?;
    let key = key.map_err(|e| ApiError::new(Problem::IdempotencyKeyInvalid, e.0))?;
    let request = PaymentRequest::from_json(&body)?;
    if key.is_none() && state.0.config.require_key {
        return Err(ApiError::new(
            Problem::IdempotencyKeyMissing,
            "this service requires an Idempotency-Key (or Payment-Idempotence-Key) header on every payment",
        ));
    }
    tracing::debug!(key = key.as_deref().unwrap_or("-"), src = %request.src, dest = %request.dest, amount_minor = request.amount_minor, "payment received");
    // The processing runs as its own task: a client that disconnects (a reset,
    // a timeout) must not cancel a payment halfway between claim and commit.
    let task_state = state.clone();
    let key_for_task = key.clone();
    let outcome = tokio::spawn(async move { process(&task_state, request, key_for_task).await })
        .await
        .map_err(|e| ApiError::new(Problem::TemporarilyUnavailable, format!("processing failed: {e}")))??;
    respond(state, outcome, key.as_deref())
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::new(
            Problem::UnsupportedMediaType,
            format!(
                "Content-Type {:?} is not JSON; send application/json or no Content-Type",
                value.to_str().unwrap_or("(not text)")
            ),
        ))
    }
}

async fn process(state: &AppState, request: PaymentRequest, key: Option<String>) -> Result<Outcome, ApiError> {
    let config = &state.0.config;
    let delay = config.processing_delay;
    let key = match (key, config.dedup) {
        (Some(key), DedupMode::Unique) if delay.is_zero() => {
            return submit(state, |reply| Op::PayKeyed { request, key, reply }).await;
        }
        (Some(key), DedupMode::Unique) => key,
        (key, dedup) => {
            // Keyless requests, `off` and `check-then-insert` all end in a
            // plain insert. The check is deliberately racy: nothing stops a
            // concurrent duplicate between it and the insert.
            if dedup == DedupMode::CheckThenInsert
                && let Some(lookup_key) = key.clone()
                && let Some(payment) = state
                    .0
                    .readers
                    .read(move |c| store::first_payment_with_key(c, &lookup_key))
                    .await?
            {
                return Ok(store::answer_from_ledger(&payment, &request));
            }
            sleep(delay).await;
            return submit(state, |reply| Op::Insert { request, key, reply }).await;
        }
    };
    // `unique` with a processing delay: claim the key, work, then complete.
    let token = state.0.next_token.fetch_add(1, Ordering::Relaxed);
    let claimed = submit(state, |reply| Op::Claim {
        request: request.clone(),
        key: key.clone(),
        token,
        reply,
    })
    .await?;
    let Outcome::Claimed { takeover } = claimed else {
        return Ok(claimed);
    };
    if takeover {
        Counters::bump(&state.0.counters.lease_takeovers);
        tracing::info!(key = %key, "lease of a dead worker taken over");
    }
    sleep(delay).await;
    // The key is leased to us: wait for queue space rather than give
    // up, or the key would stay blocked until the lease runs out.
    let (tx, rx) = oneshot::channel();
    let op = Op::Complete {
        request,
        key,
        token,
        reply: tx,
    };
    state
        .0
        .writer
        .send_timeout(op, Duration::from_millis(WRITE_WAIT_MS_MAX))
        .await
        .map_err(|_| {
            ApiError::new(
                Problem::TemporarilyUnavailable,
                "the write queue stayed full; retry with the same key",
            )
        })?;
    await_reply(rx).await
}

async fn sleep(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

fn respond(state: &AppState, outcome: Outcome, key: Option<&str>) -> Result<Response, ApiError> {
    let counters = &state.0.counters;
    let shown_key = key.unwrap_or("-");
    let (status, body, payment_id, replayed) = match outcome {
        Outcome::Executed {
            payment,
            body,
            takeover,
        } => {
            Counters::bump(&counters.executed);
            if takeover {
                Counters::bump(&counters.lease_takeovers);
                tracing::info!(key = shown_key, "key left in flight by a dead worker taken over");
            }
            tracing::debug!(key = shown_key, id = payment.id, "payment executed");
            (StatusCode::CREATED, body, Some(payment.id), false)
        }
        Outcome::Replayed {
            status,
            body,
            payment_id,
            from_ledger,
        } => {
            Counters::bump(&counters.replayed);
            if from_ledger {
                Counters::bump(&counters.replayed_from_ledger);
            }
            tracing::debug!(
                key = shown_key,
                from_ledger,
                "duplicate detected: first answer replayed"
            );
            (
                StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED),
                body,
                payment_id,
                true,
            )
        }
        Outcome::Mismatch => {
            return Err(ApiError::new(
                Problem::IdempotencyKeyReused,
                format!(
                    "key {shown_key:?} was already used for a payment with a different src, dest or amount; nothing was stored"
                ),
            ));
        }
        Outcome::InFlight | Outcome::LostLease => {
            return Err(ApiError::new(
                Problem::IdempotencyKeyInUse,
                format!("a request with key {shown_key:?} is still being processed; retry with the same key"),
            ));
        }
        Outcome::Claimed { .. } => {
            return Err(ApiError::new(
                Problem::TemporarilyUnavailable,
                "the payment was claimed but not completed",
            ));
        }
    };
    let mut response = json(status, body);
    let headers = response.headers_mut();
    if let Some(id) = payment_id
        && let Ok(location) = HeaderValue::from_str(&format!("/payments/{id}"))
    {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(
        "idempotent-replayed",
        HeaderValue::from_static(if replayed { "true" } else { "false" }),
    );
    Ok(response)
}
