//! Every SQL statement, as plain functions of a connection that take the
//! time as an argument: the delivery (inbox or naive), the figures `/stats`
//! shows, and the reads.

use eo_core::wire::PaymentEvent;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use crate::config::{DedupMode, RECEIPT_IDS_PER_EVENT_MAX};
use crate::db_error::{DbError, DbResult};

/// One receipt, as stored and as answered: the event it was issued for,
/// between its id and when it was issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    pub id: i64,
    #[serde(flatten)]
    pub event: PaymentEvent,
    pub issued_at_ms: i64,
}

/// What a delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// A receipt was issued.
    Created(Receipt),
    /// The event was already receipted with the same content: its first
    /// receipt, nothing written but the count of absorbed duplicates.
    Replayed(Receipt),
    /// The event id is receipted with other content (the fields named):
    /// nothing written.
    Mismatch {
        receipt: Receipt,
        differs: Vec<&'static str>,
    },
}

/// A batch's change to the figures, added to `receipt_totals` once per batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Delta {
    pub receipts: i64,
    pub events: i64,
    pub duplicates_absorbed: i64,
    pub amount_minor: i128,
    pub last_receipt_id: i64,
}

impl std::ops::AddAssign for Delta {
    fn add_assign(&mut self, other: Delta) {
        self.receipts += other.receipts;
        self.events += other.events;
        self.duplicates_absorbed += other.duplicates_absorbed;
        self.amount_minor += other.amount_minor;
        self.last_receipt_id = self.last_receipt_id.max(other.last_receipt_id);
    }
}

/// The figures `/stats` shows, as maintained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub receipts: i64,
    pub events: i64,
    pub duplicates_absorbed: i64,
    pub amount_minor: i128,
    pub last_receipt_id: i64,
}

/// Delivers one event in the caller's transaction. Under `Inbox` the event
/// id is looked up in the inbox first (the writer serialises deliveries, and
/// the inbox's primary key refuses a second row should that ever change);
/// under `Off` a receipt is issued whatever the inbox holds.
pub(crate) fn deliver(
    conn: &Connection,
    event: &PaymentEvent,
    dedup: DedupMode,
    now_ms: i64,
    delta: &mut Delta,
) -> DbResult<Delivered> {
    let first = first_receipt(conn, &event.event_id)?;
    if let (DedupMode::Inbox, Some(first)) = (dedup, first) {
        let receipt = receipt(conn, first)?
            .ok_or_else(|| DbError::Other(format!("the inbox names receipt {first}, which does not exist")))?;
        let differs = differences(&receipt, event);
        if !differs.is_empty() {
            return Ok(Delivered::Mismatch { receipt, differs });
        }
        delta.duplicates_absorbed += 1;
        return Ok(Delivered::Replayed(receipt));
    }
    let receipt = insert_receipt(conn, event, now_ms)?;
    if first.is_none() {
        conn.prepare_cached("INSERT INTO inbox (event_id, receipt_id, received_at_ms) VALUES (?1, ?2, ?3)")?
            .execute(params![event.event_id, receipt.id, now_ms])?;
        delta.events += 1;
    }
    delta.receipts += 1;
    delta.amount_minor += i128::from(receipt.event.amount_minor);
    delta.last_receipt_id = delta.last_receipt_id.max(receipt.id);
    Ok(Delivered::Created(receipt))
}

/// The fields in which `event` differs from the receipt of the same event id.
/// `paid_at_ms` is not among them: it is when the payment committed, not what
/// was paid, and a sender may render it anew on a redelivery.
fn differences(receipt: &Receipt, event: &PaymentEvent) -> Vec<&'static str> {
    let receipt = &receipt.event;
    let mut differs = Vec::new();
    if receipt.payment_id != event.payment_id {
        differs.push("payment_id");
    }
    if receipt.key != event.key {
        differs.push("key");
    }
    if receipt.src != event.src {
        differs.push("src");
    }
    if receipt.dest != event.dest {
        differs.push("dest");
    }
    if receipt.amount_minor != event.amount_minor {
        differs.push("amount_minor");
    }
    differs
}

fn first_receipt(conn: &Connection, event_id: &str) -> DbResult<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT receipt_id FROM inbox WHERE event_id = ?1")?
        .query_row([event_id], |r| r.get(0))
        .optional()?)
}

fn insert_receipt(conn: &Connection, event: &PaymentEvent, now_ms: i64) -> DbResult<Receipt> {
    let sql = "INSERT INTO receipts (event_id, payment_id, idem_key, src, dest, amount_minor, paid_at_ms, issued_at_ms)
               VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
    let e = event;
    conn.prepare_cached(sql)?.execute(params![
        e.event_id,
        e.payment_id,
        e.key,
        e.src,
        e.dest,
        e.amount_minor,
        e.paid_at_ms,
        now_ms
    ])?;
    Ok(Receipt {
        id: conn.last_insert_rowid(),
        event: e.clone(),
        issued_at_ms: now_ms,
    })
}

const RECEIPT_COLUMNS: &str = "id, event_id, payment_id, idem_key, src, dest, amount_minor, paid_at_ms, issued_at_ms";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Receipt> {
    Ok(Receipt {
        id: r.get(0)?,
        event: PaymentEvent {
            event_id: r.get(1)?,
            payment_id: r.get(2)?,
            key: r.get(3)?,
            src: r.get(4)?,
            dest: r.get(5)?,
            amount_minor: r.get(6)?,
            paid_at_ms: r.get(7)?,
        },
        issued_at_ms: r.get(8)?,
    })
}

/// One receipt by id.
pub(crate) fn receipt(conn: &Connection, id: i64) -> DbResult<Option<Receipt>> {
    let sql = format!("SELECT {RECEIPT_COLUMNS} FROM receipts WHERE id = ?1");
    Ok(conn.prepare_cached(&sql)?.query_row([id], from_row).optional()?)
}

/// Receipts with ids above `after`, in id order, at most `limit`; only those
/// of `payment_id` if given (an index seek either way).
pub(crate) fn page(conn: &Connection, payment_id: Option<i64>, after: i64, limit: usize) -> DbResult<Vec<Receipt>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = match payment_id {
        Some(pid) => {
            let sql = format!(
                "SELECT {RECEIPT_COLUMNS} FROM receipts INDEXED BY receipts_by_payment
                 WHERE payment_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            stmt.query_map(params![pid, after, limit], from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?
        }
        None => {
            let sql = format!("SELECT {RECEIPT_COLUMNS} FROM receipts WHERE id > ?1 ORDER BY id LIMIT ?2");
            let mut stmt = conn.prepare_cached(&sql)?;
            stmt.query_map(params![after, limit], from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?
        }
    };
    Ok(rows)
}

/// How many receipts one event id has, and the first of their ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct EventReceipts {
    pub event_id: String,
    pub receipts: i64,
    /// At most [`RECEIPT_IDS_PER_EVENT_MAX`], ascending.
    pub receipt_ids: Vec<i64>,
}

/// The receipts of each event id, in the order asked (an id asked twice is
/// answered twice), from one snapshot: an index seek per id, a count only
/// for an event with more receipts than are listed.
pub(crate) fn lookup(conn: &mut Connection, event_ids: &[String]) -> DbResult<Vec<EventReceipts>> {
    let tx = conn.transaction()?;
    let listed = i64::try_from(RECEIPT_IDS_PER_EVENT_MAX).unwrap_or(i64::MAX);
    let mut answers = Vec::with_capacity(event_ids.len());
    {
        let mut ids = tx.prepare_cached(
            "SELECT id FROM receipts INDEXED BY receipts_by_event WHERE event_id = ?1 ORDER BY id LIMIT ?2",
        )?;
        let mut count =
            tx.prepare_cached("SELECT count(*) FROM receipts INDEXED BY receipts_by_event WHERE event_id = ?1")?;
        for event_id in event_ids {
            let receipt_ids = ids
                .query_map(params![event_id, listed + 1], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<i64>>>()?;
            let receipts = match receipt_ids.len() as i64 > listed {
                true => count.query_row([event_id], |r| r.get(0))?,
                false => receipt_ids.len() as i64,
            };
            let mut receipt_ids = receipt_ids;
            receipt_ids.truncate(RECEIPT_IDS_PER_EVENT_MAX);
            answers.push(EventReceipts {
                event_id: event_id.clone(),
                receipts,
                receipt_ids,
            });
        }
    }
    tx.finish()?;
    Ok(answers)
}

/// The low half of a split sum holds 32 bits.
const LO_MASK: i128 = 0xFFFF_FFFF;

/// The maintained figures (one row).
pub(crate) fn totals(conn: &Connection) -> DbResult<Totals> {
    let sql = "SELECT receipts, events, duplicates_absorbed, amount_hi, amount_lo, last_receipt_id
               FROM receipt_totals WHERE id = 1";
    Ok(conn.prepare_cached(sql)?.query_row([], |r| {
        let (hi, lo): (i64, i64) = (r.get(3)?, r.get(4)?);
        Ok(Totals {
            receipts: r.get(0)?,
            events: r.get(1)?,
            duplicates_absorbed: r.get(2)?,
            amount_minor: (i128::from(hi) << 32) + i128::from(lo),
            last_receipt_id: r.get(5)?,
        })
    })?)
}

/// Adds a batch's change to the figures, in the batch's transaction. Money
/// is added in Rust (i128) and stored split in two integer columns, so no
/// SQL expression can overflow into a float.
pub(crate) fn add_totals(conn: &Connection, delta: &Delta) -> DbResult<()> {
    if *delta == Delta::default() {
        return Ok(());
    }
    let now = totals(conn)?;
    let overflow = || DbError::Other("the receipts' figures left the range they can hold".into());
    let amount = now.amount_minor.checked_add(delta.amount_minor).ok_or_else(overflow)?;
    let hi = i64::try_from(amount >> 32).map_err(|_| overflow())?;
    let lo = i64::try_from(amount & LO_MASK).map_err(|_| overflow())?;
    let sql = "UPDATE receipt_totals SET receipts = receipts + ?1, events = events + ?2,
               duplicates_absorbed = duplicates_absorbed + ?3, amount_hi = ?4, amount_lo = ?5,
               last_receipt_id = max(last_receipt_id, ?6) WHERE id = 1";
    let params = params![
        delta.receipts,
        delta.events,
        delta.duplicates_absorbed,
        hi,
        lo,
        delta.last_receipt_id
    ];
    conn.prepare_cached(sql)?.execute(params)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema;

    fn event(id: &str, amount_minor: i64) -> PaymentEvent {
        PaymentEvent {
            event_id: id.into(),
            payment_id: 1,
            key: Some("k".into()),
            src: "a".into(),
            dest: "b".into(),
            amount_minor,
            paid_at_ms: 5,
        }
    }

    fn deliver_all(conn: &Connection, dedup: DedupMode, events: &[PaymentEvent]) -> Vec<Delivered> {
        let mut delta = Delta::default();
        let done = events
            .iter()
            .map(|e| deliver(conn, e, dedup, 7, &mut delta).unwrap())
            .collect();
        add_totals(conn, &delta).unwrap();
        done
    }

    #[test]
    fn the_inbox_replays_and_refuses_other_content_and_off_issues_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = schema::open_writer(&dir.path().join("r.db")).unwrap();
        let (e, other) = (event("x:1", 100), event("x:1", 101));
        let done = deliver_all(&conn, DedupMode::Inbox, &[e.clone(), e.clone(), other]);
        assert!(matches!(&done[0], Delivered::Created(r) if r.id == 1));
        assert_eq!(
            done[1],
            Delivered::Replayed(match &done[0] {
                Delivered::Created(r) => r.clone(),
                _ => unreachable!(),
            })
        );
        assert!(matches!(&done[2], Delivered::Mismatch { differs, .. } if differs == &["amount_minor"]));
        let t = totals(&conn).unwrap();
        assert_eq!(
            (t.receipts, t.events, t.duplicates_absorbed, t.amount_minor),
            (1, 1, 1, 100)
        );
        deliver_all(&conn, DedupMode::Off, &[e.clone(), e]);
        let t = totals(&conn).unwrap();
        assert_eq!(
            (t.receipts, t.events, t.amount_minor, t.last_receipt_id),
            (3, 1, 300, 3)
        );
        let found = lookup(&mut conn, &["x:1".into(), "y:2".into()]).unwrap();
        assert_eq!((found[0].receipts, found[0].receipt_ids.clone()), (3, vec![1, 2, 3]));
        assert_eq!((found[1].receipts, found[1].receipt_ids.len()), (0, 0));
    }

    #[test]
    fn totals_past_i64_stay_exact() {
        let dir = tempfile::tempdir().unwrap();
        let conn = schema::open_writer(&dir.path().join("r.db")).unwrap();
        let big = Delta {
            amount_minor: i128::from(i64::MAX) * 3 + 7,
            receipts: 1,
            ..Delta::default()
        };
        add_totals(&conn, &big).unwrap();
        add_totals(&conn, &big).unwrap();
        assert_eq!(totals(&conn).unwrap().amount_minor, 2 * (i128::from(i64::MAX) * 3 + 7));
    }

    #[test]
    fn a_lookup_counts_beyond_the_listed_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = schema::open_writer(&dir.path().join("r.db")).unwrap();
        let many = vec![event("storm:1", 1); RECEIPT_IDS_PER_EVENT_MAX + 4];
        deliver_all(&conn, DedupMode::Off, &many);
        let found = lookup(&mut conn, &["storm:1".into()]).unwrap();
        assert_eq!(found[0].receipts, (RECEIPT_IDS_PER_EVENT_MAX + 4) as i64);
        assert_eq!(found[0].receipt_ids.len(), RECEIPT_IDS_PER_EVENT_MAX);
    }
}
