//! A bounded record of what the service did with recent payment requests,
//! found by idempotency key or by the client's `X-Request-Id`:
//! `GET /events?key=K` or `GET /events?request_id=R`. It is what
//! `scenarios explain` draws the service's column from: request received,
//! COMMIT (the answer of a new payment is sent only after it), replay, 409,
//! 422, refusal.
//!
//! Memory only and bounded: the last [`EVENTS_MAX`] events of the process,
//! older ones pushed out (and counted); it is gone when the process dies.
//! The ledger (`GET /payments?key=K`) is the durable truth; this says what
//! happened to each request on the way.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use serde::Serialize;

use crate::api::{AppState, json};
use crate::error::{ApiError, Problem};
use eo_core::wire::unix_us_now;

use crate::key;

/// Events kept at most: a few per request, so the last thousands of
/// requests; a fixed bound whatever the traffic.
pub const EVENTS_MAX: usize = 8192;
/// The header a client may name an attempt with (any printable ASCII, 1–255
/// characters; anything else is ignored, never refused).
pub use eo_core::wire::REQUEST_ID as REQUEST_ID_HEADER;

/// One thing the service did with one request.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Order within this process (1, 2, ...).
    pub seq: u64,
    /// µs since the Unix epoch (the clock of the client's history and the proxy's fault log).
    pub at_unix_us: u64,
    pub key: Option<String>,
    pub request_id: Option<String>,
    /// `received`, `committed`, `replayed`, `in_flight`, `key_reused`,
    /// `refused` or `unavailable`.
    pub kind: &'static str,
    /// The status answered (absent for `received`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The payment committed or replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<i64>,
    /// The problem type of a refusal (`invalid-amount`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<&'static str>,
}

/// Who a request was: its key and request id, either may be absent.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub key: Option<String>,
    pub request_id: Option<String>,
}

impl Trace {
    fn findable(&self) -> bool {
        self.key.is_some() || self.request_id.is_some()
    }
}

#[derive(Default)]
struct Ring {
    seq: u64,
    events: VecDeque<Event>,
    /// Events pushed out by newer ones since start.
    dropped: u64,
}

/// The record itself; a std mutex held only to push or copy, never across an `.await`.
#[derive(Default)]
pub struct EventRecord(Mutex<Ring>);

impl EventRecord {
    fn push(
        &self,
        trace: &Trace,
        kind: &'static str,
        status: Option<u16>,
        payment_id: Option<i64>,
        problem: Option<&'static str>,
    ) {
        if !trace.findable() {
            return; // Nothing to find it by.
        }
        let Ok(mut ring) = self.0.lock() else {
            return; // A poisoned record only loses observability, never a payment.
        };
        ring.seq += 1;
        if ring.events.len() >= EVENTS_MAX {
            ring.events.pop_front();
            ring.dropped += 1;
        }
        let event = Event {
            seq: ring.seq,
            at_unix_us: unix_us_now(),
            key: trace.key.clone(),
            request_id: trace.request_id.clone(),
            kind,
            status,
            payment_id,
            problem,
        };
        ring.events.push_back(event);
    }

    pub fn received(&self, trace: &Trace) {
        self.push(trace, "received", None, None, None);
    }

    /// Records the answer about to be sent: a new payment (answered only
    /// after its COMMIT), a replay, or a refusal and why.
    pub fn answered(&self, trace: &Trace, response: &Response, problem: Option<Problem>) {
        let status = response.status();
        let payment_id = response
            .headers()
            .get(axum::http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.rsplit('/').next())
            .and_then(|id| id.parse().ok());
        let replayed = response
            .headers()
            .get(eo_core::wire::IDEMPOTENT_REPLAYED)
            .is_some_and(|v| v.as_bytes() == b"true");
        let kind = match (status, problem) {
            (s, _) if s.is_success() && replayed => "replayed",
            (s, _) if s.is_success() => "committed",
            (StatusCode::CONFLICT, _) => "in_flight",
            (_, Some(Problem::IdempotencyKeyReused)) => "key_reused",
            (StatusCode::SERVICE_UNAVAILABLE, _) => "unavailable",
            _ => "refused",
        };
        self.push(
            trace,
            kind,
            Some(status.as_u16()),
            payment_id,
            problem.map(|p| p.slug()),
        );
    }

    /// The events of a key or a request id, oldest first, and how many
    /// events the bound has pushed out since start.
    fn find(&self, by: &By) -> (Vec<Event>, u64) {
        let Ok(ring) = self.0.lock() else {
            return (Vec::new(), 0);
        };
        let found = ring
            .events
            .iter()
            .filter(|e| match by {
                By::Key(k) => e.key.as_deref() == Some(k),
                By::RequestId(r) => e.request_id.as_deref() == Some(r),
            })
            .cloned()
            .collect();
        (found, ring.dropped)
    }
}

/// The `X-Request-Id` of a request, if it is one we can record.
pub struct RequestId(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(REQUEST_ID_HEADER).iter();
        let id = match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok().filter(|v| key::check(v).is_ok()).map(str::to_owned),
            _ => None,
        };
        Ok(RequestId(id))
    }
}

enum By {
    Key(String),
    RequestId(String),
}

/// `GET /events?key=K` or `?request_id=R`: exactly one of them.
pub(crate) async fn list(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let invalid = |detail: String| ApiError::new(Problem::InvalidQuery, detail);
    let Query(pairs) = query.map_err(|e| invalid(format!("the query string cannot be read: {e}")))?;
    let by = match pairs.as_slice() {
        [(name, value)] if name == "key" || name == "request_id" => {
            let field = if name == "key" { "key" } else { "request_id" };
            key::check(value).map_err(|why| invalid(format!("{field} {why}")).with_field(field))?;
            if field == "key" {
                By::Key(value.clone())
            } else {
                By::RequestId(value.clone())
            }
        }
        _ => return Err(invalid("give exactly one of key=K or request_id=R".to_owned())),
    };
    let (events, dropped) = state.0.events.find(&by);
    let body = serde_json::json!({
        "events": events,
        "events_max": EVENTS_MAX,
        "dropped_since_start": dropped,
    });
    Ok(json(StatusCode::OK, body.to_string()))
}
