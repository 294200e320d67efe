//! The transactional outbox: one event row per payment, written by
//! `store::insert_payment` in the same transaction as the payment (with
//! `--notify outbox`), so an event exists if and only if its payment does.
//! The relay (`relay.rs`) reads pending events and delivers them; what it
//! learnt comes back as one writer op ([`Marks`]).
//!
//! Tables (schema version 2, see `schema.rs`):
//! - `ledger_meta`: one row, the ledger id (16 random lowercase hex digits)
//!   made with each database file and at each in-place wipe. Event ids are
//!   `<ledger id>:<payment id>`: payment ids start again at 1 in a fresh
//!   ledger, event ids do not repeat.
//! - `outbox`: per payment, its state (`pending`, `delivered`, `refused`: a
//!   permanent 4xx, the dead letter, kept visible), attempts, when the next
//!   attempt is due, since when it is pending and when it was delivered.
//!   Three partial indexes: due pending events (the relay's read), pending
//!   since (the oldest pending, for `/stats`), delivered at (a redelivery
//!   window); each a seek, never a scan.
//! - the counts live in `ledger_totals` next to the ledger's figures, changed
//!   in the same transactions: `/stats` stays one row.
//!
//! The event's content is the payment row itself (accounts, amount, the key
//! it was made under, when), so what is delivered is exactly what committed.

use crate::db::{Connection, OptionalExtension, params};
use eo_core::wire::PaymentEvent;

use crate::db_error::{DbError, DbResult};
use crate::totals::{self, Delta};

/// Brings a version-1 file to version 2 (and completes a new file).
pub(crate) const OUTBOX_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ledger_meta (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    ledger_id TEXT    NOT NULL CHECK (length(ledger_id) = 16)
);
CREATE TABLE IF NOT EXISTS outbox (
    payment_id       INTEGER PRIMARY KEY REFERENCES payments(id),
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'refused')),
    attempts         INTEGER NOT NULL,
    next_attempt_ms  INTEGER NOT NULL,
    pending_since_ms INTEGER NOT NULL,
    delivered_at_ms  INTEGER,
    refused_status   INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(next_attempt_ms) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS outbox_pending_since ON outbox(pending_since_ms) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS outbox_delivered ON outbox(delivered_at_ms) WHERE state = 'delivered';
ALTER TABLE ledger_totals ADD COLUMN outbox_pending INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ledger_totals ADD COLUMN outbox_delivered INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ledger_totals ADD COLUMN outbox_refused INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ledger_totals ADD COLUMN outbox_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ledger_totals ADD COLUMN outbox_redelivered INTEGER NOT NULL DEFAULT 0;
";

/// Gives the database a new random ledger id (creating the row if needed).
pub(crate) fn new_ledger_id(conn: &Connection) -> DbResult<String> {
    let id = format!("{:016x}", rand::random::<u64>());
    conn.prepare_cached(
        "INSERT INTO ledger_meta (id, ledger_id) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET ledger_id = excluded.ledger_id",
    )?
    .execute([&id])?;
    Ok(id)
}

pub(crate) fn ledger_id(conn: &Connection) -> DbResult<String> {
    conn.prepare_cached("SELECT ledger_id FROM ledger_meta WHERE id = 1")?
        .query_row((), |r| r.get(0))
        .optional()?
        .ok_or_else(|| DbError::Corrupt("the ledger_meta row is missing".into()))
}

/// The event of payment `payment_id`, pending and due at once.
pub(crate) fn add_event(conn: &Connection, payment_id: i64, now_ms: i64) -> DbResult<()> {
    conn.prepare_cached(
        "INSERT INTO outbox (payment_id, state, attempts, next_attempt_ms, pending_since_ms)
         VALUES (?1, 'pending', 0, ?2, ?2)",
    )?
    .execute(params![payment_id, now_ms])?;
    Ok(())
}

/// Applies the outbox's part of `d` to the totals row (the caller's transaction).
pub(crate) fn add_counts(conn: &Connection, d: &Delta) -> DbResult<()> {
    let changed = conn
        .prepare_cached(
            "UPDATE ledger_totals SET outbox_pending = outbox_pending + ?1, outbox_delivered = outbox_delivered + ?2,
                 outbox_refused = outbox_refused + ?3, outbox_attempts = outbox_attempts + ?4,
                 outbox_redelivered = outbox_redelivered + ?5
             WHERE id = 1",
        )?
        .execute(params![
            d.outbox_pending,
            d.outbox_delivered,
            d.outbox_refused,
            d.outbox_attempts,
            d.outbox_redelivered
        ])?;
    if changed != 1 {
        return Err(totals::missing_row());
    }
    Ok(())
}

/// The outbox's figures and the ledger id, as `/stats` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutboxFigures {
    pub ledger_id: String,
    pub pending: i64,
    pub delivered: i64,
    pub refused: i64,
    pub delivery_attempts: i64,
    pub redelivered: i64,
    /// Since when the oldest pending event waits (ms since the epoch).
    pub oldest_pending_since_ms: Option<i64>,
}

/// One row and one index seek, whatever the number of events.
pub(crate) fn figures(conn: &Connection) -> DbResult<OutboxFigures> {
    let (pending, delivered, refused, delivery_attempts, redelivered) = conn
        .prepare_cached(
            "SELECT outbox_pending, outbox_delivered, outbox_refused, outbox_attempts, outbox_redelivered
             FROM ledger_totals WHERE id = 1",
        )?
        .query_row((), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .optional()?
        .ok_or_else(totals::missing_row)?;
    let oldest_pending_since_ms = conn
        .prepare_cached(
            "SELECT min(pending_since_ms) FROM outbox INDEXED BY outbox_pending_since WHERE state = 'pending'",
        )?
        .query_row((), |r| r.get(0))?;
    Ok(OutboxFigures {
        ledger_id: ledger_id(conn)?,
        pending,
        delivered,
        refused,
        delivery_attempts,
        redelivered,
        oldest_pending_since_ms,
    })
}

/// A pending event as the relay reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    pub event: PaymentEvent,
    /// Attempts made so far.
    pub attempts: i64,
}

/// What the relay reads in one snapshot: the ledger, up to `limit` events
/// due at `now_ms` (the longest due first), and when the next one not yet
/// due will be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Due {
    pub ledger_id: String,
    pub events: Vec<Pending>,
    pub next_due_ms: Option<i64>,
}

pub(crate) fn due(conn: &mut Connection, now_ms: i64, limit: usize) -> DbResult<Due> {
    // One read transaction: the ledger id belongs to these events.
    conn.snapshot(|tx| due_in(tx, now_ms, limit))
}

fn due_in(tx: &Connection, now_ms: i64, limit: usize) -> DbResult<Due> {
    let ledger_id = ledger_id(tx)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let events = tx
        .prepare_cached(
            "SELECT o.payment_id, o.attempts, p.src, p.dest, p.amount_minor, p.idem_key, p.created_at_ms
             FROM outbox AS o INDEXED BY outbox_due JOIN payments AS p ON p.id = o.payment_id
             WHERE o.state = 'pending' AND o.next_attempt_ms <= ?1 ORDER BY o.next_attempt_ms LIMIT ?2",
        )?
        .query_map(params![now_ms, limit], |r| {
            let payment_id: i64 = r.get(0)?;
            Ok(Pending {
                event: PaymentEvent {
                    event_id: eo_core::wire::event_id(&ledger_id, payment_id),
                    payment_id,
                    key: r.get(5)?,
                    src: r.get(2)?,
                    dest: r.get(3)?,
                    amount_minor: r.get(4)?,
                    paid_at_ms: r.get(6)?,
                },
                attempts: r.get(1)?,
            })
        })?;
    let next_due_ms = tx
        .prepare_cached("SELECT min(next_attempt_ms) FROM outbox INDEXED BY outbox_due WHERE state = 'pending'")?
        .query_row((), |r| r.get(0))?;
    Ok(Due {
        ledger_id,
        events,
        next_due_ms,
    })
}

/// What one attempt to deliver an event ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// The receiver answered 2xx.
    Delivered,
    /// A permanent refusal (a 4xx other than 408/409/429): dead letter.
    Refused { status: u16 },
    /// Try again at `next_attempt_ms`.
    Retry { next_attempt_ms: i64 },
}

/// The relay's results for a round, for events of ledger `ledger_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marks {
    pub ledger_id: String,
    pub marks: Vec<(i64, Mark)>,
}

/// Writes a round's results (the writer's transaction). Nothing when the
/// ledger was deleted since the relay read the events: their ids now name
/// other payments. Returns the events changed.
pub(crate) fn apply(conn: &Connection, marks: &Marks, now_ms: i64, totals: &mut Delta) -> DbResult<usize> {
    if ledger_id(conn)? != marks.ledger_id {
        return Ok(0);
    }
    let mut changed = 0;
    for &(payment_id, mark) in &marks.marks {
        let (state, next, status) = match mark {
            Mark::Delivered => ("delivered", None, None),
            Mark::Refused { status } => ("refused", None, Some(status)),
            Mark::Retry { next_attempt_ms } => ("pending", Some(next_attempt_ms), None),
        };
        let n = conn
            .prepare_cached(
                "UPDATE outbox SET state = ?2, attempts = attempts + 1,
                     next_attempt_ms = coalesce(?3, next_attempt_ms), refused_status = ?4,
                     delivered_at_ms = CASE WHEN ?2 = 'delivered' THEN ?5 ELSE delivered_at_ms END
                 WHERE payment_id = ?1 AND state = 'pending'",
            )?
            .execute(params![payment_id, state, next, status.map(i64::from), now_ms])?;
        if n == 1 {
            changed += 1;
            totals.outbox_attempts += 1;
            let settled = i64::from(next.is_none());
            totals.outbox_pending -= settled;
            totals.outbox_delivered += i64::from(mark == Mark::Delivered);
            totals.outbox_refused += i64::from(status.is_some());
        }
    }
    Ok(changed)
}

/// Marks up to `rows_max` events delivered within the last `window_ms`
/// pending again, due at once (what a broker does after a consumer
/// restart). Returns how many.
pub(crate) fn redeliver(
    conn: &Connection,
    (now_ms, window_ms): (i64, i64),
    rows_max: usize,
    totals: &mut Delta,
) -> DbResult<usize> {
    let n = conn
        .prepare_cached(
            "UPDATE outbox SET state = 'pending', next_attempt_ms = ?1, pending_since_ms = ?1
             WHERE payment_id IN (
                 SELECT payment_id FROM outbox INDEXED BY outbox_delivered
                 WHERE state = 'delivered' AND delivered_at_ms >= ?2 LIMIT ?3)",
        )?
        .execute(params![
            now_ms,
            now_ms.saturating_sub(window_ms),
            i64::try_from(rows_max).unwrap_or(i64::MAX)
        ])?;
    let n_i64 = i64::try_from(n).unwrap_or(0);
    totals.outbox_pending += n_i64;
    totals.outbox_delivered -= n_i64;
    totals.outbox_redelivered += n_i64;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;
    use crate::payment::PaymentRequest;
    use crate::store::{self, Book};

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = store::open_writer(&dir.path().join("t.db"), Synchronous::Normal).expect("open");
        (dir, conn)
    }

    fn pay(conn: &Connection, outbox: bool, now_ms: i64) -> i64 {
        let request = PaymentRequest::new("bianca".into(), "marc".into(), 100);
        let mut d = Delta::default();
        let p = store::insert_unchecked(conn, &request, Some("k"), Book { now_ms, outbox }, &mut d).unwrap();
        totals::add(conn, &d).unwrap();
        p.id
    }

    fn apply_t(conn: &Connection, marks: Marks, now_ms: i64) -> usize {
        let mut d = Delta::default();
        let n = apply(conn, &marks, now_ms, &mut d).unwrap();
        totals::add(conn, &d).unwrap();
        n
    }

    #[test]
    fn events_follow_their_payments_and_their_marks_move_the_counts() {
        let (_dir, mut conn) = db();
        let ledger = ledger_id(&conn).unwrap();
        assert!(ledger.len() == 16 && ledger.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let (a, _none, c) = (pay(&conn, true, 10), pay(&conn, false, 11), pay(&conn, true, 12));
        let due_now = due(&mut conn, 100, 10).unwrap();
        let ids: Vec<i64> = due_now.events.iter().map(|p| p.event.payment_id).collect();
        assert_eq!(ids, vec![a, c]);
        assert_eq!(due_now.events[0].event.event_id, format!("{ledger}:{a}"));
        assert_eq!(due_now.events[0].event.key.as_deref(), Some("k"));
        let marks = |m: Vec<(i64, Mark)>| Marks {
            ledger_id: ledger.clone(),
            marks: m,
        };
        let retry = Mark::Retry { next_attempt_ms: 500 };
        assert_eq!(apply_t(&conn, marks(vec![(a, Mark::Delivered), (c, retry)]), 100), 2);
        let f = figures(&conn).unwrap();
        assert_eq!((f.pending, f.delivered, f.delivery_attempts), (1, 1, 2));
        assert_eq!(f.oldest_pending_since_ms, Some(12));
        assert_eq!(due(&mut conn, 499, 10).unwrap().events.len(), 0);
        assert_eq!(due(&mut conn, 499, 10).unwrap().next_due_ms, Some(500));
        assert_eq!(apply_t(&conn, marks(vec![(c, Mark::Refused { status: 400 })]), 600), 1);
        // Another ledger's marks change nothing.
        let stale = Marks {
            ledger_id: "0000000000000000".into(),
            marks: vec![(a, retry)],
        };
        assert_eq!(apply_t(&conn, stale, 700), 0);
        let mut d = Delta::default();
        assert_eq!(redeliver(&conn, (1000, 950), 10, &mut d).unwrap(), 1);
        totals::add(&conn, &d).unwrap();
        let f = figures(&conn).unwrap();
        assert_eq!((f.pending, f.delivered, f.refused, f.redelivered), (1, 0, 1, 1));
        assert_eq!(f.oldest_pending_since_ms, Some(1000));
    }

    #[test]
    fn the_relay_and_stats_reads_seek_their_indexes() {
        let (_dir, conn) = db();
        for sql in [
            "SELECT min(pending_since_ms) FROM outbox INDEXED BY outbox_pending_since WHERE state = 'pending'",
            "SELECT min(next_attempt_ms) FROM outbox INDEXED BY outbox_due WHERE state = 'pending'",
        ] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map((), |r| r.get::<_, String>(3))
                .unwrap();
            assert!(
                plan.iter()
                    .all(|step| !step.starts_with("SCAN outbox\n") && step != "SCAN outbox"),
                "{plan:?}"
            );
            assert!(
                plan.iter().any(|step| step.contains("USING COVERING INDEX")),
                "{plan:?}"
            );
        }
    }
}
