//! Request counters (in memory, since start) and the `/stats` document. The
//! receipts' figures and the invariant come from the database's maintained
//! row, never from these counters: a restart or a second process would make
//! counters lie, the row cannot.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::config::DedupMode;
use crate::store::Totals;

/// What this process answered since it started.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// `POST /receipts` requests, whatever their answer.
    pub received: AtomicU64,
    /// 201: a receipt issued.
    pub created: AtomicU64,
    /// 200 with `Idempotent-Replayed: true`: a duplicate absorbed by the inbox.
    pub replayed: AtomicU64,
    /// 422 `event-mismatch`.
    pub mismatches: AtomicU64,
    /// Other 4xx: the event was refused before anything was stored.
    pub rejected: AtomicU64,
    /// 503: queue full, database failure, shutting down.
    pub unavailable: AtomicU64,
    /// Transactions committed by the writer (each covers a batch).
    pub writer_commits: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The `/stats` document. A struct rather than `json!`: serde_json's
/// `Value` cannot hold an integer past `u64`, its writer can.
#[derive(Serialize)]
pub(crate) struct Document {
    receipts: i64,
    events: i64,
    duplicate_receipts: i64,
    duplicates_absorbed: i64,
    /// A plain JSON integer, exact past `i64`.
    total_amount_minor: i128,
    total_amount: String,
    last_receipt_id: i64,
    dedup: &'static str,
    requests: Requests,
    invariants: Invariants,
}

#[derive(Serialize)]
struct Requests {
    received: u64,
    created: u64,
    replayed: u64,
    mismatches: u64,
    rejected: u64,
    unavailable: u64,
    writer_commits: u64,
}

#[derive(Serialize)]
struct Invariants {
    /// No event id has more than one receipt.
    one_receipt_per_event: bool,
}

pub(crate) fn document(totals: &Totals, dedup: DedupMode, counters: &Counters) -> Document {
    let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let duplicate_receipts = totals.receipts - totals.events;
    Document {
        receipts: totals.receipts,
        events: totals.events,
        duplicate_receipts,
        duplicates_absorbed: totals.duplicates_absorbed,
        total_amount_minor: totals.amount_minor,
        total_amount: eo_core::money::format_minor(totals.amount_minor),
        last_receipt_id: totals.last_receipt_id,
        dedup: dedup.as_str(),
        requests: Requests {
            received: read(&counters.received),
            created: read(&counters.created),
            replayed: read(&counters.replayed),
            mismatches: read(&counters.mismatches),
            rejected: read(&counters.rejected),
            unavailable: read(&counters.unavailable),
            writer_commits: read(&counters.writer_commits),
        },
        invariants: Invariants {
            one_receipt_per_event: duplicate_receipts == 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_past_i64_are_plain_integers() {
        let totals = Totals {
            receipts: 3,
            events: 2,
            amount_minor: 10_000_000_000_000_000_000,
            ..Totals::default()
        };
        let text = serde_json::to_string(&document(&totals, DedupMode::Off, &Counters::default())).unwrap();
        assert!(text.contains(r#""total_amount_minor":10000000000000000000,"#), "{text}");
        assert!(text.contains(r#""duplicate_receipts":1,"#), "{text}");
        assert!(text.contains(r#""one_receipt_per_event":false"#), "{text}");
    }
}
