//! Run-time settings of the service, shared by the binary's flags and tests.

use std::path::PathBuf;
use std::time::Duration;

/// How the service treats idempotency keys: the lesson knob.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DedupMode {
    /// A unique key on every payment: correct under any concurrency.
    #[default]
    Unique,
    /// Look the key up, then insert in a separate step: right for sequential
    /// retries, wrong for concurrent duplicates.
    CheckThenInsert,
    /// Keys are stored for audit only; every request pays.
    Off,
}

impl DedupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DedupMode::Unique => "unique",
            DedupMode::CheckThenInsert => "check-then-insert",
            DedupMode::Off => "off",
        }
    }
}

/// SQLite's `synchronous` setting in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Synchronous {
    /// fsync the WAL at every commit: an acknowledged payment survives power loss.
    Full,
    /// No fsync at commit: survives a process crash, may lose recent commits on power loss.
    Normal,
}

impl Synchronous {
    pub fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub db: PathBuf,
    pub dedup: DedupMode,
    pub require_key: bool,
    /// Simulated work between claiming a key and committing the payment.
    pub processing_delay: Duration,
    pub synchronous: Synchronous,
    /// How long stored responses are kept; the key stays on the payment forever.
    pub key_retention: Duration,
    /// How long an in-flight key is held for its worker before another
    /// request may take it over. Must exceed the processing delay.
    pub key_lease: Duration,
    /// Probability in [0, 1] that the process kills itself right after a commit, before the answer.
    pub crash_after_commit: f64,
    /// Probability in [0, 1] that the process kills itself right before a commit.
    pub crash_before_commit: f64,
    pub seed: u64,
    /// Writes waiting for the writer thread; beyond it requests get 503.
    pub queue_depth_max: usize,
}

impl Config {
    /// A configuration with the documented defaults for the given database file.
    pub fn new(db: impl Into<PathBuf>) -> Config {
        Config {
            db: db.into(),
            dedup: DedupMode::Unique,
            require_key: false,
            processing_delay: Duration::ZERO,
            synchronous: Synchronous::Full,
            key_retention: Duration::from_secs(24 * 3600),
            key_lease: Duration::from_secs(10),
            crash_after_commit: 0.0,
            crash_before_commit: 0.0,
            seed: 0,
            queue_depth_max: QUEUE_DEPTH_MAX_DEFAULT,
        }
    }

    /// Checks relations between settings that flags alone cannot express.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("--crash-after-commit", self.crash_after_commit),
            ("--crash-before-commit", self.crash_before_commit),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be a probability between 0 and 1, got {p}"));
            }
        }
        if self.key_lease <= self.processing_delay {
            return Err(format!(
                "--key-lease ({} ms) must be longer than --processing-delay-ms ({} ms), or healthy requests lose their key to retries",
                self.key_lease.as_millis(),
                self.processing_delay.as_millis()
            ));
        }
        if self.queue_depth_max == 0 {
            return Err("the write queue depth must be at least 1".into());
        }
        Ok(())
    }
}

/// Default write-queue depth: deep enough to absorb a burst from 1000
/// concurrent clients, shallow enough that a stuck disk shows up as 503s within
/// a second rather than as minutes of queued work.
pub const QUEUE_DEPTH_MAX_DEFAULT: usize = 4096;

/// Parses a duration such as `24h`, `30m`, `10s`, `250ms` or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().map_err(|_| {
        format!("{text:?} is not a duration: use a whole number and a unit, such as 24h, 30m, 10s or 250ms")
    })?;
    let ms_per_unit = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?} has no known unit: use ms, s, m, h or d")),
    };
    value
        .checked_mul(ms_per_unit)
        .filter(|ms| *ms <= 365 * 86_400_000)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is longer than a year"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "h", "10", "1.5h", "-1s", "10 parsecs", "99999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
