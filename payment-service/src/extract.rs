//! axum extractors for what clients send: the idempotency key headers and
//! JSON bodies. Their rejection is [`ApiError`], so a refusal is the same
//! problem document wherever it happens. Handlers that count refusals or
//! name the key in them take `Result<Extractor, ApiError>`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};

use crate::error::{ApiError, Problem};
use crate::key;
use crate::lookup::{LOOKUP_BODY_BYTES_MAX, Lookup};
use crate::payment::PaymentRequest;

/// Largest payment body accepted: a payment is under 200 bytes; 16 KiB leaves
/// room for clients that add fields, and refuses anything absurd.
pub const BODY_BYTES_MAX: usize = 16 * 1024;

/// The idempotency key of a request, if it carries one
/// (`Idempotency-Key` or `Payment-Idempotence-Key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        key::from_headers(&parts.headers)
            .map(IdempotencyKey)
            .map_err(|e| ApiError::new(Problem::IdempotencyKeyInvalid, e.0))
    }
}

/// A body type that parses and validates itself from JSON bytes.
pub(crate) trait JsonBody: Sized {
    /// The largest body of this type; the router's body limit layer for the
    /// route must be the same (it is what actually stops reading).
    const BYTES_MAX: usize;
    fn parse(body: &[u8]) -> Result<Self, ApiError>;
}

impl JsonBody for PaymentRequest {
    const BYTES_MAX: usize = BODY_BYTES_MAX;
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        PaymentRequest::from_json(body)
    }
}

impl JsonBody for Lookup {
    const BYTES_MAX: usize = LOOKUP_BODY_BYTES_MAX;
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        Lookup::from_json(body)
    }
}

/// A JSON body of type `T`: Content-Type checked, size bounded, parsed and
/// validated.
pub(crate) struct Body<T>(pub T);

impl<S: Send + Sync, T: JsonBody> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        check_content_type(request.headers())?;
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| body_rejection(&rejection, T::BYTES_MAX))?;
        T::parse(&bytes).map(Body)
    }
}

fn body_rejection(rejection: &BytesRejection, bytes_max: usize) -> ApiError {
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

/// No Content-Type, `application/json` or any `application/*+json` passes.
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
