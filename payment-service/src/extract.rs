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

/// Deepest nesting of arrays and objects in a body. A payment or a lookup is
/// one level; fields clients add rarely nest more than a few. serde_json
/// skips unknown fields without its recursion limit, so this is checked here.
pub(crate) const JSON_DEPTH_MAX: usize = 32;

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
        check_json_text(&bytes)?;
        T::parse(&bytes).map(Body)
    }
}

/// What every JSON body must be before it is parsed: UTF-8 throughout (RFC
/// 8259 §8.1; serde_json does not check the strings of fields it skips), and
/// nested at most [`JSON_DEPTH_MAX`] deep. Either way nothing is stored.
pub(crate) fn check_json_text(body: &[u8]) -> Result<(), ApiError> {
    let malformed = |detail: String| ApiError::new(Problem::MalformedJson, detail);
    if let Err(e) = std::str::from_utf8(body) {
        return Err(malformed(format!(
            "the body is not UTF-8 (invalid byte at offset {}); JSON text must be UTF-8",
            e.valid_up_to()
        )));
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > JSON_DEPTH_MAX {
                    return Err(malformed(format!(
                        "the body nests arrays or objects more than {JSON_DEPTH_MAX} deep"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_invalid_utf8_anywhere_and_deep_nesting() {
        let ok = |body: &[u8]| check_json_text(body).map_err(|e| e.detail);
        assert_eq!(ok(br#"{"src": "a", "note": {"x": [1, [2]]}}"#), Ok(()));
        // Brackets inside strings, escaped quotes included, do not count.
        let brackets = format!(r#"{{"note": "\"{}"}}"#, "[".repeat(100));
        assert_eq!(ok(brackets.as_bytes()), Ok(()));
        let at_limit = format!("{}{}", "[".repeat(JSON_DEPTH_MAX), "]".repeat(JSON_DEPTH_MAX));
        assert_eq!(ok(at_limit.as_bytes()), Ok(()));
        for bad in [
            b"{\"note\": \"\xff\xfe\"}".to_vec(),
            b"{\"note\": \"\xc3\"}".to_vec(),
            format!("{}{}", "[".repeat(JSON_DEPTH_MAX + 1), "]".repeat(JSON_DEPTH_MAX + 1)).into_bytes(),
            format!(r#"{{"x": {}}}"#, "[".repeat(8000)).into_bytes(),
        ] {
            let refused = check_json_text(&bad).expect_err("refused");
            assert_eq!(refused.problem, Problem::MalformedJson);
        }
    }
}
