//! How the client behaves: the knobs the lessons turn.

use std::str::FromStr;

/// Which idempotency key an attempt carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyStrategy {
    /// One key per logical payment, reused on every retry: exactly-once with a deduplicating server.
    PerPayment,
    /// A new key for every attempt: the server cannot recognise retries (pays too much).
    PerAttempt,
    /// No key at all: retries pay again (at-least-once), no retries lose payments (at-most-once).
    None,
}

/// How many times a payment is retried after its first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retries {
    Limited(u32),
    /// Until a definitive answer or the run's deadline.
    Unlimited,
}

impl Retries {
    pub fn allows(self, retries_done: u32) -> bool {
        match self {
            Retries::Limited(max) => retries_done < max,
            Retries::Unlimited => true,
        }
    }
}

impl FromStr for Retries {
    type Err = String;
    fn from_str(s: &str) -> Result<Retries, String> {
        if s == "unlimited" {
            return Ok(Retries::Unlimited);
        }
        s.parse::<u32>()
            .map(Retries::Limited)
            .map_err(|_| format!("{s:?} is not a number of retries: use 0, 1, 2, ... or unlimited"))
    }
}

impl std::fmt::Display for Retries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Retries::Limited(n) => write!(f, "{n}"),
            Retries::Unlimited => f.write_str("unlimited"),
        }
    }
}

/// How long to wait before a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backoff {
    /// Uniform in [0, min(cap, base × 2^retry)] (AWS "full jitter"): spreads retries out.
    FullJitter,
    /// Retry at once (the original workshop's client).
    None,
}

/// Whether attempts share TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionMode {
    /// A new TCP connection per attempt, so per-connection faults hit each attempt.
    Fresh,
    /// Keep-alive connections from a pool.
    Reuse,
}

/// How the amount travels in the JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AmountStyle {
    /// `"amount": "1.00"` (the original workshop's CSV sends strings too).
    String,
    /// `"amount": 1.00`, a JSON number written with two decimals.
    Number,
}

/// What a payment request looks like on the wire, so the client can talk to
/// a service this project did not write (the original workshop's: path
/// `/payments/`, header `Payment-Idempotence-Key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestShape {
    /// Appended to the target URL, e.g. `/payments`.
    pub path: String,
    /// The header that carries the idempotency key.
    pub key_header: String,
    pub amount: AmountStyle,
}

/// The longest path and header name accepted, in bytes.
pub const SHAPE_TEXT_BYTES_MAX: usize = 256;

impl Default for RequestShape {
    fn default() -> RequestShape {
        RequestShape {
            path: "/payments".into(),
            key_header: "Idempotency-Key".into(),
            amount: AmountStyle::String,
        }
    }
}

impl RequestShape {
    pub fn validate(&self) -> Result<(), String> {
        let printable = |t: &str| t.bytes().all(|b| b.is_ascii_graphic());
        if !self.path.starts_with('/') || self.path.len() > SHAPE_TEXT_BYTES_MAX || !printable(&self.path) {
            return Err(format!(
                "the request path {:?} must start with / and be at most {SHAPE_TEXT_BYTES_MAX} printable characters",
                self.path
            ));
        }
        if self.key_header.len() > SHAPE_TEXT_BYTES_MAX
            || reqwest::header::HeaderName::from_bytes(self.key_header.as_bytes()).is_err()
        {
            return Err(format!("{:?} is not a valid header name", self.key_header));
        }
        Ok(())
    }
}

/// Everything that decides how payments are sent.
#[derive(Debug, Clone)]
pub struct Options {
    pub key: KeyStrategy,
    pub retries: Retries,
    pub backoff: Backoff,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    pub attempt_timeout_ms: u64,
    /// The whole run's deadline; no attempt starts after it.
    pub deadline_ms: u64,
    pub concurrency: usize,
    pub connection: ConnectionMode,
    pub seed: u64,
    /// Path, key header and amount style of each request.
    pub request: RequestShape,
    /// Payments sent several at a time (intents keyed by [`crate::batch::rekey`]).
    pub batch: Option<crate::batch::Batch>,
}

/// The most concurrent payments: beyond this a laptop runs out of sockets
/// before the lesson gets clearer.
pub const CONCURRENCY_MAX: usize = 1024;
/// The longest attempt timeout and backoff cap accepted, in ms.
pub const WAIT_MS_MAX: u64 = 600_000;
/// The longest overall deadline accepted, in ms (a day).
pub const DEADLINE_MS_MAX: u64 = 86_400_000;

impl Options {
    pub fn new(seed: u64) -> Options {
        Options {
            key: KeyStrategy::PerPayment,
            retries: Retries::Unlimited,
            backoff: Backoff::FullJitter,
            backoff_base_ms: 10,
            backoff_cap_ms: 1_000,
            attempt_timeout_ms: 5_000,
            deadline_ms: 300_000,
            concurrency: 1,
            connection: ConnectionMode::Fresh,
            seed,
            request: RequestShape::default(),
            batch: None,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(1..=CONCURRENCY_MAX).contains(&self.concurrency) {
            return Err(format!("--concurrency must be between 1 and {CONCURRENCY_MAX}"));
        }
        if !(1..=WAIT_MS_MAX).contains(&self.attempt_timeout_ms) {
            return Err(format!("--attempt-timeout-ms must be between 1 and {WAIT_MS_MAX}"));
        }
        if self.backoff_cap_ms > WAIT_MS_MAX || self.backoff_base_ms > self.backoff_cap_ms {
            return Err(format!(
                "--backoff-base-ms must be at most --backoff-cap-ms, which must be at most {WAIT_MS_MAX}"
            ));
        }
        if !(1..=DEADLINE_MS_MAX).contains(&self.deadline_ms) {
            return Err(format!("--deadline-ms must be between 1 and {DEADLINE_MS_MAX}"));
        }
        if let Some(batch) = self.batch {
            batch.validate()?;
            if self.key != KeyStrategy::PerPayment {
                return Err("--batch needs --key per-payment: a batch is keyed by its first payment's key".into());
            }
        }
        self.request.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_parse_and_limit() {
        assert_eq!("3".parse(), Ok(Retries::Limited(3)));
        assert_eq!("unlimited".parse(), Ok(Retries::Unlimited));
        assert!("-1".parse::<Retries>().is_err());
        assert!("lots".parse::<Retries>().is_err());
        assert!(!Retries::Limited(0).allows(0));
        assert!(Retries::Limited(2).allows(1));
        assert!(!Retries::Limited(2).allows(2));
        assert!(Retries::Unlimited.allows(u32::MAX));
    }

    #[test]
    fn request_shapes_are_checked() {
        assert!(RequestShape::default().validate().is_ok());
        let workshop = RequestShape {
            path: "/payments/".into(),
            key_header: "Payment-Idempotence-Key".into(),
            amount: AmountStyle::String,
        };
        assert!(workshop.validate().is_ok());
        for (path, header) in [("payments", "K"), ("/a b", "K"), ("/p", "bad header"), ("/p", "")] {
            let shape = RequestShape {
                path: path.into(),
                key_header: header.into(),
                amount: AmountStyle::Number,
            };
            assert!(shape.validate().is_err(), "{path:?} {header:?}");
        }
    }
}
