//! One error type for the HTTP layer, rendered as RFC 9457
//! `application/problem+json`, one problem `type` per cause. The status
//! tells the relay what to do: 2xx delivered, 409/429/5xx retry, any other
//! 4xx a permanent refusal (the event is not retried), so only what would
//! fail again the same way is a 4xx.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
pub use eo_core::problem::ProblemKind;
use eo_core::problem::{self, Members};

use crate::config::{ACCOUNT_BYTES_MAX, EVENT_BODY_BYTES_MAX, PROPAGATED_KEY_BYTES_MAX};

/// Every problem this service reports; `type` is `/problems/<slug>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    MalformedJson,
    InvalidEventId,
    InvalidAmount,
    InvalidAccount,
    SameAccount,
    InvalidKey,
    InvalidPayment,
    EventMismatch,
    RefusedByStore,
    BodyTooLarge,
    UnsupportedMediaType,
    InvalidQuery,
    InvalidLookup,
    NotFound,
    Overloaded,
    StorageFull,
    TemporarilyUnavailable,
}

impl ProblemKind for Problem {
    const ALL: &'static [Problem] = &[
        Problem::MalformedJson,
        Problem::InvalidEventId,
        Problem::InvalidAmount,
        Problem::InvalidAccount,
        Problem::SameAccount,
        Problem::InvalidKey,
        Problem::InvalidPayment,
        Problem::EventMismatch,
        Problem::RefusedByStore,
        Problem::BodyTooLarge,
        Problem::UnsupportedMediaType,
        Problem::InvalidQuery,
        Problem::InvalidLookup,
        Problem::NotFound,
        Problem::Overloaded,
        Problem::StorageFull,
        Problem::TemporarilyUnavailable,
    ];

    fn slug(self) -> &'static str {
        match self {
            Problem::MalformedJson => "malformed-json",
            Problem::InvalidEventId => "invalid-event-id",
            Problem::InvalidAmount => "invalid-amount",
            Problem::InvalidAccount => "invalid-account",
            Problem::SameAccount => "same-account",
            Problem::InvalidKey => "invalid-key",
            Problem::InvalidPayment => "invalid-payment",
            Problem::EventMismatch => "event-mismatch",
            Problem::RefusedByStore => "refused-by-store",
            Problem::BodyTooLarge => "body-too-large",
            Problem::UnsupportedMediaType => "unsupported-media-type",
            Problem::InvalidQuery => "invalid-query",
            Problem::InvalidLookup => "invalid-lookup",
            Problem::NotFound => "not-found",
            Problem::Overloaded => "overloaded",
            Problem::StorageFull => "storage-full",
            Problem::TemporarilyUnavailable => "temporarily-unavailable",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Problem::MalformedJson | Problem::InvalidEventId | Problem::InvalidQuery | Problem::InvalidLookup => {
                StatusCode::BAD_REQUEST
            }
            Problem::InvalidAmount
            | Problem::InvalidAccount
            | Problem::SameAccount
            | Problem::InvalidKey
            | Problem::InvalidPayment
            | Problem::EventMismatch
            | Problem::RefusedByStore => StatusCode::UNPROCESSABLE_ENTITY,
            Problem::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Problem::NotFound => StatusCode::NOT_FOUND,
            Problem::Overloaded | Problem::StorageFull | Problem::TemporarilyUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn title(self) -> &'static str {
        match self {
            Problem::MalformedJson => "The body is not a payment event",
            Problem::InvalidEventId => "The event id is not valid",
            Problem::InvalidAmount => "The amount is not valid",
            Problem::InvalidAccount => "An account name is not valid",
            Problem::SameAccount => "Source and destination are the same account",
            Problem::InvalidKey => "The propagated key is not valid",
            Problem::InvalidPayment => "The payment id or time is not valid",
            Problem::EventMismatch => "The event id is already receipted with other content",
            Problem::RefusedByStore => "The receipts database refuses this event",
            Problem::BodyTooLarge => "The body is too large",
            Problem::UnsupportedMediaType => "The body must be JSON",
            Problem::InvalidQuery => "The query string is not valid",
            Problem::InvalidLookup => "The lookup is not valid",
            Problem::NotFound => "Not found",
            Problem::Overloaded => "The service is overloaded",
            Problem::StorageFull => "The service's disk is full",
            Problem::TemporarilyUnavailable => "The service is temporarily unavailable",
        }
    }

    /// What a sender should do about it; served at `/problems/<slug>`.
    fn advice(self) -> &'static str {
        match self {
            Problem::MalformedJson => {
                "Nothing was stored. Send one JSON object with exactly the fields event_id, payment_id, key, src, dest, amount_minor and paid_at_ms."
            }
            Problem::InvalidEventId => {
                "Nothing was stored. The event id must be 1 to 128 bytes without control characters, unique per payment (<ledger id>:<payment id>)."
            }
            Problem::InvalidAmount
            | Problem::InvalidAccount
            | Problem::SameAccount
            | Problem::InvalidKey
            | Problem::InvalidPayment => {
                "Nothing was stored, and the same event would be refused again: the payment it describes is not one a payment service can execute."
            }
            Problem::EventMismatch => {
                "Nothing was stored. This event id already has a receipt for a different payment (other amount, accounts, key or payment id): event ids must never be reused."
            }
            Problem::RefusedByStore => {
                "Nothing was stored, and the same event would be refused again; tell the service's operator."
            }
            Problem::BodyTooLarge => "Send at most 16 KiB for an event, 1 MiB for a lookup.",
            Problem::UnsupportedMediaType => "Send Content-Type: application/json, or no Content-Type at all.",
            Problem::InvalidQuery => "Use ?payment_id=N, or ?after=ID&limit=N (limit 1 to 1000), each a whole number.",
            Problem::InvalidLookup => {
                "Send {\"event_ids\": [...]} with 1 to 1000 event ids, each 1 to 128 bytes without control characters."
            }
            Problem::NotFound => "See GET / for the routes.",
            Problem::Overloaded => {
                "Nothing was stored: the write queue is full. Deliver again after Retry-After seconds."
            }
            Problem::StorageFull => {
                "The database's disk is full; the delivery may or may not have taken effect. Deliver again after Retry-After seconds; the inbox absorbs a duplicate."
            }
            Problem::TemporarilyUnavailable => {
                "The delivery may or may not have taken effect. Deliver again after Retry-After seconds; the inbox absorbs a duplicate."
            }
        }
    }
}

/// An error answer: the problem, a detail naming the field or value, and for
/// a 503 how long to wait before retrying.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub problem: Problem,
    pub detail: String,
    pub field: Option<&'static str>,
    pub event_id: Option<String>,
}

impl ApiError {
    pub fn new(problem: Problem, detail: impl Into<String>) -> ApiError {
        ApiError {
            problem,
            detail: detail.into(),
            field: None,
            event_id: None,
        }
    }

    pub fn with_field(mut self, field: &'static str) -> ApiError {
        self.field = Some(field);
        self
    }

    pub fn with_event(mut self, event_id: &str) -> ApiError {
        self.event_id = Some(event_id.to_owned());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let members = Members {
            field: self.field,
            event_id: self.event_id.as_deref(),
            ..Members::default()
        };
        // Every 503 tells the relay when to come back.
        let retry_after_s = (self.problem.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(1);
        problem::response(self.problem, &self.detail, members, retry_after_s)
    }
}

// The advice names these numbers; keep them in step with the limits.
const _: () = assert!(EVENT_BODY_BYTES_MAX == 16 * 1024);
const _: () = assert!(eo_core::wire::EVENT_ID_BYTES_MAX == 128);
const _: () = assert!(ACCOUNT_BYTES_MAX == 64 && PROPAGATED_KEY_BYTES_MAX == 512);
