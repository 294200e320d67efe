//! What senders send, parsed and checked before anything is stored: the
//! payment event of `POST /receipts` and the body of `POST /receipts/lookup`,
//! through one extractor (Content-Type, size, JSON, then the type's rules).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use eo_core::money::AMOUNT_MINOR_MAX;
use eo_core::wire::{EVENT_ID_BYTES_MAX, LOOKUP_KEYS_MAX, PaymentEvent};
use serde::Deserialize;

use crate::config::{ACCOUNT_BYTES_MAX, EVENT_BODY_BYTES_MAX, LOOKUP_BODY_BYTES_MAX, PROPAGATED_KEY_BYTES_MAX};
use crate::error::{ApiError, Problem};

/// A body type that parses and validates itself from JSON bytes.
pub(crate) trait JsonBody: Sized {
    /// The largest body of this type; the route's body limit layer must be
    /// the same (it is what stops reading).
    const BYTES_MAX: usize;
    fn parse(body: &[u8]) -> Result<Self, ApiError>;
}

/// A checked payment event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event(pub PaymentEvent);

impl JsonBody for Event {
    const BYTES_MAX: usize = EVENT_BODY_BYTES_MAX;
    fn parse(body: &[u8]) -> Result<Event, ApiError> {
        let event: PaymentEvent = serde_json::from_slice(body)
            .map_err(|e| ApiError::new(Problem::MalformedJson, format!("the body is not a payment event: {e}")))?;
        check_event(&event).map_err(|e| e.with_event(&event.event_id))?;
        Ok(Event(event))
    }
}

/// The rules an event must follow to be receipted. Each refusal names the
/// field; nothing is stored.
pub(crate) fn check_event(event: &PaymentEvent) -> Result<(), ApiError> {
    check_event_id(&event.event_id)
        .map_err(|why| ApiError::new(Problem::InvalidEventId, why).with_field("event_id"))?;
    if !(1..=AMOUNT_MINOR_MAX).contains(&event.amount_minor) {
        let detail = format!(
            "amount_minor must be 1 to {AMOUNT_MINOR_MAX} minor units, got {}",
            event.amount_minor
        );
        return Err(ApiError::new(Problem::InvalidAmount, detail).with_field("amount_minor"));
    }
    check_account("src", &event.src)?;
    check_account("dest", &event.dest)?;
    if event.src == event.dest {
        let detail = format!(
            "src and dest are both {:?}: a payment moves money between two accounts",
            event.src
        );
        return Err(ApiError::new(Problem::SameAccount, detail).with_field("dest"));
    }
    if let Some(key) = &event.key {
        check_text(key, PROPAGATED_KEY_BYTES_MAX)
            .map_err(|why| ApiError::new(Problem::InvalidKey, format!("key {why}")).with_field("key"))?;
    }
    if event.payment_id < 1 {
        let detail = format!("payment_id must be at least 1, got {}", event.payment_id);
        return Err(ApiError::new(Problem::InvalidPayment, detail).with_field("payment_id"));
    }
    if event.paid_at_ms < 0 {
        let detail = format!("paid_at_ms must be ms since the Unix epoch, got {}", event.paid_at_ms);
        return Err(ApiError::new(Problem::InvalidPayment, detail).with_field("paid_at_ms"));
    }
    Ok(())
}

/// 1 to [`EVENT_ID_BYTES_MAX`] bytes, no control characters.
pub(crate) fn check_event_id(id: &str) -> Result<(), String> {
    check_text(id, EVENT_ID_BYTES_MAX).map_err(|why| format!("event_id {why}"))
}

fn check_account(field: &'static str, name: &str) -> Result<(), ApiError> {
    check_text(name, ACCOUNT_BYTES_MAX)
        .map_err(|why| ApiError::new(Problem::InvalidAccount, format!("{field} {why}")).with_field(field))
}

/// 1 to `bytes_max` bytes without control characters (which would break a
/// log line or a terminal's rendering of the receipt).
fn check_text(text: &str, bytes_max: usize) -> Result<(), String> {
    if text.is_empty() || text.len() > bytes_max {
        return Err(format!("must be 1 to {bytes_max} bytes long, got {}", text.len()));
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(format!("must not contain control characters (found {c:?})"));
    }
    Ok(())
}

/// `POST /receipts/lookup`: the event ids to count receipts for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Lookup {
    pub event_ids: Vec<String>,
}

impl JsonBody for Lookup {
    const BYTES_MAX: usize = LOOKUP_BODY_BYTES_MAX;
    fn parse(body: &[u8]) -> Result<Lookup, ApiError> {
        let invalid = |detail: String| ApiError::new(Problem::InvalidLookup, detail);
        let lookup: Lookup =
            serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not a lookup: {e}")))?;
        if lookup.event_ids.is_empty() || lookup.event_ids.len() > LOOKUP_KEYS_MAX {
            return Err(invalid(format!(
                "event_ids must hold 1 to {LOOKUP_KEYS_MAX} ids, got {}",
                lookup.event_ids.len()
            )));
        }
        for (at, id) in lookup.event_ids.iter().enumerate() {
            check_event_id(id).map_err(|why| invalid(format!("event_ids[{at}]: {why}")))?;
        }
        Ok(lookup)
    }
}

/// A JSON body of type `T`: Content-Type checked, size bounded, parsed and
/// validated.
pub(crate) struct Body<T>(pub T);

impl<S: Send + Sync, T: JsonBody> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        check_content_type(request.headers())?;
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    Problem::BodyTooLarge,
                    format!("the body is larger than {} bytes", T::BYTES_MAX),
                )
            } else {
                ApiError::new(
                    Problem::MalformedJson,
                    format!("the body could not be read: {rejection}"),
                )
            }
        })?;
        T::parse(&bytes).map(Body)
    }
}

/// No Content-Type, `application/json` or any `application/*+json` passes.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let essence = text.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        return Ok(());
    }
    Err(ApiError::new(
        Problem::UnsupportedMediaType,
        format!("Content-Type {text:?} is not JSON; send application/json"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> PaymentEvent {
        PaymentEvent {
            event_id: "00ff00ff00ff00ff:1".into(),
            payment_id: 1,
            key: Some("pay-1".into()),
            src: "alice".into(),
            dest: "bob".into(),
            amount_minor: 100,
            paid_at_ms: 1,
        }
    }

    /// The event with one change.
    fn with(change: impl FnOnce(&mut PaymentEvent)) -> PaymentEvent {
        let mut e = event();
        change(&mut e);
        e
    }

    #[test]
    fn each_rule_names_its_field_and_problem() {
        assert!(check_event(&event()).is_ok());
        let cases: Vec<(PaymentEvent, Problem, &str)> = vec![
            (with(|e| e.event_id.clear()), Problem::InvalidEventId, "event_id"),
            (
                with(|e| e.event_id = "x".repeat(129)),
                Problem::InvalidEventId,
                "event_id",
            ),
            (
                with(|e| e.event_id = "a\nb".into()),
                Problem::InvalidEventId,
                "event_id",
            ),
            (with(|e| e.amount_minor = 0), Problem::InvalidAmount, "amount_minor"),
            (
                with(|e| e.amount_minor = AMOUNT_MINOR_MAX + 1),
                Problem::InvalidAmount,
                "amount_minor",
            ),
            (with(|e| e.src = "a".repeat(65)), Problem::InvalidAccount, "src"),
            (with(|e| e.dest.clear()), Problem::InvalidAccount, "dest"),
            (with(|e| e.dest = "alice".into()), Problem::SameAccount, "dest"),
            (with(|e| e.key = Some(String::new())), Problem::InvalidKey, "key"),
            (with(|e| e.payment_id = 0), Problem::InvalidPayment, "payment_id"),
            (with(|e| e.paid_at_ms = -1), Problem::InvalidPayment, "paid_at_ms"),
        ];
        for (bad, problem, field) in cases {
            let e = check_event(&bad).expect_err(field);
            assert_eq!((e.problem, e.field), (problem, Some(field)), "{}", e.detail);
        }
        let longest = with(|e| {
            e.event_id = "x".repeat(128);
            e.amount_minor = AMOUNT_MINOR_MAX;
        });
        assert!(check_event(&longest).is_ok());
    }

    #[test]
    fn lookups_are_bounded() {
        assert!(Lookup::parse(br#"{"event_ids": ["a:1"]}"#).is_ok());
        for bad in [
            r#"{"event_ids": []}"#.to_owned(),
            r#"{"event_ids": [""]}"#.to_owned(),
            r#"{"event_ids": ["a"], "more": 1}"#.to_owned(),
            serde_json::json!({ "event_ids": vec!["a"; LOOKUP_KEYS_MAX + 1] }).to_string(),
        ] {
            assert_eq!(
                Lookup::parse(bad.as_bytes()).unwrap_err().problem,
                Problem::InvalidLookup,
                "{bad}"
            );
        }
    }
}
