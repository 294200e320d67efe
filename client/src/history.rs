//! One record per attempt, the raw material of the reconciliation and of
//! `--history FILE` (one JSON object per line).

use std::fs::File;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::classify::{ErrorKind, Outcome};
use crate::lines::LineWriter;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Which payment (its position in the input).
    pub intent: usize,
    /// The key this attempt sent (none with `--key none`).
    pub key: Option<String>,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Microseconds since the run started.
    pub start_us: u64,
    pub end_us: u64,
    pub outcome: Outcome,
    pub status: Option<u16>,
    pub error: Option<ErrorKind>,
    /// The `Idempotent-Replayed` header, when an answer carried one.
    pub replayed: Option<bool>,
    /// When the attempt started, in µs since the Unix epoch: the clock the
    /// proxy's fault log and the service's event record use too, so one
    /// payment's story can be lined up across them (`scenarios explain`).
    #[serde(default)]
    pub at_unix_us: u64,
    /// The `X-Request-Id` this attempt sent (unique per run, payment and
    /// attempt), under which the service records what it did with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Appends attempt records to a file as they happen, from a writer thread.
pub struct HistoryFile {
    out: LineWriter,
}

impl HistoryFile {
    /// Creates (or truncates) the file. Blocking: call it off the async workers.
    pub fn create(path: &Path) -> std::io::Result<HistoryFile> {
        Ok(HistoryFile {
            out: LineWriter::spawn("history", File::create(path)?)?,
        })
    }

    pub async fn append(&self, record: &AttemptRecord) -> std::io::Result<()> {
        let line = serde_json::to_string(record).map_err(std::io::Error::other)?;
        self.out.append(line).await
    }

    pub async fn flush(&self) -> std::io::Result<()> {
        self.out.flush(false).await
    }
}
