//! The ledger in SQLite: schema, connection settings, and every read and write
//! as a plain function over a connection. No HTTP and no threads here, so the
//! writer thread, the readers and the tests all share the same code, and time
//! comes in as an argument (`now_ms`), which keeps lease and retention logic
//! testable without waiting.
//!
//! Tables:
//! - `payments`: the ledger, one row per executed payment. `idem_key` is the
//!   key as sent (kept forever, also in modes that ignore it); `dedup_key` is
//!   set only under `--dedup unique` and is UNIQUE: the permanent last line of
//!   defence that catches a retry arriving after its stored response expired.
//! - `accounts`: balances, created on first use at 0, may go negative.
//! - `idempotency_keys`: one row per key under `--dedup unique`: in-flight
//!   lease or stored response. Completed rows are reaped after the retention.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::config::Synchronous;
use crate::db_error::{DbError, DbResult};
use crate::payment::{Payment, PaymentRequest};

/// How long a connection waits for a lock before giving up with SQLITE_BUSY.
/// Only readers and the single writer share the file, so waits are short.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Rows deleted per reaping pass, so one pass never holds the writer long.
pub const REAP_ROWS_MAX: usize = 10_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    id            INTEGER PRIMARY KEY,
    src           TEXT    NOT NULL,
    dest          TEXT    NOT NULL CHECK (dest <> src),
    amount_minor  INTEGER NOT NULL CHECK (typeof(amount_minor) = 'integer' AND amount_minor > 0 AND amount_minor <= 100000000000),
    idem_key      TEXT,
    dedup_key     TEXT UNIQUE,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS payments_by_idem_key ON payments(idem_key) WHERE idem_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS accounts (
    name          TEXT    PRIMARY KEY,
    -- SQLite turns an overflowing integer sum into a float: refuse that.
    balance_minor INTEGER NOT NULL CHECK (typeof(balance_minor) = 'integer')
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency_keys (
    idem_key        TEXT    PRIMARY KEY,
    fingerprint     TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('in_progress', 'completed')),
    lock_owner      INTEGER,
    locked_until_ms INTEGER,
    payment_id      INTEGER REFERENCES payments(id),
    response_status INTEGER,
    response_body   TEXT,
    created_at_ms   INTEGER NOT NULL,
    completed_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_completion ON idempotency_keys(completed_at_ms) WHERE state = 'completed';
";

/// Opens (creating if needed) the database for the single writer, with every
/// setting stated explicitly rather than left to defaults.
pub fn open_writer(path: &Path, synchronous: Synchronous) -> DbResult<Connection> {
    let conn = Connection::open(path)?;
    // First: every statement below may have to wait for a lock.
    conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(DbError::Io(format!(
            "journal_mode is {mode}, WAL is required (is the file on a network drive?)"
        )));
    }
    conn.pragma_update(None, "synchronous", synchronous.pragma())?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Opens a read-only connection; WAL lets it read a consistent snapshot while
/// the writer commits.
pub fn open_reader(path: &Path) -> DbResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
    Ok(conn)
}

/// Expires every lease held at startup. One service owns a database file, so
/// a key still in flight when the service starts belongs to a process that
/// died: its retry should take over at once, not wait out the lease.
pub fn expire_leases(conn: &Connection) -> DbResult<usize> {
    Ok(conn.execute(
        "UPDATE idempotency_keys SET locked_until_ms = 0 WHERE state = 'in_progress'",
        [],
    )?)
}

/// What happened to a keyed request inside the writer's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The payment was executed by this request; the body is its first answer.
    /// `takeover`: the key had been left in flight by a dead worker.
    Executed {
        payment: Payment,
        body: String,
        takeover: bool,
    },
    /// The key was seen before with the same request: its first answer again.
    /// `from_ledger` is true when the stored response had expired and the
    /// answer was rebuilt from the payment row (a late retry, still caught).
    Replayed {
        status: u16,
        body: String,
        payment_id: Option<i64>,
        from_ledger: bool,
    },
    /// The key names a different request; nothing was stored.
    Mismatch,
    /// The first request with this key still holds a valid lease.
    InFlight,
    /// The key is now leased to this request (`takeover`: from a dead worker).
    Claimed { takeover: bool },
    /// The lease of this request was taken over (or wiped) before it could
    /// complete; the new owner finishes the payment.
    LostLease,
    /// The request failed in a way that would repeat (see
    /// [`DbError::is_permanent`]); nothing was stored and its key was released.
    Refused(DbError),
}

/// The decision for a keyed request before anything is written.
enum Decision {
    Proceed { takeover: bool },
    Done(Outcome),
}

struct KeyRow {
    fingerprint: String,
    in_progress: bool,
    locked_until_ms: i64,
    payment_id: Option<i64>,
    response_status: Option<u16>,
    response_body: Option<String>,
    completed_at_ms: Option<i64>,
}

fn key_row(conn: &Connection, key: &str) -> rusqlite::Result<Option<KeyRow>> {
    conn.prepare_cached(
        "SELECT fingerprint, state, locked_until_ms, payment_id, response_status, response_body, completed_at_ms
         FROM idempotency_keys WHERE idem_key = ?1",
    )?
    .query_row([key], |r| {
        Ok(KeyRow {
            fingerprint: r.get(0)?,
            in_progress: r.get::<_, String>(1)? == "in_progress",
            locked_until_ms: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
            payment_id: r.get(3)?,
            response_status: r.get(4)?,
            response_body: r.get(5)?,
            completed_at_ms: r.get(6)?,
        })
    })
    .optional()
}

/// Looks at everything known about `key` and decides, without writing.
fn decide(
    conn: &Connection,
    request: &PaymentRequest,
    key: &str,
    now_ms: i64,
    retention_ms: i64,
) -> DbResult<Decision> {
    let mut takeover = false;
    if let Some(row) = key_row(conn, key)? {
        if row.fingerprint != request.fingerprint() {
            return Ok(Decision::Done(Outcome::Mismatch));
        }
        if row.in_progress {
            if row.locked_until_ms > now_ms {
                return Ok(Decision::Done(Outcome::InFlight));
            }
            takeover = true;
        } else {
            let fresh = row
                .completed_at_ms
                .is_some_and(|at| at.saturating_add(retention_ms) > now_ms);
            if let (true, Some(status), Some(body)) = (fresh, row.response_status, row.response_body) {
                return Ok(Decision::Done(Outcome::Replayed {
                    status,
                    body,
                    payment_id: row.payment_id,
                    from_ledger: false,
                }));
            }
        }
    }
    // No live stored response: the ledger itself is the authority. The key
    // stays on the payment forever, so a late retry is still recognised.
    if let Some(payment) = first_payment_with_key(conn, key)? {
        return Ok(Decision::Done(answer_from_ledger(&payment, request)));
    }
    Ok(Decision::Proceed { takeover })
}

/// The answer to a request whose key already has `payment` in the ledger: the
/// first answer rebuilt from the row (byte-identical, rendering is
/// deterministic), or a mismatch if the request differs.
pub fn answer_from_ledger(payment: &Payment, request: &PaymentRequest) -> Outcome {
    if payment.matches(request) {
        Outcome::Replayed {
            status: 201,
            body: payment.to_json(),
            payment_id: Some(payment.id),
            from_ledger: true,
        }
    } else {
        Outcome::Mismatch
    }
}

/// Claims and executes in one step: the path for `--dedup unique` without a
/// processing delay. SQLite's single writer serialises duplicates, so they
/// replay and never see an in-flight key.
pub fn pay_keyed(
    conn: &Connection,
    request: &PaymentRequest,
    key: &str,
    now_ms: i64,
    retention_ms: i64,
) -> DbResult<Outcome> {
    match decide(conn, request, key, now_ms, retention_ms)? {
        Decision::Done(outcome) => Ok(outcome),
        Decision::Proceed { takeover } => execute_keyed(conn, request, key, now_ms, takeover),
    }
}

/// Phase one of the two-phase path: lease the key to `token` until `now + lease`.
pub fn claim(
    conn: &Connection,
    request: &PaymentRequest,
    key: &str,
    token: i64,
    now_ms: i64,
    lease_ms: i64,
    retention_ms: i64,
) -> DbResult<Outcome> {
    match decide(conn, request, key, now_ms, retention_ms)? {
        Decision::Done(outcome) => Ok(outcome),
        Decision::Proceed { takeover } => {
            conn.prepare_cached(
                "INSERT INTO idempotency_keys (idem_key, fingerprint, state, lock_owner, locked_until_ms, created_at_ms)
                 VALUES (?1, ?2, 'in_progress', ?3, ?4, ?5)
                 ON CONFLICT (idem_key) DO UPDATE SET
                     fingerprint = excluded.fingerprint, state = 'in_progress', lock_owner = excluded.lock_owner,
                     locked_until_ms = excluded.locked_until_ms, payment_id = NULL, response_status = NULL,
                     response_body = NULL, completed_at_ms = NULL",
            )?
            .execute(params![key, request.fingerprint(), token, now_ms.saturating_add(lease_ms), now_ms])?;
            Ok(Outcome::Claimed { takeover })
        }
    }
}

/// Phase two: execute, but only if `token` still owns the lease (fencing: a
/// worker whose lease was taken over must not pay a second time).
pub fn complete(conn: &Connection, request: &PaymentRequest, key: &str, token: i64, now_ms: i64) -> DbResult<Outcome> {
    let owner: Option<Option<i64>> = conn
        .prepare_cached("SELECT lock_owner FROM idempotency_keys WHERE idem_key = ?1 AND state = 'in_progress'")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    if owner != Some(Some(token)) {
        return Ok(Outcome::LostLease);
    }
    // A refusal that would repeat must also free the key, or every retry
    // would meet "in flight" until the lease ran out: undo the attempt only.
    conn.execute_batch("SAVEPOINT complete_payment")?;
    match execute_keyed(conn, request, key, now_ms, false) {
        Ok(outcome) => {
            conn.execute_batch("RELEASE complete_payment")?;
            Ok(outcome)
        }
        Err(e) if e.is_permanent() => {
            conn.execute_batch("ROLLBACK TO complete_payment; RELEASE complete_payment")?;
            conn.prepare_cached("DELETE FROM idempotency_keys WHERE idem_key = ?1 AND lock_owner = ?2")?
                .execute(params![key, token])?;
            Ok(Outcome::Refused(e))
        }
        Err(e) => Err(e),
    }
}

/// Inserts the payment with its permanent unique key, moves the money and
/// stores the answer: all in the caller's transaction, so all or nothing.
fn execute_keyed(
    conn: &Connection,
    request: &PaymentRequest,
    key: &str,
    now_ms: i64,
    takeover: bool,
) -> DbResult<Outcome> {
    let payment = insert_payment(conn, request, Some(key), true, now_ms)?;
    let body = payment.to_json();
    conn.prepare_cached(
        "INSERT INTO idempotency_keys
             (idem_key, fingerprint, state, lock_owner, locked_until_ms, payment_id, response_status, response_body, created_at_ms, completed_at_ms)
         VALUES (?1, ?2, 'completed', NULL, NULL, ?3, 201, ?4, ?5, ?5)
         ON CONFLICT (idem_key) DO UPDATE SET
             fingerprint = excluded.fingerprint, state = 'completed', lock_owner = NULL, locked_until_ms = NULL,
             payment_id = excluded.payment_id, response_status = 201, response_body = excluded.response_body,
             completed_at_ms = excluded.completed_at_ms",
    )?
    .execute(params![key, request.fingerprint(), payment.id, body, now_ms])?;
    Ok(Outcome::Executed {
        payment,
        body,
        takeover,
    })
}

/// Inserts a payment without any key check: keyless requests, `--dedup off`,
/// and the insert step of `check-then-insert`.
pub fn insert_unchecked(
    conn: &Connection,
    request: &PaymentRequest,
    key: Option<&str>,
    now_ms: i64,
) -> DbResult<Payment> {
    insert_payment(conn, request, key, false, now_ms)
}

pub(crate) fn insert_payment(
    conn: &Connection,
    request: &PaymentRequest,
    key: Option<&str>,
    unique: bool,
    now_ms: i64,
) -> DbResult<Payment> {
    let dedup_key = if unique { key } else { None };
    // Balances first: a payment that cannot be booked writes nothing.
    let src_balance = balance(conn, &request.src)?
        .checked_sub(request.amount_minor)
        .ok_or_else(|| DbError::BalanceOutOfRange {
            account: request.src.clone(),
        })?;
    let dest_balance = balance(conn, &request.dest)?
        .checked_add(request.amount_minor)
        .ok_or_else(|| DbError::BalanceOutOfRange {
            account: request.dest.clone(),
        })?;
    let id: i64 = conn
        .prepare_cached(
            "INSERT INTO payments (src, dest, amount_minor, idem_key, dedup_key, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
        )?
        .query_row(
            params![request.src, request.dest, request.amount_minor, key, dedup_key, now_ms],
            |r| r.get(0),
        )?;
    set_balance(conn, &request.src, src_balance)?;
    set_balance(conn, &request.dest, dest_balance)?;
    Ok(Payment {
        id,
        src: request.src.clone(),
        dest: request.dest.clone(),
        amount_minor: request.amount_minor,
        idempotency_key: key.map(str::to_owned),
        created_at_ms: now_ms,
    })
}

/// An account's balance; 0 for an account not yet used. Only the writer
/// calls it, inside its transaction, so nothing changes between this read
/// and the write that follows.
fn balance(conn: &Connection, account: &str) -> DbResult<i64> {
    let found = conn
        .prepare_cached("SELECT balance_minor FROM accounts WHERE name = ?1")?
        .query_row([account], |r| r.get(0))
        .optional()?;
    Ok(found.unwrap_or(0))
}

/// Stores a balance computed with checked arithmetic in Rust, so SQLite never
/// does the sum (it would turn an overflow into a float).
fn set_balance(conn: &Connection, account: &str, balance_minor: i64) -> DbResult<()> {
    conn.prepare_cached(
        "INSERT INTO accounts (name, balance_minor) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET balance_minor = excluded.balance_minor",
    )?
    .execute(params![account, balance_minor])?;
    Ok(())
}

fn payment_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Payment> {
    Ok(Payment {
        id: r.get(0)?,
        src: r.get(1)?,
        dest: r.get(2)?,
        amount_minor: r.get(3)?,
        idempotency_key: r.get(4)?,
        created_at_ms: r.get(5)?,
    })
}

const PAYMENT_COLUMNS: &str = "id, src, dest, amount_minor, idem_key, created_at_ms";

pub fn first_payment_with_key(conn: &Connection, key: &str) -> DbResult<Option<Payment>> {
    conn.prepare_cached(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE idem_key = ?1 ORDER BY id LIMIT 1"
    ))?
    .query_row([key], payment_from_row)
    .optional()
    .map_err(DbError::from)
}

pub fn payment(conn: &Connection, id: i64) -> DbResult<Option<Payment>> {
    conn.prepare_cached(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = ?1"))?
        .query_row([id], payment_from_row)
        .optional()
        .map_err(DbError::from)
}

/// Payments in id order after `after_id`, at most `limit`, optionally only
/// those carrying `key`.
pub fn payments(conn: &Connection, after_id: i64, limit: usize, key: Option<&str>) -> DbResult<Vec<Payment>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let page = match key {
        Some(key) => conn
            .prepare_cached(&format!(
                "SELECT {PAYMENT_COLUMNS} FROM payments WHERE idem_key = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
            ))?
            .query_map(params![key, after_id, limit], payment_from_row)?
            .collect::<rusqlite::Result<_>>()?,
        None => conn
            .prepare_cached(&format!(
                "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))?
            .query_map(params![after_id, limit], payment_from_row)?
            .collect::<rusqlite::Result<_>>()?,
    };
    Ok(page)
}

/// The payments whose key is one of `keys` and whose id is above `after_id`,
/// in id order, at most `limit`. The keys travel as one JSON array bound to
/// `json_each`, so the statement is prepared once whatever their number;
/// `INDEXED BY` makes SQLite refuse to run it rather than fall back to a scan
/// (each key is one search of `payments_by_idem_key` on `(idem_key, id)`).
pub fn payments_by_keys(conn: &Connection, keys: &[String], after_id: i64, limit: usize) -> DbResult<Vec<Payment>> {
    let keys = serde_json::to_string(keys).map_err(|e| DbError::Other(format!("keys not encodable: {e}")))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let page = conn
        .prepare_cached(LOOKUP_SQL)?
        .query_map(params![keys, after_id, limit], payment_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(page)
}

const LOOKUP_SQL: &str = "SELECT id, src, dest, amount_minor, idem_key, created_at_ms
     FROM payments INDEXED BY payments_by_idem_key
     WHERE idem_key IN (SELECT value FROM json_each(?1)) AND id > ?2
     ORDER BY id LIMIT ?3";

/// Counts of what `DELETE /payments` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Wiped {
    pub payments: usize,
    pub accounts: usize,
    pub keys: usize,
}

pub fn wipe(conn: &Connection) -> DbResult<Wiped> {
    let keys = conn.execute("DELETE FROM idempotency_keys", [])?;
    let payments = conn.execute("DELETE FROM payments", [])?;
    let accounts = conn.execute("DELETE FROM accounts", [])?;
    Ok(Wiped {
        payments,
        accounts,
        keys,
    })
}

/// Deletes up to [`REAP_ROWS_MAX`] stored responses older than the retention.
/// The payments keep their keys, so late retries are still recognised.
pub fn reap(conn: &Connection, now_ms: i64, retention_ms: i64) -> DbResult<usize> {
    conn.prepare_cached(
        "DELETE FROM idempotency_keys WHERE idem_key IN (
             SELECT idem_key FROM idempotency_keys
             WHERE state = 'completed' AND completed_at_ms <= ?1 LIMIT ?2)",
    )?
    .execute(params![now_ms.saturating_sub(retention_ms), REAP_ROWS_MAX as i64])
    .map_err(DbError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger_stats::ledger_stats;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = open_writer(&dir.path().join("t.db"), Synchronous::Normal).expect("open");
        (dir, conn)
    }

    fn request(amount_minor: i64) -> PaymentRequest {
        PaymentRequest {
            src: "bianca".into(),
            dest: "marc".into(),
            amount_minor,
        }
    }

    const DAY_MS: i64 = 86_400_000;

    #[test]
    fn executes_once_then_replays_byte_identical() {
        let (_dir, conn) = db();
        let Outcome::Executed { body, payment, .. } = pay_keyed(&conn, &request(100), "k", 1000, DAY_MS).unwrap()
        else {
            panic!("first request must execute")
        };
        let replay = pay_keyed(&conn, &request(100), "k", 2000, DAY_MS).unwrap();
        assert_eq!(
            replay,
            Outcome::Replayed {
                status: 201,
                body,
                payment_id: Some(payment.id),
                from_ledger: false
            }
        );
        assert_eq!(
            pay_keyed(&conn, &request(200), "k", 3000, DAY_MS).unwrap(),
            Outcome::Mismatch
        );
        let stats = ledger_stats(&mut Connection::open(conn.path().unwrap()).unwrap()).unwrap();
        assert_eq!(
            (stats.payments, stats.total_amount_minor, stats.accounts_off_ledger),
            (1, 100, 0)
        );
    }

    #[test]
    fn late_retry_after_retention_is_rebuilt_from_the_ledger() {
        let (_dir, conn) = db();
        let Outcome::Executed { body, payment, .. } = pay_keyed(&conn, &request(100), "k", 1000, 10).unwrap() else {
            panic!("first request must execute")
        };
        assert_eq!(reap(&conn, 5000, 10).unwrap(), 1);
        let replay = pay_keyed(&conn, &request(100), "k", 5000, 10).unwrap();
        assert_eq!(
            replay,
            Outcome::Replayed {
                status: 201,
                body,
                payment_id: Some(payment.id),
                from_ledger: true
            }
        );
        assert_eq!(
            pay_keyed(&conn, &request(999), "k", 5000, 10).unwrap(),
            Outcome::Mismatch
        );
    }

    #[test]
    fn lease_blocks_until_it_expires_then_the_old_owner_is_fenced_off() {
        let (_dir, conn) = db();
        let r = request(100);
        assert_eq!(
            claim(&conn, &r, "k", 1, 0, 1000, DAY_MS).unwrap(),
            Outcome::Claimed { takeover: false }
        );
        // Within the lease another request is told to come back later.
        assert_eq!(claim(&conn, &r, "k", 2, 999, 1000, DAY_MS).unwrap(), Outcome::InFlight);
        // The first worker died; after the lease a retry takes the key over.
        assert_eq!(
            claim(&conn, &r, "k", 2, 1000, 1000, DAY_MS).unwrap(),
            Outcome::Claimed { takeover: true }
        );
        // The original worker wakes up: it no longer owns the key and must not pay.
        assert_eq!(complete(&conn, &r, "k", 1, 1001).unwrap(), Outcome::LostLease);
        assert!(matches!(
            complete(&conn, &r, "k", 2, 1002).unwrap(),
            Outcome::Executed { .. }
        ));
        assert!(matches!(
            claim(&conn, &r, "k", 3, 1003, 1000, DAY_MS).unwrap(),
            Outcome::Replayed { .. }
        ));
        assert_eq!(payments(&conn, 0, 10, Some("k")).unwrap().len(), 1);
    }

    #[test]
    fn lookup_by_keys_searches_the_key_index_per_key() {
        let (_dir, conn) = db();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {LOOKUP_SQL}"))
            .unwrap()
            .query_map(params!["[\"a\",\"b\"]", 0, 10], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let text = plan.join("\n");
        assert!(
            plan.iter()
                .any(|step| step.contains("SEARCH payments USING INDEX payments_by_idem_key (idem_key=? AND rowid>?)")),
            "{text}"
        );
        assert!(!plan.iter().any(|step| step.starts_with("SCAN payments")), "{text}");
    }

    #[test]
    fn lookup_by_keys_pages_in_id_order() {
        let (_dir, conn) = db();
        for key in ["a", "b", "a", "c", "a"] {
            insert_unchecked(&conn, &request(100), Some(key), 0).unwrap();
        }
        insert_unchecked(&conn, &request(100), None, 0).unwrap();
        let ids = |keys: &[&str], after: i64, limit: usize| -> Vec<i64> {
            let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
            payments_by_keys(&conn, &keys, after, limit)
                .unwrap()
                .iter()
                .map(|p| p.id)
                .collect()
        };
        assert_eq!(ids(&["a", "a", "zz"], 0, 10), vec![1, 3, 5]);
        assert_eq!(ids(&["c", "b"], 0, 10), vec![2, 4]);
        assert_eq!(ids(&["a", "b", "c"], 0, 2), vec![1, 2]);
        assert_eq!(ids(&["a", "b", "c"], 2, 2), vec![3, 4]);
        assert_eq!(ids(&["a", "b", "c"], 4, 2), vec![5]);
        assert!(ids(&["zz"], 0, 10).is_empty());
    }

    #[test]
    fn startup_expires_leases_of_the_dead_process() {
        let (_dir, conn) = db();
        let r = request(100);
        assert_eq!(
            claim(&conn, &r, "k", 1, 0, 1000, DAY_MS).unwrap(),
            Outcome::Claimed { takeover: false }
        );
        assert_eq!(expire_leases(&conn).unwrap(), 1);
        assert_eq!(
            claim(&conn, &r, "k", 2, 1, 1000, DAY_MS).unwrap(),
            Outcome::Claimed { takeover: true }
        );
    }

    #[test]
    fn the_unique_key_is_the_last_line_of_defence() {
        let (_dir, conn) = db();
        insert_payment(&conn, &request(100), Some("k"), true, 0).unwrap();
        assert!(insert_payment(&conn, &request(100), Some("k"), true, 0).is_err());
        // Without the unique column (dedup off), duplicates are stored and counted.
        insert_unchecked(&conn, &request(100), Some("j"), 0).unwrap();
        insert_unchecked(&conn, &request(100), Some("j"), 0).unwrap();
        let stats = ledger_stats(&mut Connection::open(conn.path().unwrap()).unwrap()).unwrap();
        assert_eq!((stats.payments, stats.distinct_keys, stats.duplicate_keys), (3, 2, 1));
        assert_eq!((stats.balance_sum_minor, stats.accounts_off_ledger), (0, 0));
    }
}
