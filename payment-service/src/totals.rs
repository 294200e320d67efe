//! The ledger's figures, maintained in the database: one row of
//! `ledger_totals`, updated by every write in the same transaction as the
//! write itself, so `/stats` reads one row whatever the size of the ledger.
//!
//! Money sums may exceed an `i64`: 100 million payments of the largest amount
//! are 1e19 minor units. SQLite turns an overflowing integer sum into a float,
//! so a sum is kept exactly in two integer columns, `hi * 2^32 + lo` with
//! `0 <= lo < 2^32`: a delta is split the same way and the carry out of `lo`
//! moves to `hi`, so no SQL expression ever leaves the `i64` range.
//!
//! The figures are maintained, not proven: [`crate::audit`] recomputes them
//! from the payments and compares.

use crate::db::{Connection, OptionalExtension, params};

use crate::db_error::{DbError, DbResult};

/// The table and its one row (created with the schema; see `schema.rs`).
pub(crate) const TOTALS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ledger_totals (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    -- Random at creation: an audit notices that the ledger was deleted under it.
    ledger_uid        INTEGER NOT NULL,
    payments          INTEGER NOT NULL,
    last_payment_id   INTEGER NOT NULL,
    -- Money moved: amount_hi * 2^32 + amount_lo.
    amount_hi         INTEGER NOT NULL,
    amount_lo         INTEGER NOT NULL,
    keyed_payments    INTEGER NOT NULL,
    distinct_keys     INTEGER NOT NULL,
    duplicate_keys    INTEGER NOT NULL,
    accounts          INTEGER NOT NULL,
    -- Sum of all balances: balance_hi * 2^32 + balance_lo.
    balance_hi        INTEGER NOT NULL,
    balance_lo        INTEGER NOT NULL,
    stored_responses  INTEGER NOT NULL,
    keys_in_flight    INTEGER NOT NULL,
    -- The latest audit by the service: when, its verdict, accounts off the ledger.
    audit_finished_at_ms INTEGER,
    audit_verdict        TEXT,
    audit_accounts_off_ledger INTEGER
);
";

/// The low half of a split sum holds 32 bits.
const LO_MASK: i64 = 0xFFFF_FFFF;

/// Splits `v` into `(hi, lo)` with `v = hi * 2^32 + lo` and `0 <= lo < 2^32`.
pub(crate) fn split(v: i64) -> (i64, i64) {
    (v >> 32, v & LO_MASK)
}

/// The exact value of a split sum.
pub(crate) fn join(hi: i64, lo: i64) -> i128 {
    (i128::from(hi) << 32) + i128::from(lo)
}

/// What the ledger holds, as figures: maintained (read from `ledger_totals`)
/// or recomputed (by an audit). Keyless payments are `payments -
/// keyed_payments`.
pub(crate) type Figures = eo_core::wire::LedgerFigures;

/// The latest audit the service recorded for this ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LastAudit {
    pub finished_at_ms: i64,
    pub verdict: String,
    pub accounts_off_ledger: i64,
}

/// The `ledger_totals` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Maintained {
    pub ledger_uid: i64,
    pub figures: Figures,
    pub last_audit: Option<LastAudit>,
}

/// A change to the figures, made by one write or added up over a batch of
/// them. The amount is at most a batch of payments of at most 1e11 minor
/// units each: far inside an `i64`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Delta {
    pub payments: i64,
    pub last_payment_id: i64,
    pub amount_minor: i64,
    pub keyed_payments: i64,
    pub distinct_keys: i64,
    pub duplicate_keys: i64,
    pub accounts: i64,
    pub stored_responses: i64,
    pub keys_in_flight: i64,
    /// The outbox's counts (see `outbox.rs`), kept in the same row.
    pub outbox_pending: i64,
    pub outbox_delivered: i64,
    pub outbox_refused: i64,
    pub outbox_attempts: i64,
    pub outbox_redelivered: i64,
}

impl std::ops::AddAssign for Delta {
    fn add_assign(&mut self, d: Delta) {
        self.payments += d.payments;
        self.last_payment_id = self.last_payment_id.max(d.last_payment_id);
        self.amount_minor += d.amount_minor;
        self.keyed_payments += d.keyed_payments;
        self.distinct_keys += d.distinct_keys;
        self.duplicate_keys += d.duplicate_keys;
        self.accounts += d.accounts;
        self.stored_responses += d.stored_responses;
        self.keys_in_flight += d.keys_in_flight;
        self.outbox_pending += d.outbox_pending;
        self.outbox_delivered += d.outbox_delivered;
        self.outbox_refused += d.outbox_refused;
        self.outbox_attempts += d.outbox_attempts;
        self.outbox_redelivered += d.outbox_redelivered;
    }
}

impl Delta {
    /// The part of the change that is the ledger's (not the outbox's).
    fn ledger_part(&self) -> Delta {
        Delta {
            outbox_pending: 0,
            outbox_delivered: 0,
            outbox_refused: 0,
            outbox_attempts: 0,
            outbox_redelivered: 0,
            ..*self
        }
    }
}

/// Applies `delta` to the totals row, in the caller's transaction.
pub(crate) fn add(conn: &Connection, d: &Delta) -> DbResult<()> {
    if d.ledger_part() != *d {
        crate::outbox::add_counts(conn, d)?;
    }
    if d.ledger_part() == Delta::default() {
        return Ok(());
    }
    let (amount_hi, amount_lo) = split(d.amount_minor);
    let changed = conn
        .prepare_cached(
            "UPDATE ledger_totals SET
                 payments = payments + ?1, last_payment_id = CASE WHEN ?2 > last_payment_id THEN ?2 ELSE last_payment_id END,
                 amount_hi = amount_hi + ?3 + ((amount_lo + ?4) >> 32), amount_lo = (amount_lo + ?4) & 4294967295,
                 keyed_payments = keyed_payments + ?5, distinct_keys = distinct_keys + ?6,
                 duplicate_keys = duplicate_keys + ?7, accounts = accounts + ?8,
                 stored_responses = stored_responses + ?9, keys_in_flight = keys_in_flight + ?10
             WHERE id = 1",
        )?
        .execute(params![
            d.payments,
            d.last_payment_id,
            amount_hi,
            amount_lo,
            d.keyed_payments,
            d.distinct_keys,
            d.duplicate_keys,
            d.accounts,
            d.stored_responses,
            d.keys_in_flight
        ])?;
    if changed != 1 {
        return Err(missing_row());
    }
    Ok(())
}

pub(crate) fn missing_row() -> DbError {
    DbError::Corrupt("the ledger_totals row is missing; run `payment-service audit --db FILE`".into())
}

/// Reads the totals row: O(1) whatever the size of the ledger.
pub(crate) fn read(conn: &Connection) -> DbResult<Maintained> {
    conn.prepare_cached(
        "SELECT ledger_uid, payments, last_payment_id, amount_hi, amount_lo, keyed_payments, distinct_keys,
                duplicate_keys, accounts, balance_hi, balance_lo, stored_responses, keys_in_flight,
                audit_finished_at_ms, audit_verdict, audit_accounts_off_ledger
         FROM ledger_totals WHERE id = 1",
    )?
    .query_row((), |r| {
        let audit_at: Option<i64> = r.get(13)?;
        Ok(Maintained {
            ledger_uid: r.get(0)?,
            figures: Figures {
                payments: r.get(1)?,
                last_payment_id: r.get(2)?,
                total_amount_minor: join(r.get(3)?, r.get(4)?),
                keyed_payments: r.get(5)?,
                distinct_keys: r.get(6)?,
                duplicate_keys: r.get(7)?,
                accounts: r.get(8)?,
                balance_sum_minor: join(r.get(9)?, r.get(10)?),
                stored_responses: r.get(11)?,
                keys_in_flight: r.get(12)?,
            },
            last_audit: match audit_at {
                Some(finished_at_ms) => Some(LastAudit {
                    finished_at_ms,
                    verdict: r.get::<_, Option<String>>(14)?.unwrap_or_default(),
                    accounts_off_ledger: r.get::<_, Option<i64>>(15)?.unwrap_or(0),
                }),
                None => None,
            },
        })
    })
    .optional()?
    .ok_or_else(missing_row)
}

/// Replaces the totals row with `figures` and a fresh ledger uid: at
/// creation, when an old database is brought up to date, and at a wipe.
pub(crate) fn reset(conn: &Connection, f: &Figures) -> DbResult<()> {
    let (amount_hi, amount_lo) = split_i128(f.total_amount_minor)?;
    let (balance_hi, balance_lo) = split_i128(f.balance_sum_minor)?;
    conn.execute("DELETE FROM ledger_totals", ())?;
    conn.execute(
        "INSERT INTO ledger_totals (id, ledger_uid, payments, last_payment_id, amount_hi, amount_lo, keyed_payments,
             distinct_keys, duplicate_keys, accounts, balance_hi, balance_lo, stored_responses, keys_in_flight)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            rand::random::<i64>() & i64::MAX,
            f.payments,
            f.last_payment_id,
            amount_hi,
            amount_lo,
            f.keyed_payments,
            f.distinct_keys,
            f.duplicate_keys,
            f.accounts,
            balance_hi,
            balance_lo,
            f.stored_responses,
            f.keys_in_flight
        ],
    )?;
    Ok(())
}

/// Records an audit's result, if the ledger is still the one audited.
pub(crate) fn record_audit(conn: &Connection, ledger_uid: i64, audit: &LastAudit) -> DbResult<()> {
    conn.prepare_cached(
        "UPDATE ledger_totals SET audit_finished_at_ms = ?2, audit_verdict = ?3, audit_accounts_off_ledger = ?4
         WHERE id = 1 AND ledger_uid = ?1",
    )?
    .execute(params![
        ledger_uid,
        audit.finished_at_ms,
        audit.verdict,
        audit.accounts_off_ledger
    ])?;
    Ok(())
}

/// Splits an exact sum for storage; `hi` must fit an `i64` (it does for any
/// sum of fewer than 2^32 values of an `i64`).
fn split_i128(v: i128) -> DbResult<(i64, i64)> {
    let hi = i64::try_from(v >> 32).map_err(|_| DbError::Overflow(format!("{v} is beyond what the totals hold")))?;
    let lo = i64::try_from(v & i128::from(LO_MASK)).unwrap_or(0);
    Ok((hi, lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sums_are_exact_for_every_i64() {
        for v in [
            0,
            1,
            -1,
            4_294_967_295,
            4_294_967_296,
            i64::MAX,
            i64::MIN,
            -4_294_967_297,
        ] {
            let (hi, lo) = split(v);
            assert!((0..=LO_MASK).contains(&lo), "{v}");
            assert_eq!(join(hi, lo), i128::from(v), "{v}");
        }
        let big = 4 * i128::from(i64::MAX) + 5;
        let (hi, lo) = split_i128(big).unwrap();
        assert_eq!(join(hi, lo), big);
    }

    #[test]
    fn adding_past_i64_max_stays_exact_in_sql() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(TOTALS_SCHEMA).unwrap();
        reset(&conn, &Figures::default()).unwrap();
        let step = Delta {
            payments: 1,
            amount_minor: i64::MAX,
            ..Delta::default()
        };
        for id in 1..=5 {
            add(
                &conn,
                &Delta {
                    last_payment_id: id,
                    ..step
                },
            )
            .unwrap();
        }
        let m = read(&conn).unwrap();
        assert_eq!(m.figures.total_amount_minor, 5 * i128::from(i64::MAX));
        assert_eq!((m.figures.payments, m.figures.last_payment_id), (5, 5));
        add(
            &conn,
            &Delta {
                amount_minor: -3,
                ..Delta::default()
            },
        )
        .unwrap();
        assert_eq!(
            read(&conn).unwrap().figures.total_amount_minor,
            5 * i128::from(i64::MAX) - 3
        );
    }

    #[test]
    fn a_missing_row_is_an_error_not_zero() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(TOTALS_SCHEMA).unwrap();
        assert!(matches!(read(&conn), Err(DbError::Corrupt(_))));
        let d = Delta {
            payments: 1,
            ..Delta::default()
        };
        assert!(matches!(add(&conn, &d), Err(DbError::Corrupt(_))));
    }
}
