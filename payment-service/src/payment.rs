//! The payment request as it arrives (parsing and validation) and the payment
//! as it is stored and shown.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::clock;
use crate::error::{ApiError, Problem};
use crate::money;

/// The longest account name, in bytes.
pub const ACCOUNT_BYTES_MAX: usize = 64;

/// A validated request to move `amount_minor` from `src` to `dest`. Its
/// fields are read-only: the answer's head and the fingerprint are derived
/// from them once, in [`PaymentRequest::new`], and must never go stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRequest {
    src: String,
    dest: String,
    amount_minor: i64,
    /// Its payment's answer up to the key ([`answer_head`]) and its
    /// fingerprint: made where the request is made (an async worker), so
    /// the writer only reads them.
    answer_head: String,
    fingerprint: String,
}

impl PaymentRequest {
    pub fn new(src: String, dest: String, amount_minor: i64) -> PaymentRequest {
        let answer_head = answer_head(&src, &dest, amount_minor);
        // Unit separators keep `("a", "bc")` apart from `("ab", "c")`;
        // account names cannot contain them.
        let fingerprint = format!("{src}\u{1f}{dest}\u{1f}{amount_minor}");
        PaymentRequest {
            src,
            dest,
            amount_minor,
            answer_head,
            fingerprint,
        }
    }

    pub fn src(&self) -> &str {
        &self.src
    }

    pub fn dest(&self) -> &str {
        &self.dest
    }

    pub fn amount_minor(&self) -> i64 {
        self.amount_minor
    }

    /// The answer to this request once paid as payment `id` under `key` at
    /// `created_at_ms`: the same bytes as that payment's [`Payment::to_json`].
    pub fn answer(&self, id: i64, key: Option<&str>, created_at_ms: i64) -> String {
        render_answer(&self.answer_head, id, key, created_at_ms)
    }

    /// What "the same request" means for a reused key: the fields that decide
    /// the effect.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
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
        Ok(PaymentRequest::new(src, dest, amount_minor))
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

/// A payment's answer, from `,"src"` to `"idempotency_key":`: what the
/// request decides. [`render_answer`] puts the id before it and the key and
/// the time after it. Every payment's answer is rendered through these two
/// (the first answer from its request, a replay or a rebuilt answer from the
/// row), in a fixed field order, so the same payment is always the same bytes.
/// Strings are escaped by serde_json, as a derived `Serialize` would (a test
/// compares the two).
fn answer_head(src: &str, dest: &str, amount_minor: i64) -> String {
    let mut out = Vec::with_capacity(96 + src.len() + dest.len());
    out.extend_from_slice(b",\"src\":");
    push_json_str(&mut out, src);
    out.extend_from_slice(b",\"dest\":");
    push_json_str(&mut out, dest);
    out.extend_from_slice(b",\"amount\":\"");
    out.extend_from_slice(money::format_minor(amount_minor).as_bytes());
    out.extend_from_slice(b"\",\"amount_minor\":");
    out.extend_from_slice(amount_minor.to_string().as_bytes());
    out.extend_from_slice(b",\"idempotency_key\":");
    into_string(out)
}

/// `{"id":ID` + `head` + the key (or null) + `,"created_at":"TIME"}`.
fn render_answer(head: &str, id: i64, key: Option<&str>, created_at_ms: i64) -> String {
    let mut out = Vec::with_capacity(64 + head.len() + key.map_or(4, str::len));
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(head.as_bytes());
    match key {
        Some(key) => push_json_str(&mut out, key),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"created_at\":\"");
    out.extend_from_slice(clock::rfc3339_ms(created_at_ms).as_bytes());
    out.extend_from_slice(b"\"}");
    into_string(out)
}

/// `text` as a JSON string, quoted and escaped by serde_json.
fn push_json_str(out: &mut Vec<u8>, text: &str) {
    // Writing a string into a Vec cannot fail.
    drop(serde_json::to_writer(&mut *out, text));
}

/// Bytes made of UTF-8 strings and ASCII are UTF-8.
fn into_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl Payment {
    pub fn matches(&self, request: &PaymentRequest) -> bool {
        self.src == request.src && self.dest == request.dest && self.amount_minor == request.amount_minor
    }

    /// Its answer: the same bytes whenever and wherever it is rendered.
    pub fn to_json(&self) -> String {
        let head = answer_head(&self.src, &self.dest, self.amount_minor);
        render_answer(&head, self.id, self.idempotency_key.as_deref(), self.created_at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

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

    /// The shape the answers had when a derived `Serialize` rendered them
    /// (stored answers of older files were rendered so): the reference.
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

    #[test]
    fn answers_are_the_bytes_serde_renders_from_the_request_and_from_the_row() {
        let keys = [
            None,
            Some(""),
            Some("k"),
            Some("quote\"back\\slash"),
            Some("\u{1}\t\n"),
            Some("é€😀"),
        ];
        let amounts = [1, 99, 100, 12_345, 100_000_000_000];
        let times = [0, 1_733_616_000_123, 253_402_300_799_999, 253_402_300_800_000, -1];
        for (i, key) in keys.into_iter().enumerate() {
            for (j, &amount_minor) in amounts.iter().enumerate() {
                let (src, dest) = ("bianca.b-1", "marc_2");
                let created_at_ms = times[(i + j) % times.len()];
                let id = [1, 42, i64::MAX][(i * j) % 3];
                let reference = serde_json::to_string(&PaymentJson {
                    id,
                    src,
                    dest,
                    amount: money::format_minor(amount_minor),
                    amount_minor,
                    idempotency_key: key,
                    created_at: clock::rfc3339_ms(created_at_ms),
                })
                .expect("serializes");
                let request = PaymentRequest::new(src.into(), dest.into(), amount_minor);
                assert_eq!(request.answer(id, key, created_at_ms), reference);
                let row = Payment {
                    id,
                    src: src.into(),
                    dest: dest.into(),
                    amount_minor,
                    idempotency_key: key.map(str::to_owned),
                    created_at_ms,
                };
                assert_eq!(row.to_json(), reference);
            }
        }
        // Names the parser refuses but an old or edited row might hold.
        let odd = Payment {
            id: 3,
            src: "a\"b".into(),
            dest: "c\\d".into(),
            amount_minor: 5,
            idempotency_key: None,
            created_at_ms: 0,
        };
        let reference = serde_json::to_string(&PaymentJson {
            id: 3,
            src: "a\"b",
            dest: "c\\d",
            amount: "0.05".into(),
            amount_minor: 5,
            idempotency_key: None,
            created_at: clock::rfc3339_ms(0),
        })
        .expect("serializes");
        assert_eq!(odd.to_json(), reference);
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
