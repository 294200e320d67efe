//! The idempotency key, read from request headers.
//!
//! Two header names carry it: `Idempotency-Key` (IETF draft; its value is an
//! RFC 9651 sf-string such as `"abc"`, and bare tokens as Stripe's clients send
//! are accepted too) and `Payment-Idempotence-Key` (the original workshop's
//! name, sent bare). Both forms of the same text name the same key.

use axum::http::HeaderMap;

pub use eo_core::wire::{IDEMPOTENCY_KEY as HEADER_IETF, KEY_BYTES_MAX, PAYMENT_IDEMPOTENCE_KEY as HEADER_WORKSHOP};

/// Why a key header was refused; the text names the header and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

/// Returns the key, `None` when no key header is present, or why it is invalid.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<String>, KeyError> {
    let mut found: Option<(&str, String)> = None;
    for name in [HEADER_IETF, HEADER_WORKSHOP] {
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else { continue };
        if values.next().is_some() {
            return Err(KeyError(format!(
                "header {name} was sent more than once; send exactly one key"
            )));
        }
        if let Some((other, _)) = found {
            return Err(KeyError(format!(
                "both {other} and {name} were sent; send the key in one header only"
            )));
        }
        let key = parse_value(value.as_bytes()).map_err(|why| KeyError(format!("header {name} {why}")))?;
        found = Some((name, key));
    }
    Ok(found.map(|(_, key)| key))
}

/// Parses one header value: an sf-string (`"..."` with `\"` and `\\` escapes)
/// or a bare run of printable ASCII.
fn parse_value(raw: &[u8]) -> Result<String, &'static str> {
    if !raw.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err("must be printable ASCII (no control or non-ASCII bytes)");
    }
    // HTTP strips surrounding whitespace already; do it again for safety.
    let text = std::str::from_utf8(raw)
        .map_err(|_| "must be printable ASCII")?
        .trim_matches(' ');
    let key = if let Some(quoted) = text.strip_prefix('"') {
        unquote(quoted)?
    } else {
        text.to_owned()
    };
    check(&key)?;
    Ok(key)
}

/// What every key must be, however it arrived (a header after unquoting, or
/// a JSON string in `POST /payments/lookup`): 1 to [`KEY_BYTES_MAX`] bytes of
/// printable ASCII. The one place these rules live.
pub fn check(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("must not be empty");
    }
    if key.len() > KEY_BYTES_MAX {
        return Err("must be at most 255 characters");
    }
    if !key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err("must be printable ASCII (no control or non-ASCII bytes)");
    }
    Ok(())
}

/// Unquotes the rest of an sf-string after its opening quote (RFC 9651 §4.2.5).
fn unquote(rest: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('"' | '\\')) => out.push(e),
                _ => return Err("has an invalid escape (only \\\" and \\\\ are allowed)"),
            },
            '"' => {
                if chars.next().is_some() {
                    return Err("has text after the closing quote");
                }
                return Ok(out);
            }
            c => out.push(c),
        }
    }
    Err("has an opening quote but no closing quote")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_bytes(value).expect("test header"));
        }
        map
    }

    #[test]
    fn reads_both_names_and_both_forms() {
        assert_eq!(from_headers(&headers(&[])), Ok(None));
        assert_eq!(
            from_headers(&headers(&[("Idempotency-Key", b"\"abc\"")])),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            from_headers(&headers(&[("idempotency-key", b"abc")])),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            from_headers(&headers(&[(
                "Payment-Idempotence-Key",
                b"9e75b888-d00b-4734-a171-6c6cf7921dd6"
            )])),
            Ok(Some("9e75b888-d00b-4734-a171-6c6cf7921dd6".into()))
        );
        assert_eq!(
            from_headers(&headers(&[("Idempotency-Key", b"\"a \\\"b\\\\\"")])),
            Ok(Some("a \"b\\".into()))
        );
    }

    #[test]
    fn refuses_bad_keys() {
        let long = vec![b'k'; 256];
        for bad in [
            headers(&[("Idempotency-Key", b"")]),
            headers(&[("Idempotency-Key", b"\"\"")]),
            headers(&[("Idempotency-Key", &long)]),
            headers(&[("Idempotency-Key", "caf\u{e9}".as_bytes())]),
            headers(&[("Idempotency-Key", b"\"open")]),
            headers(&[("Idempotency-Key", b"\"a\"b")]),
            headers(&[("Idempotency-Key", b"\"a\\nb\"")]),
            headers(&[("Idempotency-Key", b"a"), ("Idempotency-Key", b"a")]),
            headers(&[("Idempotency-Key", b"a"), ("Payment-Idempotence-Key", b"a")]),
        ] {
            assert!(from_headers(&bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(
            from_headers(&headers(&[("Idempotency-Key", &long[..255])])).map(|k| k.map(|k| k.len())),
            Ok(Some(255))
        );
    }
}
