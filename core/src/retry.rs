//! The retry rules, written once: what an HTTP answer means and what to do
//! next, how long `Retry-After` may make a caller wait, and the seeded
//! full-jitter backoff. The client's retry loop and the payment service's
//! outbox relay both follow them.
//!
//! Outcomes follow Jepsen's history model: `ok` (the request took effect),
//! `fail` (this attempt had no effect) and `unknown` (it may or may not have:
//! Jepsen's `:info`). Which transport errors are which depends on the HTTP
//! client, so that part stays with each caller (the client's `classify_error`).

use std::time::Duration;

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderMap, StatusCode};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::seed::splitmix64;

/// What an attempt did, as far as the caller can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Fail,
    Unknown,
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A definitive success.
    Done,
    /// A definitive refusal (400, 422, ...): retrying cannot help, and a new
    /// key would turn a refusal into a second effect.
    Stop,
    /// Retry with the same key, not before the server's `Retry-After` (if any).
    Retry { retry_after: Option<Duration> },
}

/// The longest `Retry-After` honoured: a server asking for more is capped,
/// so one bad header cannot stall a run.
pub const RETRY_AFTER_MS_MAX: u64 = 5_000;

/// The decision for an HTTP answer: 2xx done; 409 and 429 retry (this attempt
/// did nothing); 408 and 5xx retry (it may have acted); every other status
/// stops.
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

/// `Retry-After` as delay-seconds, capped at [`RETRY_AFTER_MS_MAX`]. An
/// HTTP-date is not honoured (the backoff applies instead).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    let seconds: u64 = value.trim().parse().ok()?;
    Some(Duration::from_millis(
        seconds.saturating_mul(1000).min(RETRY_AFTER_MS_MAX),
    ))
}

/// A random stream of its own for each (seed, index), derived with
/// SplitMix64 so neighbouring indexes get unrelated streams: the delays of
/// one payment (or one event) do not depend on how others interleave.
pub fn stream(seed: u64, index: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(splitmix64(seed ^ splitmix64(index.wrapping_add(0x5eed))))
}

/// Full jitter (AWS): the wait before retry number `retry` (1 for the first
/// retry), uniform in [0, min(cap, base × 2^(retry-1))].
pub fn delay(base_ms: u64, cap_ms: u64, retry: u32, rng: &mut Xoshiro256PlusPlus) -> Duration {
    let exponent = retry.saturating_sub(1).min(32);
    let ceiling_ms = base_ms.saturating_mul(1u64 << exponent).min(cap_ms);
    Duration::from_millis(rng.random_range(0..=ceiling_ms))
}

/// The wait before the next attempt: the server's `Retry-After` or the
/// backoff, whichever is longer.
pub fn wait(retry_after: Option<Duration>, jitter: Duration) -> Duration {
    retry_after.unwrap_or_default().max(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_retry_after(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
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
        for (code, outcome) in [(409, Outcome::Fail), (429, Outcome::Fail), (503, Outcome::Unknown)] {
            assert_eq!(classify_status(s(code), &with_retry_after("1")), (outcome, after_1s));
        }
        for code in [408, 500, 502] {
            assert_eq!(
                classify_status(s(code), &none),
                (Outcome::Unknown, Next::Retry { retry_after: None })
            );
        }
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
        let ms = Duration::from_millis;
        assert_eq!(wait(Some(ms(1000)), ms(5)), ms(1000));
        assert_eq!(wait(None, ms(5)), ms(5));
        assert_eq!(wait(Some(ms(1)), ms(5)), ms(5));
    }

    #[test]
    fn full_jitter_stays_under_the_growing_ceiling_and_the_cap() {
        let mut rng = stream(1, 0);
        for retry in 1..40 {
            let d = delay(10, 1000, retry, &mut rng).as_millis() as u64;
            assert!(d <= (10u64 << (retry - 1).min(32)).min(1000), "retry {retry}: {d}");
        }
    }

    #[test]
    fn same_seed_same_delays() {
        let draw = |seed, index| {
            let mut rng = stream(seed, index);
            (1..10).map(|r| delay(10, 1000, r, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7, 3), draw(7, 3));
        assert_ne!(draw(7, 3), draw(7, 4));
        assert_ne!(draw(7, 3), draw(8, 3));
    }
}
