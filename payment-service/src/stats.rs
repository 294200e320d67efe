//! `/stats`: the ledger's figures as the database maintains them (one row
//! read, whatever the ledger's size; never from counters) next to what the
//! service saw since it started. `GET /audit` recomputes the figures.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::config::{DedupMode, NotifyMode};
use crate::outbox::OutboxFigures;
use crate::totals::Maintained;
use crate::{clock, money};

/// Request counters since start. They describe traffic, not money: the money
/// figures and invariants always come from the database.
#[derive(Debug, Default)]
pub struct Counters {
    /// `POST /payments` requests received.
    pub received: AtomicU64,
    /// Payments executed (committed) by a request.
    pub executed: AtomicU64,
    /// Answers replayed for a known key (from the stored response or the ledger).
    pub replayed: AtomicU64,
    /// Replays rebuilt from the ledger because the stored response had expired.
    pub replayed_from_ledger: AtomicU64,
    pub conflicts_409: AtomicU64,
    pub mismatches_422: AtomicU64,
    /// Requests refused for bad input (400, 413, 415) or by the ledger (422
    /// other than a reused key: a balance out of range, a rule of the
    /// schema): nothing stored.
    pub rejected: AtomicU64,
    /// 503s: queue full, the database failed (busy, disk full, I/O) or its
    /// file was replaced.
    pub unavailable_503: AtomicU64,
    /// Keys taken over from a worker whose lease expired.
    pub lease_takeovers: AtomicU64,
    /// Stored responses deleted after the retention.
    pub keys_reaped: AtomicU64,
    /// Transactions the writer committed (one per batch).
    pub writer_commits: AtomicU64,
    /// CPU time the writer thread spent on batches (waiting for work not
    /// included), in nanoseconds: with `executed`, the writer's cost per payment.
    pub writer_cpu_ns: AtomicU64,
    /// What `/metrics` records as it happens: batch sizes, commit latencies,
    /// refusals by cause.
    pub recorded: crate::metrics::Recorded,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Serialize)]
pub struct Invariants {
    /// No idempotency key has more than one payment (the maintained count
    /// of duplicate keys is 0).
    pub one_payment_per_key: bool,
    /// Money only moves between accounts: the maintained sum of all
    /// balances is zero.
    pub balances_conserved: bool,
    /// No audit of this ledger found a balance that is not its credits minus
    /// debits (checking every balance is O(n): `GET /audit` does it).
    pub balances_match_ledger: bool,
}

/// The latest audit of this ledger, as `/stats` shows it.
#[derive(Serialize)]
pub struct LastAuditJson {
    pub finished_at: String,
    pub verdict: String,
    pub accounts_off_ledger: i64,
}

/// The outbox's figures (`--notify outbox`), from the maintained row and one
/// index seek.
#[derive(Serialize)]
pub struct OutboxJson {
    pub pending: i64,
    pub delivered: i64,
    /// Refused by the receiver for good (a 4xx): the dead letter.
    pub refused: i64,
    /// How long the oldest pending event has waited; 0 when none waits.
    pub oldest_pending_age_ms: i64,
    pub delivery_attempts: i64,
    /// Events made pending again by `POST /outbox/redeliver`.
    pub redelivered: i64,
}

impl OutboxJson {
    pub(crate) fn new(f: &OutboxFigures, now_ms: i64) -> OutboxJson {
        OutboxJson {
            pending: f.pending,
            delivered: f.delivered,
            refused: f.refused,
            oldest_pending_age_ms: f
                .oldest_pending_since_ms
                .map_or(0, |since| now_ms.saturating_sub(since).max(0)),
            delivery_attempts: f.delivery_attempts,
            redelivered: f.redelivered,
        }
    }
}

#[derive(Serialize)]
pub struct StatsJson {
    /// This ledger's id: event ids are `<ledger id>:<payment id>`.
    pub ledger_id: String,
    pub payments: i64,
    pub last_payment_id: i64,
    pub total_amount: String,
    /// May exceed `i64::MAX`: serialised as a plain JSON integer.
    pub total_amount_minor: i128,
    pub keyed_payments: i64,
    pub keyless_payments: i64,
    pub distinct_keys: i64,
    pub duplicate_keys: i64,
    pub accounts: i64,
    pub stored_responses: i64,
    pub keys_in_flight: i64,
    pub dedup: &'static str,
    /// The replica that answered (counters below are its own; the figures
    /// above are the shared file's).
    pub replica: String,
    pub notify: &'static str,
    pub outbox: OutboxJson,
    pub received: u64,
    pub executed: u64,
    pub replayed: u64,
    pub replayed_from_ledger: u64,
    pub conflicts_409: u64,
    pub mismatches_422: u64,
    pub rejected: u64,
    pub unavailable_503: u64,
    pub lease_takeovers: u64,
    pub keys_reaped: u64,
    pub writer_commits: u64,
    pub writer_cpu_us: u64,
    pub invariants: Invariants,
    /// None until `GET /audit` has run on this ledger.
    pub last_audit: Option<LastAuditJson>,
}

impl StatsJson {
    pub(crate) fn new(
        (maintained, outbox): (&Maintained, &OutboxFigures),
        counters: &Counters,
        (dedup, notify, replica): (DedupMode, NotifyMode, String),
    ) -> StatsJson {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let db = &maintained.figures;
        let audit = maintained.last_audit.as_ref();
        StatsJson {
            ledger_id: outbox.ledger_id.clone(),
            payments: db.payments,
            last_payment_id: db.last_payment_id,
            total_amount: money::format_minor(db.total_amount_minor),
            total_amount_minor: db.total_amount_minor,
            keyed_payments: db.keyed_payments,
            keyless_payments: db.payments - db.keyed_payments,
            distinct_keys: db.distinct_keys,
            duplicate_keys: db.duplicate_keys,
            accounts: db.accounts,
            stored_responses: db.stored_responses,
            keys_in_flight: db.keys_in_flight,
            dedup: dedup.as_str(),
            replica,
            notify: notify.as_str(),
            outbox: OutboxJson::new(outbox, clock::now_ms()),
            received: load(&counters.received),
            executed: load(&counters.executed),
            replayed: load(&counters.replayed),
            replayed_from_ledger: load(&counters.replayed_from_ledger),
            conflicts_409: load(&counters.conflicts_409),
            mismatches_422: load(&counters.mismatches_422),
            rejected: load(&counters.rejected),
            unavailable_503: load(&counters.unavailable_503),
            lease_takeovers: load(&counters.lease_takeovers),
            keys_reaped: load(&counters.keys_reaped),
            writer_commits: load(&counters.writer_commits),
            writer_cpu_us: load(&counters.writer_cpu_ns) / 1000,
            invariants: Invariants {
                one_payment_per_key: db.duplicate_keys == 0,
                balances_conserved: db.balance_sum_minor == 0,
                balances_match_ledger: audit.is_none_or(|a| a.accounts_off_ledger == 0),
            },
            last_audit: audit.map(|a| LastAuditJson {
                finished_at: clock::rfc3339_ms(a.finished_at_ms),
                verdict: a.verdict.clone(),
                accounts_off_ledger: a.accounts_off_ledger,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_beyond_i64_render_as_exact_json_integers() {
        let db = Maintained {
            ledger_uid: 1,
            figures: crate::totals::Figures {
                total_amount_minor: 10_000_000_000_000_000_000, // 1e8 payments of 1e11 minor units
                ..Default::default()
            },
            last_audit: None,
        };
        let outbox = OutboxFigures {
            ledger_id: "0123456789abcdef".into(),
            pending: 0,
            delivered: 0,
            refused: 0,
            delivery_attempts: 0,
            redelivered: 0,
            oldest_pending_since_ms: None,
        };
        let stats = StatsJson::new(
            (&db, &outbox),
            &Counters::default(),
            (DedupMode::Unique, NotifyMode::None, "00000001".into()),
        );
        let json = serde_json::to_string(&stats).unwrap();
        assert!(json.contains(r#""total_amount":"100000000000000000.00""#), "{json}");
        assert!(json.contains(r#""total_amount_minor":10000000000000000000,"#), "{json}");
    }
}
