//! One error type for the HTTP layer, rendered as RFC 9457
//! `application/problem+json`. Each cause has its own problem `type`, so
//! clients dispatch on the type rather than on the status alone.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use eo_core::problem::{self, Members, ProblemKind};

/// Every problem this service reports. `type` is `/problems/<slug>`, served
/// by the service itself with a one-paragraph explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    MalformedJson,
    MissingField,
    InvalidAmount,
    InvalidAccount,
    SameAccount,
    IdempotencyKeyMissing,
    IdempotencyKeyInvalid,
    IdempotencyKeyReused,
    IdempotencyKeyInUse,
    BodyTooLarge,
    UnsupportedMediaType,
    InvalidQuery,
    InvalidLookup,
    NotFound,
    BalanceOutOfRange,
    RefusedByLedger,
    Overloaded,
    TemporarilyUnavailable,
    StorageFull,
    DatabaseReplaced,
    AuditInProgress,
    InvalidBatch,
    BatchUnsupported,
    InvalidRedelivery,
    OutboxOff,
}

impl Problem {
    pub const ALL: [Problem; 25] = [
        Problem::MalformedJson,
        Problem::MissingField,
        Problem::InvalidAmount,
        Problem::InvalidAccount,
        Problem::SameAccount,
        Problem::IdempotencyKeyMissing,
        Problem::IdempotencyKeyInvalid,
        Problem::IdempotencyKeyReused,
        Problem::IdempotencyKeyInUse,
        Problem::BodyTooLarge,
        Problem::UnsupportedMediaType,
        Problem::InvalidQuery,
        Problem::InvalidLookup,
        Problem::NotFound,
        Problem::BalanceOutOfRange,
        Problem::RefusedByLedger,
        Problem::Overloaded,
        Problem::TemporarilyUnavailable,
        Problem::StorageFull,
        Problem::DatabaseReplaced,
        Problem::AuditInProgress,
        Problem::InvalidBatch,
        Problem::BatchUnsupported,
        Problem::InvalidRedelivery,
        Problem::OutboxOff,
    ];

    pub fn slug(self) -> &'static str {
        match self {
            Problem::MalformedJson => "malformed-json",
            Problem::MissingField => "missing-field",
            Problem::InvalidAmount => "invalid-amount",
            Problem::InvalidAccount => "invalid-account",
            Problem::SameAccount => "same-account",
            Problem::IdempotencyKeyMissing => "idempotency-key-missing",
            Problem::IdempotencyKeyInvalid => "idempotency-key-invalid",
            Problem::IdempotencyKeyReused => "idempotency-key-reused",
            Problem::IdempotencyKeyInUse => "idempotency-key-in-use",
            Problem::BodyTooLarge => "body-too-large",
            Problem::UnsupportedMediaType => "unsupported-media-type",
            Problem::InvalidQuery => "invalid-query",
            Problem::InvalidLookup => "invalid-lookup",
            Problem::NotFound => "not-found",
            Problem::BalanceOutOfRange => "balance-out-of-range",
            Problem::RefusedByLedger => "refused-by-ledger",
            Problem::Overloaded => "overloaded",
            Problem::StorageFull => "storage-full",
            Problem::DatabaseReplaced => "database-replaced",
            Problem::TemporarilyUnavailable => "temporarily-unavailable",
            Problem::AuditInProgress => "audit-in-progress",
            Problem::InvalidBatch => "invalid-batch",
            Problem::BatchUnsupported => "batch-unsupported",
            Problem::InvalidRedelivery => "invalid-redelivery",
            Problem::OutboxOff => "outbox-off",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Problem::MalformedJson
            | Problem::MissingField
            | Problem::InvalidAmount
            | Problem::InvalidAccount
            | Problem::SameAccount
            | Problem::IdempotencyKeyMissing
            | Problem::IdempotencyKeyInvalid
            | Problem::InvalidQuery
            | Problem::InvalidLookup
            | Problem::InvalidBatch
            | Problem::InvalidRedelivery => StatusCode::BAD_REQUEST,
            Problem::IdempotencyKeyReused
            | Problem::BalanceOutOfRange
            | Problem::RefusedByLedger
            | Problem::BatchUnsupported
            | Problem::OutboxOff => StatusCode::UNPROCESSABLE_ENTITY,
            Problem::IdempotencyKeyInUse | Problem::AuditInProgress => StatusCode::CONFLICT,
            Problem::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Problem::NotFound => StatusCode::NOT_FOUND,
            Problem::Overloaded
            | Problem::TemporarilyUnavailable
            | Problem::StorageFull
            | Problem::DatabaseReplaced => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Problem::MalformedJson => "The body is not a JSON object",
            Problem::MissingField => "A required field is missing",
            Problem::InvalidAmount => "The amount is not valid",
            Problem::InvalidAccount => "An account name is not valid",
            Problem::SameAccount => "Source and destination are the same account",
            Problem::IdempotencyKeyMissing => "Idempotency-Key is missing",
            Problem::IdempotencyKeyInvalid => "Idempotency-Key is not valid",
            Problem::IdempotencyKeyReused => "Idempotency-Key is already used with a different request",
            Problem::IdempotencyKeyInUse => "A request is outstanding for this Idempotency-Key",
            Problem::BodyTooLarge => "The body is too large",
            Problem::UnsupportedMediaType => "The body must be JSON",
            Problem::InvalidQuery => "The query string is not valid",
            Problem::InvalidLookup => "The lookup is not valid",
            Problem::NotFound => "Not found",
            Problem::BalanceOutOfRange => "The payment would take a balance out of range",
            Problem::RefusedByLedger => "The ledger refuses this payment",
            Problem::Overloaded => "The service is overloaded",
            Problem::StorageFull => "The service's disk is full",
            Problem::DatabaseReplaced => "The database file was removed or replaced",
            Problem::TemporarilyUnavailable => "The service is temporarily unavailable",
            Problem::AuditInProgress => "An audit is already running",
            Problem::InvalidBatch => "The batch is not valid",
            Problem::BatchUnsupported => "Batches are not offered in this --dedup mode",
            Problem::InvalidRedelivery => "The redelivery request is not valid",
            Problem::OutboxOff => "This service runs without an outbox",
        }
    }

    /// What a client should do about it; served at `/problems/<slug>`.
    pub fn advice(self) -> &'static str {
        match self {
            Problem::MalformedJson
            | Problem::MissingField
            | Problem::InvalidAmount
            | Problem::InvalidAccount
            | Problem::SameAccount
            | Problem::InvalidQuery => {
                "Nothing was stored. Fix the request as the detail says; the same key may be used again."
            }
            Problem::IdempotencyKeyMissing => {
                "This service runs with --require-key: send Idempotency-Key (or Payment-Idempotence-Key) with one key per logical payment, reused on every retry."
            }
            Problem::IdempotencyKeyInvalid => {
                "Send one key of 1 to 255 printable ASCII characters, as a quoted string (\"abc\") or a bare token, in one header."
            }
            Problem::IdempotencyKeyReused => {
                "The key already names a different payment; nothing was stored. Never mint a new key for a retry: a refused retry means the request changed."
            }
            Problem::IdempotencyKeyInUse => {
                "The first request with this key is still being processed. Retry with the same key after Retry-After seconds; it will replay the first answer."
            }
            Problem::InvalidLookup => {
                "Send {\"keys\": [...]} with 1 to 1000 keys and an optional \"after_id\" >= 0 (the previous answer's next_after_id)."
            }
            Problem::BodyTooLarge => "Send at most 16 KiB (a lookup: at most 1000 keys).",
            Problem::UnsupportedMediaType => "Send Content-Type: application/json, or no Content-Type at all.",
            Problem::NotFound => "See GET / for the routes.",
            Problem::BalanceOutOfRange => {
                "Nothing was stored. An account balance is a 64-bit number of minor units and this payment would take it past the limit; it would fail again the same way, so do not retry it."
            }
            Problem::RefusedByLedger => {
                "Nothing was stored. The payment breaks a rule of the ledger and would fail again the same way: do not retry it; tell the service's operator."
            }
            Problem::StorageFull => {
                "The database's disk is full; the request may or may not have taken effect. Retry with the same key after Retry-After seconds; the operator must free space."
            }
            Problem::DatabaseReplaced => {
                "The service's database file was removed or replaced while it ran, so it stopped acknowledging payments. The request may or may not have taken effect: retry with the same key later. Operator: put the original file back and restart the service (see its error log)."
            }
            Problem::Overloaded => {
                "The write queue is full; nothing was stored. Retry with the same key after Retry-After seconds."
            }
            Problem::TemporarilyUnavailable => {
                "The request may or may not have taken effect. Retry with the same key after Retry-After seconds."
            }
            Problem::InvalidBatch => {
                "Nothing was stored. Send {\"items\": [{\"item_id\": \"...\", \"src\", \"dest\", \"amount\"}, ...]} with 1 to 100 items, each item_id unique in the batch, printable ASCII without ':', and the key plus ':' plus the item id at most 255 characters; one Idempotency-Key for the whole batch."
            }
            Problem::BatchUnsupported => {
                "Nothing was stored. POST /payments/batch is exact under --dedup unique and pays every time under --dedup off; other modes have no batch semantics: send the items one by one with POST /payments and KEY:ITEM_ID keys."
            }
            Problem::InvalidRedelivery => {
                "Send {\"window_ms\": N} with N from 1 to 3600000 (one hour): events delivered in the last N ms become pending again."
            }
            Problem::OutboxOff => {
                "Start the service with --receipts-url URL (and --notify outbox, the default with a URL) to have events to redeliver."
            }
            Problem::AuditInProgress => {
                "One audit runs at a time (it reads the whole ledger). The detail says how far it is; ask again when it is done, or read the service's log for its result."
            }
        }
    }
}

/// An error answer: the problem, a detail naming the field or value, and for
/// 409/503 how long to wait before retrying.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub problem: Problem,
    pub detail: String,
    pub field: Option<&'static str>,
    pub idempotency_key: Option<String>,
    pub retry_after_s: Option<u32>,
}

impl ApiError {
    pub fn new(problem: Problem, detail: impl Into<String>) -> ApiError {
        // Every 409 and 503 tells the client when to come back.
        let retry_after_s = match problem.status() {
            StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        };
        ApiError {
            problem,
            detail: detail.into(),
            field: None,
            idempotency_key: None,
            retry_after_s,
        }
    }

    pub fn with_field(mut self, field: &'static str) -> ApiError {
        self.field = Some(field);
        self
    }

    pub fn with_key(mut self, key: Option<&str>) -> ApiError {
        self.idempotency_key = key.map(str::to_owned);
        self
    }
}

/// The shared rendering (`eo_core::problem`) of this service's causes.
impl ProblemKind for Problem {
    const ALL: &'static [Problem] = &Problem::ALL;
    fn slug(self) -> &'static str {
        Problem::slug(self)
    }
    fn title(self) -> &'static str {
        Problem::title(self)
    }
    fn status(self) -> StatusCode {
        Problem::status(self)
    }
    fn advice(self) -> &'static str {
        Problem::advice(self)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let members = Members {
            field: self.field,
            idempotency_key: self.idempotency_key.as_deref(),
            ..Members::default()
        };
        problem::response(self.problem, &self.detail, members, self.retry_after_s)
    }
}
