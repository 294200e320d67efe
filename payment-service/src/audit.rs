//! The full audit: every figure of the ledger recomputed from the payments
//! themselves, next to the figures the service maintains (`/stats`).
//!
//! `/stats` reads one maintained row (O(1)); the audit reads everything
//! (O(n)), so it is built to run beside live traffic:
//! - bounded memory: payments are read in id chunks of [`AUDIT_CHUNK_ROWS`],
//!   keys are counted by walking the key index in chunks (never a set of all
//!   keys); only the net of each account is held, up to [`AUDIT_ACCOUNTS_MAX`];
//! - no long snapshot: each chunk is its own short read transaction, so the
//!   WAL can be checkpointed meanwhile. Payment rows never change, so chunks
//!   read in different snapshots add up, as long as they stop at a last id
//!   fixed at the start. Rows added during the audit, the balances and the
//!   maintained figures are read together in one final short snapshot;
//! - a DELETE of the ledger during the audit (a new `ledger_uid`) makes it
//!   inconclusive rather than wrong.
//!
//! The same pass, on the writer's connection inside one transaction, computes
//! the figures once when a database of an older version is brought up to date.

use std::collections::HashMap;
use std::time::Instant;

use crate::db::{Connection, Dialect, OptionalExtension, params};
use eo_core::wire::{AuditReport, AuditVerdict, Invariants};

use crate::db_error::DbResult;
use crate::totals::{self, Figures, Maintained};

/// Rows (payments, or keys) per short read transaction: a few milliseconds
/// of reading, so no snapshot lives long enough to hold the WAL back.
pub(crate) const AUDIT_CHUNK_ROWS: i64 = 10_000;
/// Accounts whose net the audit holds in memory (about 100 bytes each);
/// beyond it balances are not checked and the verdict is inconclusive.
pub(crate) const AUDIT_ACCOUNTS_MAX: usize = 1_000_000;
/// Payments that arrived during the audit, read in its final snapshot;
/// beyond it the ledger grew faster than the audit can follow.
pub(crate) const AUDIT_TAIL_ROWS_MAX: i64 = 1_000_000;

/// Where the audit reads: each call one short read transaction of its own.
pub(crate) trait Snapshots {
    fn snapshot<T>(&mut self, read: impl FnOnce(&Connection) -> DbResult<T>) -> DbResult<T>;
}

/// One connection, a transaction per call (the `audit` subcommand).
impl Snapshots for Connection {
    fn snapshot<T>(&mut self, read: impl FnOnce(&Connection) -> DbResult<T>) -> DbResult<T> {
        Connection::snapshot(self, read)
    }
}

/// Every call inside a transaction the caller holds (the migration).
pub(crate) struct Within<'a>(pub &'a Connection);

impl Snapshots for Within<'_> {
    fn snapshot<T>(&mut self, read: impl FnOnce(&Connection) -> DbResult<T>) -> DbResult<T> {
        read(self.0)
    }
}

/// How far the audit is: `read` of about `of` rows in `phase`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    pub phase: &'static str,
    pub read: i64,
    pub of: i64,
}

/// Whether to check each balance against the ledger (the audit) or only
/// recompute the figures (the migration, which needs no per-account state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Balances {
    Check,
    Skip,
}

/// An audit's result and the ledger it audited.
pub(crate) struct Audited {
    pub report: AuditReport,
    /// None for a database without maintained figures.
    pub ledger_uid: Option<i64>,
}

/// What the pass has added up so far.
#[derive(Default)]
struct Pass {
    figures: Figures,
    /// Each account's credits minus debits; None when not tracked.
    nets: Option<HashMap<String, i128>>,
    /// Set by the final snapshot when balances were checked.
    accounts_off_ledger: Option<i64>,
    /// Why there can be no verdict (the ledger deleted under the audit, ...).
    inconclusive: Vec<String>,
    rows_after_start: i64,
}

/// One chunk's result, or the news that the ledger is no longer the one
/// the audit started on.
enum Step<T> {
    Read(T),
    Deleted,
}

/// Runs `read` in its own snapshot if the ledger is still `uid`.
fn chunk<T>(
    db: &mut impl Snapshots,
    uid: Option<i64>,
    read: impl FnOnce(&Connection) -> DbResult<T>,
) -> DbResult<Step<T>> {
    db.snapshot(|c| match same_ledger(c, uid)? {
        true => read(c).map(Step::Read),
        false => Ok(Step::Deleted),
    })
}

/// Recomputes the ledger in chunks, reports `progress` after each, and
/// compares with the maintained figures in a final snapshot.
pub(crate) fn run(
    db: &mut impl Snapshots,
    balances: Balances,
    progress: &mut dyn FnMut(Progress),
) -> DbResult<Audited> {
    let started = Instant::now();
    let (ledger_uid, last_id) = db.snapshot(|c| Ok((ledger_uid(c)?, last_id(c)?)))?;
    let mut pass = Pass {
        nets: (balances == Balances::Check).then(HashMap::new),
        ..Pass::default()
    };
    read_all_payments(db, ledger_uid, last_id, &mut pass, progress)?;
    if pass.inconclusive.is_empty() {
        count_all_keys(db, ledger_uid, last_id, &mut pass, progress)?;
    }
    let payments_read = pass.figures.payments;
    let mut maintained = None;
    if pass.inconclusive.is_empty() {
        match chunk(db, ledger_uid, |c| finish(c, last_id, &mut pass))? {
            Step::Read(m) => maintained = m.filter(|_| ledger_uid.is_some()),
            Step::Deleted => pass.mark_deleted(),
        }
    }
    let report = judge(pass, maintained, (payments_read, last_id), started);
    Ok(Audited { report, ledger_uid })
}

/// Phase one: the payments up to `last_id`, a chunk per snapshot.
fn read_all_payments(
    db: &mut impl Snapshots,
    uid: Option<i64>,
    last_id: i64,
    pass: &mut Pass,
    progress: &mut dyn FnMut(Progress),
) -> DbResult<()> {
    let mut after_id = 0;
    while after_id < last_id && pass.inconclusive.is_empty() {
        match chunk(db, uid, |c| read_payments(c, after_id, last_id, pass))? {
            Step::Read(Some(last_read)) => after_id = last_read,
            Step::Read(None) => break,
            Step::Deleted => pass.mark_deleted(),
        }
        progress(Progress {
            phase: "payments",
            read: pass.figures.payments,
            of: last_id,
        });
    }
    Ok(())
}

/// Phase two: the keys of the payments up to `last_id`, in key order.
fn count_all_keys(
    db: &mut impl Snapshots,
    uid: Option<i64>,
    last_id: i64,
    pass: &mut Pass,
    progress: &mut dyn FnMut(Progress),
) -> DbResult<()> {
    let mut after_key = String::new();
    while pass.inconclusive.is_empty() {
        match chunk(db, uid, |c| read_keys(c, &after_key, last_id, &mut pass.figures))? {
            Step::Read(Some(last_key)) => after_key = last_key,
            Step::Read(None) => break,
            Step::Deleted => pass.mark_deleted(),
        }
        progress(Progress {
            phase: "keys",
            read: pass.figures.distinct_keys,
            of: pass.figures.keyed_payments,
        });
    }
    Ok(())
}

impl Pass {
    fn mark_deleted(&mut self) {
        self.inconclusive
            .push("the ledger was deleted (DELETE /payments) while the audit ran; run it again".into());
    }

    /// Adds one payment row to the figures and the account nets.
    fn add(&mut self, id: i64, src: String, dest: String, amount_minor: i64, keyed: bool) {
        let f = &mut self.figures;
        f.payments += 1;
        f.last_payment_id = f.last_payment_id.max(id);
        f.total_amount_minor += i128::from(amount_minor);
        f.keyed_payments += i64::from(keyed);
        let Some(nets) = self.nets.as_mut() else { return };
        for (account, delta) in [(dest, i128::from(amount_minor)), (src, -i128::from(amount_minor))] {
            match nets.get_mut(&account) {
                Some(net) => *net += delta,
                None => drop(nets.insert(account, delta)),
            }
        }
        if nets.len() > AUDIT_ACCOUNTS_MAX {
            self.nets = None;
            self.inconclusive.push(format!(
                "more than {AUDIT_ACCOUNTS_MAX} accounts: balances were not checked against the ledger"
            ));
        }
    }
}

/// The maintained ledger's uid, or None when the database has no totals (an
/// older version, read by the `audit` subcommand).
fn ledger_uid(conn: &Connection) -> DbResult<Option<i64>> {
    let has_totals_sql = match conn.dialect() {
        Dialect::Sqlite => {
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'ledger_totals')"
        }
        Dialect::Postgres => "SELECT to_regclass('ledger_totals') IS NOT NULL",
    };
    let has_totals: bool = conn.query_row(has_totals_sql, (), |r| r.get(0))?;
    if !has_totals {
        return Ok(None);
    }
    conn.query_row("SELECT ledger_uid FROM ledger_totals WHERE id = 1", (), |r| r.get(0))
        .optional()
}

fn last_id(conn: &Connection) -> DbResult<i64> {
    Ok(conn.query_row("SELECT COALESCE(MAX(id), 0) FROM payments", (), |r| r.get(0))?)
}

/// False when the ledger was replaced (deleted) since the audit started.
fn same_ledger(conn: &Connection, uid: Option<i64>) -> DbResult<bool> {
    Ok(uid.is_none() || ledger_uid(conn)? == uid)
}

/// Reads up to a chunk of payments with `after < id <= upto`. Returns the
/// last id read, or None when there were none.
fn read_payments(conn: &Connection, after: i64, upto: i64, pass: &mut Pass) -> DbResult<Option<i64>> {
    let mut statement = conn.prepare_cached(
        "SELECT id, src, dest, amount_minor, idem_key IS NOT NULL FROM payments
         WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
    )?;
    let mut last = None;
    statement.query_map(params![after, upto, AUDIT_CHUNK_ROWS], |r| {
        let id: i64 = r.get(0)?;
        pass.add(id, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        last = Some(id);
        Ok(())
    })?;
    Ok(last)
}

/// Counts a chunk of keys (of payments with `id <= upto`) in key order,
/// walking the key index. Returns the last key counted, or None at the end.
fn read_keys(conn: &Connection, after: &str, upto: i64, figures: &mut Figures) -> DbResult<Option<String>> {
    let mut statement = conn.prepare_cached(KEY_CHUNK_SQL)?;
    let mut last = None;
    statement.query_map(params![after, upto, AUDIT_CHUNK_ROWS], |r| {
        let payments: i64 = r.get(1)?;
        figures.distinct_keys += 1;
        figures.duplicate_keys += i64::from(payments > 1);
        last = Some(r.get(0)?);
        Ok(())
    })?;
    Ok(last)
}

/// Keys in index order after `?1` (keys are never empty, so `''` starts at
/// the first), each with its number of payments up to id `?2`.
const KEY_CHUNK_SQL: &str = "SELECT idem_key, count(*) FROM payments INDEXED BY payments_by_idem_key
     WHERE idem_key > ?1 AND id <= ?2 GROUP BY idem_key ORDER BY idem_key LIMIT ?3";

/// The final snapshot: rows added since the start, balances, keys and the
/// maintained figures (if the database has them), all as of one moment.
fn finish(conn: &Connection, last_id: i64, pass: &mut Pass) -> DbResult<Option<Maintained>> {
    read_tail(conn, last_id, pass)?;
    let f = &mut pass.figures;
    (f.stored_responses, f.keys_in_flight) = conn.query_row(
        "SELECT (SELECT count(*) FROM idempotency_keys INDEXED BY idempotency_keys_by_completion WHERE state = 'completed'),
                (SELECT count(*) FROM idempotency_keys INDEXED BY idempotency_keys_in_flight WHERE state = 'in_progress')",
        (),
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    check_accounts(conn, pass)?;
    match ledger_uid(conn)? {
        Some(_) => Ok(Some(totals::read(conn)?)),
        None => Ok(None),
    }
}

/// Adds the payments after `last_id` and fixes the key counts for them: a
/// key is new if no payment up to `last_id` had it, a duplicate if it now has
/// two or more and had fewer before.
fn read_tail(conn: &Connection, last_id: i64, pass: &mut Pass) -> DbResult<()> {
    let mut tail_keys: HashMap<String, i64> = HashMap::new();
    let mut statement = conn.prepare_cached(
        "SELECT id, src, dest, amount_minor, idem_key FROM payments WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    statement.query_map(params![last_id, AUDIT_TAIL_ROWS_MAX + 1], |r| {
        let key: Option<String> = r.get(4)?;
        pass.add(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, key.is_some());
        pass.rows_after_start += 1;
        if let Some(key) = key {
            *tail_keys.entry(key).or_default() += 1;
        }
        Ok(())
    })?;
    if pass.rows_after_start > AUDIT_TAIL_ROWS_MAX {
        pass.inconclusive.push(format!(
            "more than {AUDIT_TAIL_ROWS_MAX} payments arrived while the audit ran; run it at a quieter time"
        ));
    }
    let mut before = conn.prepare_cached(
        "SELECT count(*) FROM (SELECT 1 FROM payments WHERE idem_key = ?1 AND id <= ?2 LIMIT 2) AS earlier",
    )?;
    for (key, added) in tail_keys {
        let had: i64 = before.query_row(params![key, last_id], |r| r.get(0))?;
        pass.figures.distinct_keys += i64::from(had == 0);
        pass.figures.duplicate_keys += i64::from(had < 2 && had + added >= 2);
    }
    Ok(())
}

/// Reads every balance once: their count and sum, and (when checked) how
/// many differ from the account's net in the ledger. An account missing from
/// `accounts` has balance 0.
fn check_accounts(conn: &Connection, pass: &mut Pass) -> DbResult<()> {
    let mut statement = conn.prepare_cached("SELECT name, balance_minor FROM accounts")?;
    let mut off_ledger = 0;
    statement.query_map((), |r| {
        let name: String = r.get(0)?;
        let balance = i128::from(r.get::<_, i64>(1)?);
        pass.figures.accounts += 1;
        pass.figures.balance_sum_minor += balance;
        if let Some(nets) = pass.nets.as_mut() {
            off_ledger += i64::from(nets.remove(&name).unwrap_or(0) != balance);
        }
        Ok(())
    })?;
    if let Some(nets) = pass.nets.take() {
        off_ledger += nets.values().filter(|net| **net != 0).count() as i64;
        pass.accounts_off_ledger = Some(off_ledger);
    }
    Ok(())
}

/// The verdict: inconclusive if the audit could not see everything, else
/// agree only if every figure and every balance matches.
fn judge(
    pass: Pass,
    maintained: Option<Maintained>,
    (payments_read, last_id): (i64, i64),
    started: Instant,
) -> AuditReport {
    let recomputed = pass.figures;
    let accounts_off_ledger = pass.accounts_off_ledger.filter(|_| pass.inconclusive.is_empty());
    let mut findings = pass.inconclusive;
    let maintained = maintained.map(|m| m.figures);
    if findings.is_empty() && maintained.is_none() {
        findings.push("the database holds no maintained figures (written by an older version): start the service once on it to bring it up to date".into());
    }
    let verdict = if !findings.is_empty() {
        AuditVerdict::Inconclusive
    } else {
        findings.extend(differences(&recomputed, maintained.as_ref()));
        if let Some(off) = accounts_off_ledger.filter(|n| *n > 0) {
            findings.push(format!(
                "{off} accounts have a balance that is not their credits minus debits"
            ));
        }
        if findings.is_empty() {
            AuditVerdict::Agree
        } else {
            AuditVerdict::Disagree
        }
    };
    AuditReport {
        verdict,
        findings,
        invariants: Invariants {
            one_payment_per_key: recomputed.duplicate_keys == 0,
            balances_conserved: recomputed.balance_sum_minor == 0,
            balances_match_ledger: accounts_off_ledger == Some(0),
        },
        recomputed,
        maintained,
        accounts_off_ledger,
        payments_read,
        last_id_at_start: last_id,
        rows_after_start: pass.rows_after_start,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

/// Each maintained figure that is not its recomputation, named.
fn differences(recomputed: &Figures, maintained: Option<&Figures>) -> Vec<String> {
    let Some(m) = maintained else { return Vec::new() };
    let r = recomputed;
    let pairs: [(&str, i128, i128); 10] = [
        ("payments", m.payments.into(), r.payments.into()),
        ("last_payment_id", m.last_payment_id.into(), r.last_payment_id.into()),
        ("total_amount_minor", m.total_amount_minor, r.total_amount_minor),
        ("keyed_payments", m.keyed_payments.into(), r.keyed_payments.into()),
        ("distinct_keys", m.distinct_keys.into(), r.distinct_keys.into()),
        ("duplicate_keys", m.duplicate_keys.into(), r.duplicate_keys.into()),
        ("accounts", m.accounts.into(), r.accounts.into()),
        ("balance_sum_minor", m.balance_sum_minor, r.balance_sum_minor),
        ("stored_responses", m.stored_responses.into(), r.stored_responses.into()),
        ("keys_in_flight", m.keys_in_flight.into(), r.keys_in_flight.into()),
    ];
    pairs
        .iter()
        .filter(|(_, m, r)| m != r)
        .map(|(name, m, r)| format!("{name}: maintained {m}, recomputed {r}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;
    use crate::payment::PaymentRequest;
    use crate::{schema, store};

    /// The audit's tables without the amount CHECK, so rows can hold the
    /// largest amounts an `i64` allows.
    fn unchecked_db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = Connection::open(dir.path().join("t.db")).expect("open");
        conn.execute_batch(
            "CREATE TABLE payments (id INTEGER PRIMARY KEY, src TEXT, dest TEXT, amount_minor INTEGER, idem_key TEXT);
             CREATE INDEX payments_by_idem_key ON payments(idem_key) WHERE idem_key IS NOT NULL;
             CREATE TABLE accounts (name TEXT PRIMARY KEY, balance_minor INTEGER);
             CREATE TABLE idempotency_keys (idem_key TEXT PRIMARY KEY, state TEXT, completed_at_ms INTEGER);
             CREATE INDEX idempotency_keys_by_completion ON idempotency_keys(completed_at_ms) WHERE state = 'completed';
             CREATE INDEX idempotency_keys_in_flight ON idempotency_keys(idem_key) WHERE state = 'in_progress';",
        )
        .expect("schema");
        (dir, conn)
    }

    fn audit(conn: &mut Connection) -> AuditReport {
        run(conn, Balances::Check, &mut |_| {}).expect("audit").report
    }

    #[test]
    fn sums_past_i64_max_exactly() {
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
        let report = audit(&mut conn);
        let r = report.recomputed;
        assert_eq!(r.total_amount_minor, 4 * i128::from(i64::MAX) + 5);
        assert_eq!((r.payments, r.last_payment_id, r.keyed_payments), (5, 1001, 4));
        assert_eq!((r.distinct_keys, r.duplicate_keys), (3, 1));
        assert_eq!(
            (r.accounts, r.balance_sum_minor, report.accounts_off_ledger),
            (2, 0, Some(0))
        );
        // No maintained figures in this database: no verdict, but the figures.
        assert_eq!(report.verdict, AuditVerdict::Inconclusive);
        assert!(!report.invariants.one_payment_per_key && report.invariants.balances_match_ledger);
    }

    #[test]
    fn finds_balances_that_disagree_with_the_ledger() {
        let (_dir, mut conn) = unchecked_db();
        conn.execute_batch(
            "INSERT INTO payments (id, src, dest, amount_minor) VALUES (1, 'a', 'b', 100), (2, 'c', 'd', 7);
             INSERT INTO accounts VALUES ('a', -100), ('b', 99), ('x', 0);",
        )
        .expect("rows");
        let report = audit(&mut conn);
        // b is wrong; c and d are missing; x at 0 with no payments is fine.
        assert_eq!(report.accounts_off_ledger, Some(3));
        assert_eq!(
            (
                report.recomputed.balance_sum_minor,
                report.recomputed.total_amount_minor
            ),
            (-1, 107)
        );
        assert!(!report.invariants.balances_match_ledger && !report.invariants.balances_conserved);
    }

    #[test]
    fn the_key_walk_reads_the_key_index_in_order_without_sorting() {
        let (_dir, conn) = unchecked_db();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {KEY_CHUNK_SQL}"))
            .unwrap()
            .query_map(params!["", 10, 10], |r| r.get::<_, String>(3))
            .unwrap();
        let text = plan.join("\n");
        assert!(text.contains("INDEX payments_by_idem_key (idem_key>?)"), "{text}");
        assert!(!text.contains("TEMP B-TREE"), "{text}");
    }

    /// A service database and a way to pay into it, as the writer does.
    fn service_db() -> (tempfile::TempDir, std::path::PathBuf, Connection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.db");
        let writer = schema::open_writer(&path, Synchronous::Normal).expect("open");
        (dir, path, writer)
    }

    fn pay(writer: &Connection, i: i64, key: Option<&str>) {
        let request = PaymentRequest::new(format!("acct-{}", i % 7), format!("acct-{}", i % 7 + 1), 1 + i % 1000);
        writer.execute_batch("BEGIN").unwrap();
        let tx = writer;
        let mut figures = totals::Delta::default();
        match key {
            Some(key) if i % 2 == 0 => {
                drop(store::pay_keyed(tx, &request, key, (store::Book::at(0), 1000), &mut figures).unwrap())
            }
            _ => drop(store::insert_unchecked(tx, &request, key, store::Book::at(0), &mut figures).unwrap()),
        }
        totals::add(tx, &figures).unwrap();
        writer.execute_batch("COMMIT").unwrap();
    }

    /// Reads through `reader`, but lets `between` write before the n-th read:
    /// what live traffic does to an audit between its chunks.
    struct Busy<'a> {
        reader: Connection,
        writer: &'a Connection,
        reads: usize,
        between: &'a dyn Fn(&Connection, usize),
    }

    impl Snapshots for Busy<'_> {
        fn snapshot<T>(&mut self, read: impl FnOnce(&Connection) -> DbResult<T>) -> DbResult<T> {
            self.reads += 1;
            (self.between)(self.writer, self.reads);
            self.reader.snapshot(read)
        }
    }

    #[test]
    fn payments_that_arrive_during_the_audit_are_counted_in_its_final_snapshot() {
        let (_dir, path, writer) = service_db();
        let chunk = AUDIT_CHUNK_ROWS;
        // More than two chunks, keys repeated across chunk boundaries.
        for i in 0..(2 * chunk + 500) {
            pay(
                &writer,
                i,
                (i % 3 != 0).then(|| format!("k{}", i % (chunk + 7))).as_deref(),
            );
        }
        let between = |w: &Connection, n: usize| {
            // Each read: new keys, keys first seen before the audit, duplicates.
            for j in 0..5 {
                let i = 100_000 + (n as i64) * 10 + j;
                let key = match j {
                    0 => format!("new-{n}"),
                    1 => "k1".to_owned(),
                    _ => format!("late-{}", j % 2),
                };
                pay(w, i, Some(&key));
            }
        };
        let mut db = Busy {
            reader: schema::open_reader(&path).unwrap(),
            writer: &writer,
            reads: 0,
            between: &between,
        };
        let report = run(&mut db, Balances::Check, &mut |_| {}).unwrap().report;
        assert_eq!(report.verdict, AuditVerdict::Agree, "{report:#?}");
        assert!(
            report.rows_after_start > 0 && report.payments_read > chunk,
            "{report:?}"
        );
        assert!(report.recomputed.duplicate_keys > 0, "{report:?}");
        assert_eq!(report.maintained, Some(report.recomputed));
    }

    #[test]
    fn a_ledger_deleted_during_the_audit_gives_no_verdict() {
        let (_dir, path, writer) = service_db();
        for i in 0..(AUDIT_CHUNK_ROWS + 10) {
            pay(&writer, i, Some(&format!("k{i}")));
        }
        let between = |w: &Connection, n: usize| {
            if n == 2 {
                store::wipe(w).unwrap();
            }
        };
        let mut db = Busy {
            reader: schema::open_reader(&path).unwrap(),
            writer: &writer,
            reads: 0,
            between: &between,
        };
        let report = run(&mut db, Balances::Check, &mut |_| {}).unwrap().report;
        assert_eq!(report.verdict, AuditVerdict::Inconclusive, "{report:?}");
        assert!(report.findings[0].contains("deleted"), "{report:?}");
        assert!(!report.invariants.balances_match_ledger);
    }
}
