//! Run-time settings and every limit of the receipts service, each a named
//! constant with its unit and the reason for its value.

use std::path::PathBuf;
use std::time::Duration;

use eo_core::serve::Limits;

/// How deliveries of the same event are treated: the lesson knob.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DedupMode {
    /// The inbox: the event id under a primary key in the receipt's own
    /// transaction; a redelivery is answered with the first receipt.
    #[default]
    Inbox,
    /// A naive consumer: every delivery issues a receipt (the lesson's mistake).
    Off,
}

impl DedupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DedupMode::Inbox => "inbox",
            DedupMode::Off => "off",
        }
    }
}

/// Largest `POST /receipts` body: an event is under 1 KiB (a 128-byte event
/// id, a 512-byte key, two 64-byte accounts); 16 KiB refuses anything absurd.
pub const EVENT_BODY_BYTES_MAX: usize = 16 * 1024;

/// Largest `POST /receipts/lookup` body: 1000 event ids of 128 bytes, each
/// possibly escaped (`\u00e9` is 6 bytes for one), fit in 1 MiB.
pub const LOOKUP_BODY_BYTES_MAX: usize = 1024 * 1024;

/// Longest account name, in bytes: the payment service's own limit, so every
/// payment it executes can be receipted.
pub const ACCOUNT_BYTES_MAX: usize = 64;

/// Longest propagated key, in bytes: the payment service's 255-byte key, a
/// `:` and a batch item id, with room to spare.
pub const PROPAGATED_KEY_BYTES_MAX: usize = 512;

/// Receipt ids listed per event in a lookup answer; the count is always
/// exact. A naive consumer under a redelivery storm may hold thousands for
/// one event, and the answer must stay bounded.
pub const RECEIPT_IDS_PER_EVENT_MAX: usize = 16;

/// Deliveries waiting for the writer; beyond it a delivery gets 503 with
/// `Retry-After` at once (nothing stored), which the relay retries. Deep
/// enough for a relay's burst, shallow enough that a stuck disk shows as 503s
/// within a second instead of minutes of queued work.
pub const QUEUE_DEPTH_MAX: usize = 4096;

/// Deliveries committed in one transaction at most: bounds the latency one
/// batch adds and the work one failed COMMIT refuses.
pub const BATCH_COUNT_MAX: usize = 512;

/// Requests handled at once; beyond it the service answers 503 at once
/// rather than building an unbounded backlog of tasks.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1024;

/// How long a delivery waits for the writer's answer before 503 ("may or may
/// not have taken effect"): a commit takes well under a millisecond, so this
/// only trips when the disk stalls.
pub const WRITE_WAIT_MS_MAX: u64 = 30_000;

/// How long a read waits for a free reader connection before 503.
pub const READ_WAIT_MS_MAX: u64 = 5_000;

/// Read queries at once: more would only contend for the 2 cores.
pub const READERS_COUNT_MAX: usize = 4;

/// Longest simulated processing delay, in ms: a minute is past any relay's
/// attempt deadline, and a longer one would only hold requests for ever.
pub const PROCESSING_DELAY_MS_MAX: u64 = 60_000;

/// How long the writer gets to finish what is queued when the service stops.
pub const WRITER_STOP_MS_MAX: u64 = 10_000;

/// The HTTP server's bounds, as the payment service's: a head or body of at
/// most 1 MiB is sent in one go by any real client, so 10 s to read either is
/// generous; an idle keep-alive connection (a relay's) lives 120 s; open
/// requests get 10 s on shutdown.
pub const SERVER_LIMITS: Limits = Limits {
    connections_max: 8192,
    header_read_ms_max: 10_000,
    body_read_ms_max: 10_000,
    idle_ms_max: 120_000,
    drain_ms_max: 10_000,
};

/// What one receipts service runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The SQLite file (created if missing; WAL).
    pub db: PathBuf,
    pub dedup: DedupMode,
    /// Simulated work before a delivery is written: a slow consumer, whose
    /// answers arrive after the relay's attempt deadline.
    pub processing_delay: Duration,
    /// Deliveries waiting for the writer at most.
    pub queue_depth_max: usize,
    pub server_limits: Limits,
}

impl Config {
    /// The defaults (inbox, no delay) for the database file `db`.
    pub fn new(db: impl Into<PathBuf>) -> Config {
        Config {
            db: db.into(),
            dedup: DedupMode::Inbox,
            processing_delay: Duration::ZERO,
            queue_depth_max: QUEUE_DEPTH_MAX,
            server_limits: SERVER_LIMITS,
        }
    }

    /// Checks what flags alone cannot, saying how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        let delay_ms = self.processing_delay.as_millis();
        if delay_ms > u128::from(PROCESSING_DELAY_MS_MAX) {
            return Err(format!(
                "--processing-delay-ms {delay_ms} is over the limit of {PROCESSING_DELAY_MS_MAX} ms; choose a shorter delay"
            ));
        }
        if self.queue_depth_max == 0 {
            return Err("the write queue depth must be at least 1".into());
        }
        if self.db.as_os_str().is_empty() {
            return Err("--db is empty: give the receipts database a file name, e.g. --db receipts.db".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_fix() {
        assert_eq!(Config::new("r.db").validate(), Ok(()));
        let mut slow = Config::new("r.db");
        slow.processing_delay = Duration::from_millis(PROCESSING_DELAY_MS_MAX + 1);
        assert!(slow.validate().unwrap_err().contains("choose a shorter delay"));
        assert!(Config::new("").validate().unwrap_err().contains("--db"));
    }
}
