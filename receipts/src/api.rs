//! The HTTP surface: the router, its state, the in-flight bound, the
//! delivery route and the small routes. Reads are in [`crate::reads`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use eo_core::wire::{IDEMPOTENT_REPLAYED, PaymentEvent, RECEIPTS_PATH};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::config::{Config, EVENT_BODY_BYTES_MAX, LOOKUP_BODY_BYTES_MAX, REQUESTS_IN_FLIGHT_MAX, WRITE_WAIT_MS_MAX};
use crate::db_error::DbError;
use crate::error::{ApiError, Problem, ProblemKind};
use crate::event::{Body, Event};
use crate::readers::Readers;
use crate::reads;
use crate::stats::Counters;
use crate::store::{Delivered, Receipt};
use crate::writer::Op;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) writer: mpsc::Sender<Op>,
    pub(crate) readers: Arc<Readers>,
    pub(crate) counters: Arc<Counters>,
    requests: Arc<Semaphore>,
}

impl AppState {
    pub(crate) fn new(
        config: Config,
        writer: mpsc::Sender<Op>,
        readers: Arc<Readers>,
        counters: Arc<Counters>,
    ) -> AppState {
        AppState(Arc::new(Inner {
            config,
            writer,
            readers,
            counters,
            requests: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX)),
        }))
    }
}

/// The router, apart from any socket so tests and the binary share it.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/stats", get(reads::stats))
        .route(
            RECEIPTS_PATH,
            post(deliver)
                .get(reads::list)
                .layer(DefaultBodyLimit::max(EVENT_BODY_BYTES_MAX)),
        )
        .route(
            "/receipts/lookup",
            post(reads::lookup).layer(DefaultBodyLimit::max(LOOKUP_BODY_BYTES_MAX)),
        )
        .route("/receipts/{id}", get(reads::one))
        .route("/problems/{slug}", get(problem_doc))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(EVENT_BODY_BYTES_MAX))
        .layer(middleware::from_fn_with_state(state.clone(), limit_in_flight))
        .with_state(state)
}

/// Admits a request if fewer than the bound are in flight, and runs it as
/// its own task owning the permit: a sender that disconnects cancels
/// neither a delivery between its queueing and its answer nor frees a slot
/// while the work still runs.
async fn limit_in_flight(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(permit) = Arc::clone(&state.0.requests).try_acquire_owned() else {
        Counters::bump(&state.0.counters.unavailable);
        let detail = format!("more than {REQUESTS_IN_FLIGHT_MAX} requests are in flight; nothing was stored");
        return ApiError::new(Problem::Overloaded, detail).into_response();
    };
    match eo_core::problem::run_owning(permit, next.run(request)).await {
        Ok(response) => response,
        Err(why) => ApiError::new(Problem::TemporarilyUnavailable, why).into_response(),
    }
}

pub(crate) use eo_core::problem::json;

/// `POST /receipts`: one delivery of a payment event.
async fn deliver(State(state): State<AppState>, body: Result<Body<Event>, ApiError>) -> Response {
    let counters = &state.0.counters;
    Counters::bump(&counters.received);
    let result = match body {
        Err(e) => Err(e),
        Ok(Body(Event(event))) => submit(&state, event).await,
    };
    let (counter, response) = match result {
        Ok(Delivered::Created(receipt)) => (&counters.created, receipt_answer(StatusCode::CREATED, &receipt, false)),
        Ok(Delivered::Replayed(receipt)) => (&counters.replayed, receipt_answer(StatusCode::OK, &receipt, true)),
        Ok(Delivered::Mismatch { receipt, differs }) => {
            let detail = format!(
                "event {:?} already has receipt {} for a payment that differs in {}",
                receipt.event.event_id,
                receipt.id,
                differs.join(", ")
            );
            let error = ApiError::new(Problem::EventMismatch, detail).with_event(&receipt.event.event_id);
            (&counters.mismatches, error.into_response())
        }
        Err(e) if e.problem.status() == StatusCode::SERVICE_UNAVAILABLE => (&counters.unavailable, e.into_response()),
        Err(e) => (&counters.rejected, e.into_response()),
    };
    Counters::bump(counter);
    response
}

/// The simulated processing delay, then the writer: queued without waiting
/// for room (full → 503, nothing stored), answered after its COMMIT, waited
/// for at most [`WRITE_WAIT_MS_MAX`].
async fn submit(state: &AppState, event: PaymentEvent) -> Result<Delivered, ApiError> {
    let delay = state.0.config.processing_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let event_id = event.event_id.clone();
    let (reply, answer) = oneshot::channel();
    state
        .0
        .writer
        .try_send(Op::Deliver { event, reply })
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::new(
                Problem::Overloaded,
                format!(
                    "the write queue is full ({} waiting); nothing was stored",
                    state.0.config.queue_depth_max
                ),
            ),
            mpsc::error::TrySendError::Closed(_) => DbError::Stopped.to_api(),
        })?;
    let unavailable = |why: &str| ApiError::new(Problem::TemporarilyUnavailable, why).with_event(&event_id);
    match tokio::time::timeout(Duration::from_millis(WRITE_WAIT_MS_MAX), answer).await {
        Ok(Ok(Ok(delivered))) => Ok(delivered),
        Ok(Ok(Err(e))) => {
            let mut error = e.to_api().with_event(&event_id);
            error.detail = format!("{}; nothing was stored", error.detail);
            Err(error)
        }
        Ok(Err(_)) => Err(unavailable("the writer stopped before answering; nothing was stored")),
        Err(_) => Err(unavailable(
            "the database did not answer in time; the receipt may or may not have been issued",
        )),
    }
}

/// A receipt answer: the document, where it lives, and whether it is a replay.
fn receipt_answer(status: StatusCode, receipt: &Receipt, replayed: bool) -> Response {
    let body = serde_json::to_string(receipt).unwrap_or_default();
    let mut response = json(status, body);
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("{RECEIPTS_PATH}/{}", receipt.id)) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(
        IDEMPOTENT_REPLAYED,
        HeaderValue::from_static(if replayed { "true" } else { "false" }),
    );
    response
}

async fn index(State(state): State<AppState>) -> Response {
    let c = &state.0.config;
    let body = serde_json::json!({
        "service": "receipts",
        "what": "issues one receipt per payment event; redeliveries of an event are answered with its first receipt (the inbox), unless --dedup off",
        "routes": {
            "POST /receipts": "deliver a payment event (JSON: event_id, payment_id, key, src, dest, amount_minor, paid_at_ms): 201 a new receipt, 200 + Idempotent-Replayed: true a duplicate absorbed, 422 event-mismatch the same event id with other content",
            "GET /receipts/{id}": "one receipt",
            "GET /receipts?after=ID&limit=N": "receipts in id order, at most 1000 a page, with next_after",
            "GET /receipts?payment_id=N": "the receipts of a payment id (paged the same way)",
            "POST /receipts/lookup": "{\"event_ids\": [...]} (at most 1000): how many receipts each event has, and their ids (reconciliation)",
            "GET /stats": "receipts, events, duplicate receipts, duplicates absorbed, money receipted: maintained by the database (O(1)); the invariant one_receipt_per_event; request counters",
            "GET /health": "liveness: the database answers",
            "GET /problems/{type}": "what an error type means and what to do",
        },
        "settings": {
            "dedup": c.dedup.as_str(),
            "processing_delay_ms": u64::try_from(c.processing_delay.as_millis()).unwrap_or(u64::MAX),
        },
    });
    json(StatusCode::OK, body.to_string())
}

/// Liveness: the database file answers a read.
async fn health(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.0.readers.read(|conn| crate::store::totals(conn)).await?;
    Ok(json(StatusCode::OK, r#"{"status":"ok"}"#.to_owned()))
}

async fn not_found(request: Request) -> ApiError {
    let detail = format!(
        "no route for {} {}; GET / lists the routes",
        request.method(),
        request.uri().path()
    );
    ApiError::new(Problem::NotFound, detail)
}

async fn problem_doc(Path(slug): Path<String>) -> Result<Response, ApiError> {
    eo_core::problem::document::<Problem>(&slug)
        .ok_or_else(|| ApiError::new(Problem::NotFound, format!("there is no problem type {slug:?}")))
}
