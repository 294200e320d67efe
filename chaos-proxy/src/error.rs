//! The one API error type, rendered in toxiproxy's shape.
//!
//! toxiproxy writes errors with Go's `http.Error`: the body is the JSON
//! `{"error":"…","status":N}` plus a newline, sent as `text/plain` with
//! `X-Content-Type-Options: nosniff`. Clients parse the body as JSON and
//! ignore the content type, so we copy the shape byte for byte.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An API failure. Every variant maps to one status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: malformed or invalid input; nothing was changed.
    BadRequest(String),
    /// 404: `proxy not found` / `toxic not found`.
    NotFound(&'static str),
    /// 409: `proxy already exists` / `toxic already exists`.
    Conflict(&'static str),
    /// 413: the body is larger than the API accepts.
    PayloadTooLarge(String),
    /// 500: an operating-system failure (bind, resolve), as toxiproxy reports it.
    Internal(String),
}

impl ApiError {
    /// A body that does not decode, in toxiproxy's wording.
    pub fn bad_body(e: impl std::fmt::Display) -> ApiError {
        ApiError::BadRequest(format!("bad request body: {e}"))
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` string.
    pub fn message(&self) -> &str {
        match self {
            ApiError::BadRequest(m) | ApiError::PayloadTooLarge(m) | ApiError::Internal(m) => m,
            ApiError::NotFound(m) | ApiError::Conflict(m) => m,
        }
    }

    /// The same error with ` at proxy N` appended (populate's wording).
    pub fn at_proxy(self, index_1based: usize) -> ApiError {
        let suffix = |m: &str| format!("{m} at proxy {index_1based}");
        match self {
            ApiError::BadRequest(m) => ApiError::BadRequest(suffix(&m)),
            ApiError::Internal(m) => ApiError::Internal(suffix(&m)),
            ApiError::PayloadTooLarge(m) => ApiError::PayloadTooLarge(suffix(&m)),
            ApiError::NotFound(m) => ApiError::BadRequest(suffix(m)),
            ApiError::Conflict(m) => ApiError::BadRequest(suffix(m)),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message(), self.status().as_u16())
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::error!(error = %self.message(), "api request failed");
        } else {
            tracing::debug!(error = %self.message(), status = self.status().as_u16(), "api request refused");
        }
        // Build the body by hand to keep toxiproxy's key order: error, status.
        let body = format!(
            "{{\"error\":{},\"status\":{}}}\n",
            serde_json::Value::String(self.message().to_owned()),
            self.status().as_u16()
        );
        let mut resp = (self.status(), body).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        resp
    }
}
