//! What an attempt's result means, and what to do next. The status rules,
//! `Retry-After` and the outcomes are eo-core's ([`eo_core::retry`], shared
//! with the payment service's outbox relay); only what reqwest's errors mean
//! is decided here.
//!
//! Outcomes follow Jepsen's history model: `ok` (the payment took effect),
//! `fail` (this attempt had no effect) and `unknown` (it may or may not have:
//! Jepsen's `:info`). Only a failure to connect proves that nothing was sent;
//! a reset, timeout or cut-off answer after the request left is ambiguous,
//! which is exactly why a retry must carry the same key.

pub use eo_core::retry::{Next, Outcome, RETRY_AFTER_MS_MAX, classify_status, retry_after};

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
