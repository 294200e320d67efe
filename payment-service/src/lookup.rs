//! `POST /payments/lookup`: the body that asks for the payments of many keys
//! at once (reconciliation reads a whole run in about n / 1000 calls instead
//! of one GET per key).

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{ApiError, Problem};
use crate::key;

/// Keys in one lookup and payments in one answer: the wire contract's
/// (`eo_core::wire`), shared with the client that sends lookups.
pub use eo_core::wire::{LOOKUP_KEYS_MAX, PAGE_ROWS_MAX as LOOKUP_ROWS_MAX};

/// Largest lookup body: every key at its longest with every byte escaped
/// (`\"`), quoted and comma-separated, plus room for the rest of the object.
pub const LOOKUP_BODY_BYTES_MAX: usize = LOOKUP_KEYS_MAX * (2 * key::KEY_BYTES_MAX + 3) + 4096;

/// A validated lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// As sent, duplicates included (they change nothing in the answer).
    pub keys: Vec<String>,
    pub after_id: i64,
}

/// The body with each field kept raw, so each refusal can name its field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLookup<'a> {
    #[serde(borrow, default)]
    keys: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after_id: Option<&'a RawValue>,
}

impl Lookup {
    /// Parses and validates a lookup body; every refusal is a 400 problem.
    pub fn from_json(body: &[u8]) -> Result<Lookup, ApiError> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(ApiError::new(
                Problem::MalformedJson,
                "the body must be a JSON object such as {\"keys\": [\"k1\", \"k2\"], \"after_id\": 0}",
            ));
        }
        let raw: RawLookup<'_> = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                Problem::MalformedJson,
                format!("the body is not a lookup (only \"keys\" and \"after_id\" are allowed): {e}"),
            )
        })?;
        Ok(Lookup {
            keys: keys(raw.keys)?,
            after_id: after_id(raw.after_id)?,
        })
    }
}

fn keys(raw: Option<&RawValue>) -> Result<Vec<String>, ApiError> {
    let invalid = |problem, detail: String| ApiError::new(problem, detail).with_field("keys");
    let Some(raw) = raw.filter(|r| r.get() != "null") else {
        return Err(invalid(Problem::MissingField, "field keys is required".into()));
    };
    let keys: Vec<String> = serde_json::from_str(raw.get())
        .map_err(|_| invalid(Problem::InvalidLookup, "field keys must be an array of strings".into()))?;
    if keys.is_empty() || keys.len() > LOOKUP_KEYS_MAX {
        return Err(invalid(
            Problem::InvalidLookup,
            format!("field keys must hold 1 to {LOOKUP_KEYS_MAX} keys, got {}", keys.len()),
        ));
    }
    for (at, k) in keys.iter().enumerate() {
        key::check(k).map_err(|why| invalid(Problem::IdempotencyKeyInvalid, format!("keys[{at}] {why}")))?;
    }
    Ok(keys)
}

fn after_id(raw: Option<&RawValue>) -> Result<i64, ApiError> {
    let Some(raw) = raw.filter(|r| r.get() != "null") else {
        return Ok(0);
    };
    serde_json::from_str::<i64>(raw.get())
        .ok()
        .filter(|v| *v >= 0)
        .ok_or_else(|| {
            ApiError::new(
                Problem::InvalidLookup,
                format!("field after_id must be a whole number >= 0, got {}", raw.get()),
            )
            .with_field("after_id")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Lookup, (Problem, Option<&'static str>)> {
        Lookup::from_json(body.as_bytes()).map_err(|e| (e.problem, e.field))
    }

    #[test]
    fn reads_keys_and_the_cursor() {
        assert_eq!(
            parse(r#"{"keys": ["a", "a", "b"]}"#),
            Ok(Lookup {
                keys: vec!["a".into(), "a".into(), "b".into()],
                after_id: 0
            })
        );
        assert_eq!(parse(r#"{"keys": ["a"], "after_id": 7}"#).map(|l| l.after_id), Ok(7));
        let max = format!(r#"{{"keys": {}}}"#, serde_json::json!(vec!["k"; LOOKUP_KEYS_MAX]));
        assert_eq!(parse(&max).map(|l| l.keys.len()), Ok(LOOKUP_KEYS_MAX));
    }

    #[test]
    fn names_the_field_at_fault() {
        let keys = Some("keys");
        let too_many = format!(r#"{{"keys": {}}}"#, serde_json::json!(vec!["k"; LOOKUP_KEYS_MAX + 1]));
        for (body, problem, field) in [
            ("[]", Problem::MalformedJson, None),
            (r#"{"keys": ["a"]"#, Problem::MalformedJson, None),
            (r#"{"keys": ["a"], "limit": 5}"#, Problem::MalformedJson, None),
            ("{}", Problem::MissingField, keys),
            (r#"{"keys": []}"#, Problem::InvalidLookup, keys),
            (&too_many, Problem::InvalidLookup, keys),
            (r#"{"keys": "a"}"#, Problem::InvalidLookup, keys),
            (r#"{"keys": [1]}"#, Problem::InvalidLookup, keys),
            (r#"{"keys": ["a", ""]}"#, Problem::IdempotencyKeyInvalid, keys),
            (r#"{"keys": ["caf\u00e9"]}"#, Problem::IdempotencyKeyInvalid, keys),
            (r#"{"keys": ["a\nb"]}"#, Problem::IdempotencyKeyInvalid, keys),
            (
                r#"{"keys": ["a"], "after_id": -1}"#,
                Problem::InvalidLookup,
                Some("after_id"),
            ),
            (
                r#"{"keys": ["a"], "after_id": 1.5}"#,
                Problem::InvalidLookup,
                Some("after_id"),
            ),
            (
                r#"{"keys": ["a"], "after_id": "1"}"#,
                Problem::InvalidLookup,
                Some("after_id"),
            ),
        ] {
            assert_eq!(parse(body), Err((problem, field)), "{body}");
        }
        let long = format!(r#"{{"keys": ["{}"]}}"#, "k".repeat(key::KEY_BYTES_MAX + 1));
        assert_eq!(parse(&long), Err((Problem::IdempotencyKeyInvalid, keys)));
    }
}
