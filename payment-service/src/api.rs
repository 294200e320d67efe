//! The HTTP surface: the router, its shared state and limits, and the small
//! routes. Payments are written in [`crate::create`] and read in
//! [`crate::reads`].

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::batch::BATCH_BODY_BYTES_MAX;
use crate::config::Config;
use crate::db_file::DbWatch;
use crate::db_lock::ReplicaId;
use crate::error::{ApiError, Problem};
use crate::events::EventRecord;
use crate::extract::BODY_BYTES_MAX;
use crate::lookup::LOOKUP_BODY_BYTES_MAX;
use crate::memory_dedup::SeenKeys;
use crate::readers::Readers;
use crate::stats::Counters;
use crate::writer::Op;
use crate::{audit_route, batch, create, events, metrics, notify, reads};

/// Requests handled at once; beyond it the service answers 503 at once rather
/// than building an unbounded backlog of tasks.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1024;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

/// The service's reader connections, by who uses them.
#[derive(Clone)]
pub(crate) struct Pools {
    /// GETs, lookups, the check of `check-then-insert`.
    pub requests: Arc<Readers>,
    /// One connection for the audit, so requests never wait for it.
    pub audit: Arc<Readers>,
    /// One connection for the replay desk.
    pub desk: Arc<Readers>,
    /// One connection for the outbox relay.
    pub relay: Arc<Readers>,
}

impl Pools {
    /// All of them: a DELETE closes their connections before it swaps the file.
    pub(crate) fn all(&self) -> Vec<Arc<Readers>> {
        vec![
            Arc::clone(&self.requests),
            Arc::clone(&self.audit),
            Arc::clone(&self.desk),
            Arc::clone(&self.relay),
        ]
    }
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) writer: mpsc::Sender<Op>,
    /// The replay desk, in front of the writer for keyed requests.
    pub(crate) desk: mpsc::Sender<Op>,
    pub(crate) readers: Arc<Readers>,
    pub(crate) pools: Pools,
    /// What the running audit has read, for a second caller's 409.
    pub(crate) audit_progress: Arc<std::sync::Mutex<String>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) watch: Arc<DbWatch>,
    /// What was done with recent requests (`GET /events`), bounded.
    pub(crate) events: Arc<EventRecord>,
    requests: Arc<Semaphore>,
    requests_max: usize,
    /// Lease tokens: random start, so tokens of a previous process never match.
    pub(crate) next_token: AtomicI64,
    /// This service's replica id: its leases carry it (`/health`, `/stats`).
    pub(crate) replica: ReplicaId,
    /// `--dedup memory`: the keys this process has seen.
    pub(crate) seen_keys: Arc<SeenKeys>,
    /// Wakes the outbox relay (after a redelivery).
    pub(crate) relay_wake: Arc<Notify>,
    /// `--notify after-commit`: the call after each COMMIT.
    pub(crate) after_commit: Option<notify::AfterCommit>,
    /// What `GET /` answers, rendered once: the routes, the settings and the
    /// replica id never change while the process runs (so the benchmark's
    /// no-op route does no work).
    index: String,
}

impl AppState {
    pub(crate) fn new(
        config: Config,
        (writer, desk): (mpsc::Sender<Op>, mpsc::Sender<Op>),
        pools: Pools,
        counters: Arc<Counters>,
        (watch, replica): (Arc<DbWatch>, ReplicaId),
    ) -> AppState {
        AppState(Arc::new(Inner {
            writer,
            desk,
            readers: Arc::clone(&pools.requests),
            pools,
            audit_progress: Arc::default(),
            counters,
            watch,
            events: Arc::new(EventRecord::default()),
            requests: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX)),
            requests_max: REQUESTS_IN_FLIGHT_MAX,
            next_token: AtomicI64::new(rand::random::<i64>() & 0x3fff_ffff_ffff_ffff),
            replica,
            seen_keys: Arc::default(),
            relay_wake: Arc::new(Notify::new()),
            after_commit: notify::AfterCommit::new(&config),
            index: index_document(&config, replica),
            config,
        }))
    }

    /// A lease for one claim: this replica's, with a token of its own.
    pub(crate) fn new_lease(&self) -> crate::store::Lease {
        crate::store::Lease {
            replica: self.0.replica.as_i64(),
            token: self.0.next_token.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The same service, waking `wake` when events are made pending again.
    pub(crate) fn with_relay_wake(self, wake: Arc<Notify>) -> AppState {
        match Arc::try_unwrap(self.0) {
            Ok(mut inner) => {
                inner.relay_wake = wake;
                AppState(Arc::new(inner))
            }
            Err(shared) => AppState(shared),
        }
    }

    /// The same service with another bound on requests in flight (tests
    /// use a small one to reach it).
    pub fn with_requests_in_flight_max(&self, max: usize) -> AppState {
        let inner = &self.0;
        AppState(Arc::new(Inner {
            config: inner.config.clone(),
            writer: inner.writer.clone(),
            desk: inner.desk.clone(),
            readers: Arc::clone(&inner.readers),
            pools: inner.pools.clone(),
            audit_progress: Arc::clone(&inner.audit_progress),
            counters: Arc::clone(&inner.counters),
            watch: Arc::clone(&inner.watch),
            events: Arc::clone(&inner.events),
            requests: Arc::new(Semaphore::new(max)),
            requests_max: max,
            next_token: AtomicI64::new(rand::random::<i64>() & 0x3fff_ffff_ffff_ffff),
            replica: inner.replica,
            seen_keys: Arc::clone(&inner.seen_keys),
            relay_wake: Arc::clone(&inner.relay_wake),
            after_commit: notify::AfterCommit::new(&inner.config),
            index: inner.index.clone(),
        }))
    }

    /// This service's replica id (8 hex digits), as `/health` shows it.
    pub fn replica(&self) -> String {
        self.0.replica.to_string()
    }

    /// Requests admitted and not yet finished (their work included).
    pub fn requests_in_flight(&self) -> usize {
        self.0.requests_max - self.0.requests.available_permits()
    }

    /// Payments executed since start.
    pub fn payments_executed(&self) -> u64 {
        self.0.counters.executed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The router, apart from any socket so tests and the binary share it.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/stats", get(reads::stats))
        .route("/audit", get(audit_route::audit))
        .route(
            "/payments",
            get(reads::list_payments)
                .post(create::create_payment)
                .delete(create::wipe),
        )
        .route(
            "/payments/",
            get(reads::list_payments)
                .post(create::create_payment)
                .delete(create::wipe),
        )
        .route(
            "/payments/lookup",
            post(reads::lookup).layer(DefaultBodyLimit::max(LOOKUP_BODY_BYTES_MAX)),
        )
        .route("/payments/{id}", get(reads::get_payment))
        .route(
            "/payments/batch",
            post(batch::create_batch).layer(DefaultBodyLimit::max(BATCH_BODY_BYTES_MAX)),
        )
        .route("/outbox/redeliver", post(notify::redeliver))
        .route("/events", get(events::list))
        .route("/metrics", get(metrics::metrics))
        .route("/problems/{slug}", get(problem_doc))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(middleware::from_fn_with_state(state.clone(), limit_in_flight))
        .with_state(state)
}

/// Admits a request if fewer than the bound are in flight, and runs it as its
/// own task that owns the permit. So the permit lives exactly as long as the
/// work: a client that disconnects (a reset, a timeout) neither cancels a
/// payment halfway between claim and commit nor frees a slot while its work
/// still runs.
async fn limit_in_flight(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(permit) = Arc::clone(&state.0.requests).try_acquire_owned() else {
        Counters::bump(&state.0.counters.unavailable_503);
        state.0.counters.recorded.refused(Problem::Overloaded);
        return ApiError::new(
            Problem::Overloaded,
            format!("more than {} requests are in flight", state.0.requests_max),
        )
        .into_response();
    };
    match eo_core::problem::run_owning(permit, next.run(request)).await {
        Ok(response) => response,
        Err(why) => ApiError::new(Problem::TemporarilyUnavailable, why).into_response(),
    }
}

pub(crate) use eo_core::problem::json;

async fn index(State(state): State<AppState>) -> Response {
    json(StatusCode::OK, state.0.index.clone())
}

/// The routes and the current settings, for `GET /`.
fn index_document(c: &Config, replica: ReplicaId) -> String {
    let body = serde_json::json!({
        "service": "payment-service",
        "routes": {
            "POST /payments": "make a payment: {\"src\", \"dest\", \"amount\"} with header Idempotency-Key (or Payment-Idempotence-Key)",
            "GET /payments/{id}": "one payment",
            "GET /payments?after_id=&limit=": "payments in id order, at most 1000 a page",
            "GET /payments?key=K": "the payments made under key K",
            "POST /payments/lookup": "the payments of up to 1000 keys: {\"keys\": [...], \"after_id\": 0}, paged by id (reconciliation)",
            "POST /payments/batch": "several payments, all or nothing, under one Idempotency-Key: {\"items\": [{\"item_id\", \"src\", \"dest\", \"amount\"}, ...]}; each item's key is KEY:ITEM_ID",
            "POST /outbox/redeliver": "make the events delivered in the last window_ms pending again: {\"window_ms\": 60000} (a redelivery storm)",
            "DELETE /payments": "wipe payments, keys, balances and events",
            "GET /stats": "the ledger's figures as maintained by the database (O(1)), invariants, request counters",
            "GET /audit": "every figure recomputed from the payments (O(n), bounded memory), compared with /stats",
            "GET /events?key=K or ?request_id=R": "what the service did with the recent requests of a key or an X-Request-Id (received, committed, replayed, 409, 422, refused); the last 8192 events, memory only",
            "GET /metrics": "Prometheus (OpenMetrics) text: requests, executed, replayed, 409, 422, refusals by cause, writer batch sizes and commit latency, queue depth",
            "GET /health": "liveness, and this process's replica id",
            "GET /problems/{type}": "what an error type means and what to do",
        },
        "settings": {
            "dedup": c.dedup.as_str(),
            "require_key": c.require_key,
            "processing_delay_ms": c.processing_delay.as_millis() as u64,
            "synchronous": c.synchronous.pragma(),
            "key_retention_s": c.key_retention.as_secs(),
            "key_lease_ms": c.key_lease.as_millis() as u64,
            "replica": c.replica,
            "notify": c.notify.as_str(),
            "receipts_url": c.receipts_url,
        },
        "replica": replica.to_string(),
    });
    body.to_string()
}

/// Liveness, and whether the database file is still the one the service
/// opened (checked on the blocking pool: it is a `stat`).
async fn health(State(state): State<AppState>) -> Result<Response, ApiError> {
    let watch = Arc::clone(&state.0.watch);
    tokio::task::spawn_blocking(move || watch.check())
        .await
        .map_err(|e| ApiError::new(Problem::TemporarilyUnavailable, format!("the health check failed: {e}")))?
        .map_err(|e| e.to_api())?;
    let body = serde_json::json!({ "status": "ok", "replica": state.0.replica.to_string() });
    Ok(json(StatusCode::OK, body.to_string()))
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
    eo_core::problem::document::<Problem>(&slug)
        .ok_or_else(|| ApiError::new(Problem::NotFound, format!("there is no problem type {slug:?}")))
}
