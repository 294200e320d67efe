//! What an attempt's result means, and what to do next.
//!
//! Outcomes follow Jepsen's history model: `ok` (the payment took effect),
//! `fail` (this attempt had no effect) and `unknown` (it may or may not have:
//! Jepsen's `:info`). Only a failure to connect proves that nothing was sent;
//! a reset, timeout or cut-off answer after the request left is ambiguous,
//! which is exactly why a retry must carry the same key.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Fail,
    Unknown,
}

/// Why an attempt got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// The connection could not be made: nothing was sent.
    Connect,
    /// The connection was reset after the request may have been sent.
    Reset,
    /// No answer within the attempt timeout.
    Timeout,
    /// The connection closed before a complete answer arrived.
    Incomplete,
    /// Anything else after sending.
    Other,
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A definitive success.
    Done,
    /// A definitive refusal (400, 422, ...): retrying cannot help, and a new
    /// key would turn a refusal into a second payment.
    Stop,
    /// Retry with the same key, not before the server's `Retry-After` (if any).
    Retry { retry_after: Option<Duration> },
}

/// The longest `Retry-After` honoured: a server asking for more is capped,
/// so one bad header cannot stall a run.
pub const RETRY_AFTER_MS_MAX: u64 = 5_000;

pub fn classify_status(status: StatusCode, headers: &HeaderMap) -> (Outcome, Next) {
    let retry = Next::Retry {
        retry_after: retry_after(headers),
    };
    match status.as_u16() {
        200..=299 => (Outcome::Ok, Next::Done),
        // In flight elsewhere / rate limited: this attempt did nothing.
        409 | 429 => (Outcome::Fail, retry),
        // The server may have acted before failing (a timeout, a lost commit).
        408 | 500..=599 => (Outcome::Unknown, retry),
        // 400, 404, 413, 415, 422, ... and odd 1xx/3xx: fix the request, do not retry.
        _ => (Outcome::Fail, Next::Stop),
    }
}

pub fn classify_error(error: &reqwest::Error) -> (Outcome, ErrorKind) {
    if error.is_connect() {
        return (Outcome::Fail, ErrorKind::Connect);
    }
    if error.is_timeout() {
        return (Outcome::Unknown, ErrorKind::Timeout);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut kind = ErrorKind::Other;
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            kind = match io.kind() {
                std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe => ErrorKind::Reset,
                std::io::ErrorKind::UnexpectedEof => ErrorKind::Incomplete,
                std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
                _ => kind,
            };
            break;
        }
        let text = e.to_string();
        if text.contains("connection closed before message completed") || text.contains("incomplete") {
            kind = ErrorKind::Incomplete;
        }
        source = e.source();
    }
    if kind == ErrorKind::Other && error.is_body() {
        kind = ErrorKind::Incomplete;
    }
    (Outcome::Unknown, kind)
}

/// `Retry-After` as delay-seconds, capped at [`RETRY_AFTER_MS_MAX`]. An
/// HTTP-date is not honoured (the backoff applies instead).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let seconds: u64 = value.trim().parse().ok()?;
    Some(Duration::from_millis(
        seconds.saturating_mul(1000).min(RETRY_AFTER_MS_MAX),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn with_retry_after(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn statuses_map_to_outcome_and_next_step() {
        let none = HeaderMap::new();
        let s = |code| StatusCode::from_u16(code).unwrap();
        assert_eq!(classify_status(s(201), &none), (Outcome::Ok, Next::Done));
        assert_eq!(classify_status(s(208), &none), (Outcome::Ok, Next::Done));
        assert_eq!(classify_status(s(400), &none), (Outcome::Fail, Next::Stop));
        assert_eq!(classify_status(s(422), &none), (Outcome::Fail, Next::Stop));
        assert_eq!(classify_status(s(404), &none), (Outcome::Fail, Next::Stop));
        let after_1s = Next::Retry {
            retry_after: Some(Duration::from_secs(1)),
        };
        assert_eq!(
            classify_status(s(409), &with_retry_after("1")),
            (Outcome::Fail, after_1s)
        );
        assert_eq!(
            classify_status(s(429), &with_retry_after("1")),
            (Outcome::Fail, after_1s)
        );
        assert_eq!(
            classify_status(s(503), &with_retry_after("1")),
            (Outcome::Unknown, after_1s)
        );
        assert_eq!(
            classify_status(s(500), &none),
            (Outcome::Unknown, Next::Retry { retry_after: None })
        );
        assert_eq!(
            classify_status(s(502), &none),
            (Outcome::Unknown, Next::Retry { retry_after: None })
        );
    }

    #[test]
    fn retry_after_is_capped_and_dates_are_ignored() {
        assert_eq!(retry_after(&with_retry_after("2")), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after(&with_retry_after("86400")),
            Some(Duration::from_millis(RETRY_AFTER_MS_MAX))
        );
        assert_eq!(retry_after(&with_retry_after("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }
}
