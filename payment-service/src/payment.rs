//! The payment request as it arrives (parsing and validation) and the payment
//! as it is stored and shown.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::clock;
use crate::error::{ApiError, Problem};
use crate::money;

/// The longest account name, in bytes.
pub const ACCOUNT_BYTES_MAX: usize = 64;

/// A validated request to move `amount_minor` from `src` to `dest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRequest {
    pub src: String,
    pub dest: String,
    pub amount_minor: i64,
}

impl PaymentRequest {
    /// What "the same request" means for a reused key: the fields that decide
    /// the effect. Unit separators keep `("a", "bc")` apart from `("ab", "c")`;
    /// account names cannot contain them.
    pub fn fingerprint(&self) -> String {
        format!("{}\u{1f}{}\u{1f}{}", self.src, self.dest, self.amount_minor)
    }

    /// Parses and validates a request body. Unknown fields are ignored (the
    /// workshop's clients may add some); every refusal names its field.
    pub fn from_json(body: &[u8]) -> Result<PaymentRequest, ApiError> {
        // serde would accept a JSON array for a struct (fields by position):
        // insist on an object first.
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(ApiError::new(
                Problem::MalformedJson,
                "the body must be a JSON object such as {\"src\": \"bianca\", \"dest\": \"marc\", \"amount\": \"1.00\"}",
            ));
        }
        let raw: RawBody<'_> = serde_json::from_slice(body)
            .map_err(|e| ApiError::new(Problem::MalformedJson, format!("the body is not valid JSON: {e}")))?;
        let src = account("src", raw.src)?;
        let dest = account("dest", raw.dest)?;
        if src == dest {
            return Err(ApiError::new(
                Problem::SameAccount,
                format!("src and dest are both {src:?}; a payment must move money between two accounts"),
            )
            .with_field("dest"));
        }
        let amount_minor = amount(raw.amount)?;
        Ok(PaymentRequest {
            src,
            dest,
            amount_minor,
        })
    }
}

/// The body with every field kept as raw JSON, so that each can be checked on
/// its own and the amount's digits are never routed through a float.
#[derive(Deserialize)]
struct RawBody<'a> {
    #[serde(borrow, default)]
    src: Option<&'a RawValue>,
    #[serde(borrow, default)]
    dest: Option<&'a RawValue>,
    #[serde(borrow, default)]
    amount: Option<&'a RawValue>,
}

fn account(field: &'static str, raw: Option<&RawValue>) -> Result<String, ApiError> {
    let invalid = |detail: String| Err(ApiError::new(Problem::InvalidAccount, detail).with_field(field));
    let Some(raw) = raw.filter(|r| r.get() != "null") else {
        return Err(ApiError::new(Problem::MissingField, format!("field {field} is required")).with_field(field));
    };
    let Ok(name) = serde_json::from_str::<String>(raw.get()) else {
        return invalid(format!("field {field} must be a string, got {}", snippet(raw.get())));
    };
    if name.is_empty() || name.len() > ACCOUNT_BYTES_MAX {
        return invalid(format!(
            "field {field} must be 1 to {ACCOUNT_BYTES_MAX} characters long"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return invalid(format!(
            "field {field} may contain only A-Z, a-z, 0-9, '_', '.' and '-'"
        ));
    }
    Ok(name)
}

fn amount(raw: Option<&RawValue>) -> Result<i64, ApiError> {
    let field = "amount";
    let Some(raw) = raw.filter(|r| r.get() != "null") else {
        return Err(ApiError::new(Problem::MissingField, "field amount is required").with_field(field));
    };
    let text = raw.get();
    let digits = if text.starts_with('"') {
        match serde_json::from_str::<String>(text) {
            Ok(s) => s,
            Err(_) => {
                return Err(
                    ApiError::new(Problem::InvalidAmount, "field amount is not a valid string").with_field(field),
                );
            }
        }
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        text.to_owned()
    } else {
        return Err(ApiError::new(
            Problem::InvalidAmount,
            format!(
                "field amount must be a number or a numeric string such as \"12.50\", got {}",
                snippet(text)
            ),
        )
        .with_field(field));
    };
    money::parse_decimal_minor(&digits).map_err(|e| {
        ApiError::new(
            Problem::InvalidAmount,
            format!("field amount {} (got {})", e.0, snippet(text)),
        )
        .with_field(field)
    })
}

/// At most 40 characters of what the client sent, for error details.
fn snippet(text: &str) -> String {
    let cut: String = text.chars().take(40).collect();
    if cut.len() < text.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// A stored payment: one row of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub id: i64,
    pub src: String,
    pub dest: String,
    pub amount_minor: i64,
    pub idempotency_key: Option<String>,
    pub created_at_ms: i64,
}

/// The JSON shape of a payment. Field order is fixed, so the same row always
/// renders to the same bytes: a replay rebuilt from the ledger is
/// byte-identical to the stored first answer.
#[derive(Serialize)]
struct PaymentJson<'a> {
    id: i64,
    src: &'a str,
    dest: &'a str,
    amount: String,
    amount_minor: i64,
    idempotency_key: Option<&'a str>,
    created_at: String,
}

impl Payment {
    pub fn matches(&self, request: &PaymentRequest) -> bool {
        self.src == request.src && self.dest == request.dest && self.amount_minor == request.amount_minor
    }

    pub fn to_json(&self) -> String {
        let json = PaymentJson {
            id: self.id,
            src: &self.src,
            dest: &self.dest,
            amount: money::format_minor(self.amount_minor),
            amount_minor: self.amount_minor,
            idempotency_key: self.idempotency_key.as_deref(),
            created_at: clock::rfc3339_ms(self.created_at_ms),
        };
        // Serializing plain strings and integers cannot fail.
        serde_json::to_string(&json).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<PaymentRequest, Problem> {
        PaymentRequest::from_json(body.as_bytes()).map_err(|e| e.problem)
    }

    #[test]
    fn accepts_numbers_and_numeric_strings() {
        let ok = |body: &str, minor: i64| {
            assert_eq!(parse(body).map(|r| r.amount_minor), Ok(minor), "{body}");
        };
        ok(r#"{"src": "bianca", "dest": "marc", "amount": 1}"#, 100);
        ok(r#"{"src": "bianca", "dest": "marc", "amount": "1"}"#, 100);
        ok(r#"{"src": "bianca", "dest": "marc", "amount": "12.50"}"#, 1250);
        ok(
            r#"{"src": "bianca", "dest": "marc", "amount": 12.5, "note": "ignored"}"#,
            1250,
        );
    }

    #[test]
    fn names_the_problem() {
        assert_eq!(parse(r#"[1,2,3]"#), Err(Problem::MalformedJson));
        assert_eq!(parse(r#"{"src": "a""#), Err(Problem::MalformedJson));
        assert_eq!(parse(r#"{"dest": "a", "amount": 1}"#), Err(Problem::MissingField));
        assert_eq!(
            parse(r#"{"src": null, "dest": "a", "amount": 1}"#),
            Err(Problem::MissingField)
        );
        assert_eq!(
            parse(r#"{"src": 5, "dest": "a", "amount": 1}"#),
            Err(Problem::InvalidAccount)
        );
        assert_eq!(
            parse(r#"{"src": "a b", "dest": "a", "amount": 1}"#),
            Err(Problem::InvalidAccount)
        );
        assert_eq!(
            parse(r#"{"src": "a", "dest": "a", "amount": 1}"#),
            Err(Problem::SameAccount)
        );
        assert_eq!(
            parse(r#"{"src": "a", "dest": "b", "amount": true}"#),
            Err(Problem::InvalidAmount)
        );
        assert_eq!(
            parse(r#"{"src": "a", "dest": "b", "amount": 1e2}"#),
            Err(Problem::InvalidAmount)
        );
        assert_eq!(
            parse(r#"{"src": "a", "dest": "b", "amount": -1}"#),
            Err(Problem::InvalidAmount)
        );
        assert_eq!(
            parse(r#"{"src": "a", "dest": "b", "amount": "1.234"}"#),
            Err(Problem::InvalidAmount)
        );
        assert_eq!(
            parse(r#"{"src": "a", "dest": "b", "amount": "1", "amount": "2"}"#),
            Err(Problem::MalformedJson)
        );
    }

    #[test]
    fn renders_deterministically() {
        let payment = Payment {
            id: 7,
            src: "bianca".into(),
            dest: "marc".into(),
            amount_minor: 100,
            idempotency_key: Some("k".into()),
            created_at_ms: 0,
        };
        assert_eq!(
            payment.to_json(),
            r#"{"id":7,"src":"bianca","dest":"marc","amount":"1.00","amount_minor":100,"idempotency_key":"k","created_at":"1970-01-01T00:00:00.000Z"}"#
        );
    }
}
