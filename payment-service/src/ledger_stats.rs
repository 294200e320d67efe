//! The money figures of `/stats`, computed from the database at every call,
//! with sums that cannot overflow.
//!
//! A ledger may hold more money than an `i64` counts: 100 million payments of
//! the largest amount (1,000,000,000.00) are 1e19 minor units. SQLite's `SUM()`
//! fails on integer overflow and `TOTAL()` is a float, so neither can add up
//! the whole table. Instead SQLite sums ranges of ids small enough that each
//! partial sum fits an `i64`, and Rust adds the partial sums in `i128`. A range
//! that overflows anyway (a database written by other rules) is split in two
//! until it fits: a single row always does.

use std::collections::HashMap;

use rusqlite::{Connection, params};

use crate::db_error::{DbError, DbResult};

/// Ids per partial sum. A payment moves at most 1e11 minor units (the
/// schema's CHECK), so 2^26 ids sum to at most 6.7e18 < `i64::MAX` (9.2e18).
const SUM_RANGE_IDS: i64 = 1 << 26;

/// Everything `/stats` says about the database, read in one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LedgerStats {
    pub payments: i64,
    /// The highest payment id (0 when empty): a client's reconciliation
    /// window starts after it.
    pub last_payment_id: i64,
    pub total_amount_minor: i128,
    pub keyed_payments: i64,
    pub keyless_payments: i64,
    pub distinct_keys: i64,
    pub duplicate_keys: i64,
    pub accounts: i64,
    pub balance_sum_minor: i128,
    /// Accounts whose balance differs from credits minus debits in the ledger.
    pub accounts_off_ledger: i64,
    pub stored_responses: i64,
    pub keys_in_flight: i64,
}

pub(crate) fn ledger_stats(conn: &mut Connection) -> DbResult<LedgerStats> {
    ledger_stats_in_ranges(conn, SUM_RANGE_IDS)
}

/// [`ledger_stats`] with partial sums over `range_ids` ids (tests use small
/// ranges to exercise the splitting on real rows).
fn ledger_stats_in_ranges(conn: &mut Connection, range_ids: i64) -> DbResult<LedgerStats> {
    let tx = conn.transaction()?;
    let mut s = LedgerStats::default();
    (s.payments, s.keyed_payments, s.distinct_keys, s.last_payment_id) = tx.query_row(
        "SELECT COUNT(*), COUNT(idem_key), COUNT(DISTINCT idem_key), COALESCE(MAX(id), 0) FROM payments",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    s.keyless_payments = s.payments - s.keyed_payments;
    s.duplicate_keys = tx.query_row(
        "SELECT COUNT(*) FROM (SELECT 1 FROM payments WHERE idem_key IS NOT NULL GROUP BY idem_key HAVING COUNT(*) > 1)",
        [],
        |r| r.get(0),
    )?;
    let ledger = ledger_balances(&tx, range_ids)?;
    s.total_amount_minor = ledger.total_minor;
    let accounts = account_balances(&tx)?;
    s.accounts = i64::try_from(accounts.len()).unwrap_or(i64::MAX);
    s.balance_sum_minor = accounts.values().map(|b| i128::from(*b)).sum();
    s.accounts_off_ledger = off_ledger(&accounts, &ledger.by_account);
    (s.stored_responses, s.keys_in_flight) = tx.query_row(
        "SELECT COALESCE(SUM(state = 'completed'), 0), COALESCE(SUM(state = 'in_progress'), 0) FROM idempotency_keys",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    tx.finish()?;
    Ok(s)
}

/// What the payments table says: the money moved, and each account's balance
/// as credits minus debits.
#[derive(Default)]
struct LedgerSums {
    total_minor: i128,
    by_account: HashMap<String, i128>,
}

/// Walks the payments in id ranges (skipping empty stretches, so the number
/// of ranges is bounded by the number of rows) and adds up each in `i128`.
fn ledger_balances(conn: &Connection, range_ids: i64) -> DbResult<LedgerSums> {
    let mut sums = LedgerSums::default();
    let mut next = conn.prepare_cached("SELECT MIN(id) FROM payments WHERE id > ?1")?;
    let mut after = i64::MIN;
    while let Some(first) = next.query_row([after], |r| r.get::<_, Option<i64>>(0))? {
        let last = first.saturating_add(range_ids.max(1) - 1);
        add_range(conn, first, last, &mut sums)?;
        if last == i64::MAX {
            break;
        }
        after = last;
    }
    Ok(sums)
}

/// Adds the payments with ids in `first..=last`; a range whose partial sums
/// overflow an `i64` is split in two and each half added on its own.
fn add_range(conn: &Connection, first: i64, last: i64, sums: &mut LedgerSums) -> DbResult<()> {
    match range_sums(conn, first, last) {
        Ok((total, by_account)) => {
            sums.total_minor += i128::from(total);
            for (account, delta) in by_account {
                *sums.by_account.entry(account).or_default() += i128::from(delta);
            }
            Ok(())
        }
        Err(DbError::Overflow(_)) if first < last => {
            let middle = first + (last - first) / 2;
            add_range(conn, first, middle, sums)?;
            add_range(conn, middle + 1, last, sums)
        }
        Err(e) => Err(e),
    }
}

/// One range's sums, each computed by SQLite in `i64` (an overflow is an
/// error, never a float). Collected whole before anything is added, so a
/// range that fails halfway adds nothing.
fn range_sums(conn: &Connection, first: i64, last: i64) -> DbResult<(i64, Vec<(String, i64)>)> {
    let total: i64 = conn
        .prepare_cached("SELECT COALESCE(SUM(amount_minor), 0) FROM payments WHERE id BETWEEN ?1 AND ?2")?
        .query_row(params![first, last], |r| r.get(0))?;
    let by_account = conn
        .prepare_cached(
            "SELECT name, SUM(delta) FROM (
                 SELECT dest AS name, amount_minor AS delta FROM payments WHERE id BETWEEN ?1 AND ?2
                 UNION ALL
                 SELECT src, -amount_minor FROM payments WHERE id BETWEEN ?1 AND ?2)
             GROUP BY name",
        )?
        .query_map(params![first, last], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok((total, by_account))
}

fn account_balances(conn: &Connection) -> DbResult<HashMap<String, i64>> {
    let balances = conn
        .prepare_cached("SELECT name, balance_minor FROM accounts")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(balances)
}

/// Accounts whose stored balance is not what the ledger says, counting
/// accounts that appear on one side only (a missing balance is 0).
fn off_ledger(accounts: &HashMap<String, i64>, ledger: &HashMap<String, i128>) -> i64 {
    let stored_wrong = accounts
        .iter()
        .filter(|(name, balance)| ledger.get(*name).copied().unwrap_or(0) != i128::from(**balance))
        .count();
    let missing = ledger
        .iter()
        .filter(|(name, sum)| **sum != 0 && !accounts.contains_key(*name))
        .count();
    i64::try_from(stored_wrong + missing).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The service's tables without the amount CHECK, so rows can hold the
    /// largest amounts an `i64` allows.
    fn unchecked_db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = Connection::open(dir.path().join("t.db")).expect("open");
        conn.execute_batch(
            "CREATE TABLE payments (id INTEGER PRIMARY KEY, src TEXT, dest TEXT, amount_minor INTEGER, idem_key TEXT);
             CREATE TABLE accounts (name TEXT PRIMARY KEY, balance_minor INTEGER);
             CREATE TABLE idempotency_keys (idem_key TEXT PRIMARY KEY, state TEXT);",
        )
        .expect("schema");
        (dir, conn)
    }

    #[test]
    fn sums_past_i64_max_exactly_whatever_the_range_size() {
        let (_dir, mut conn) = unchecked_db();
        // Money goes a -> b, back, and a little more: balances stay small, but
        // the total and b's credits are far beyond an i64.
        conn.execute_batch(&format!(
            "INSERT INTO payments (id, src, dest, amount_minor, idem_key) VALUES
                 (1, 'a', 'b', {max}, 'k1'), (2, 'b', 'a', {max}, 'k2'), (7, 'a', 'b', 5, NULL),
                 (1000, 'a', 'b', {max}, 'k3'), (1001, 'b', 'a', {max}, 'k3');
             INSERT INTO accounts VALUES ('a', -5), ('b', 5);",
            max = i64::MAX
        ))
        .expect("rows");
        // SQLite's own SUM cannot do it.
        let sql_sum = conn.query_row("SELECT SUM(amount_minor) FROM payments", [], |r| r.get::<_, i64>(0));
        assert!(matches!(sql_sum.map_err(DbError::from), Err(DbError::Overflow(_))));
        let expected_total = 4 * i128::from(i64::MAX) + 5;
        for range_ids in [1, 2, 3, 1000, SUM_RANGE_IDS, i64::MAX] {
            let s = ledger_stats_in_ranges(&mut conn, range_ids).expect("stats");
            assert_eq!(s.total_amount_minor, expected_total, "range {range_ids}");
            assert_eq!((s.payments, s.last_payment_id, s.keyless_payments), (5, 1001, 1));
            assert_eq!((s.distinct_keys, s.duplicate_keys), (3, 1));
            assert_eq!((s.accounts, s.balance_sum_minor, s.accounts_off_ledger), (2, 0, 0));
        }
    }

    #[test]
    fn finds_balances_that_disagree_with_the_ledger() {
        let (_dir, mut conn) = unchecked_db();
        conn.execute_batch(
            "INSERT INTO payments (id, src, dest, amount_minor) VALUES (1, 'a', 'b', 100), (2, 'c', 'd', 7);
             INSERT INTO accounts VALUES ('a', -100), ('b', 99), ('x', 0);",
        )
        .expect("rows");
        let s = ledger_stats_in_ranges(&mut conn, 1).expect("stats");
        // b is wrong; c and d are missing; x at 0 with no payments is fine.
        assert_eq!(
            (s.accounts_off_ledger, s.balance_sum_minor, s.total_amount_minor),
            (3, -1, 107)
        );
    }
}
