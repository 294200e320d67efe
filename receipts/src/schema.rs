//! The database file: its tables, connection settings, and the check that a
//! file given with `--db` is a receipts database (and not, say, the payment
//! service's ledger).
//!
//! Tables:
//! - `receipts`: one row per receipt issued, never changed once written.
//!   Under `--dedup inbox` at most one per event id; under `--dedup off` one
//!   per delivery. Indexed by event id (the reconciliation lookup) and by
//!   payment id.
//! - `inbox`: one row per event id receipted, naming its first receipt. Its
//!   primary key is the inbox's unique constraint: under `--dedup inbox` the
//!   row is inserted in the same transaction as the receipt, and a
//!   redelivery finds it and is answered with that receipt. Under `--dedup
//!   off` the consumer never consults it; it is still kept (first receipt
//!   only), so `/stats` counts distinct events in O(1) and a later run with
//!   `--dedup inbox` on the same file deduplicates against every event.
//! - `receipt_totals`: one row, the figures `/stats` shows, updated in the
//!   transaction of every batch of receipts.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::db_error::{DbError, DbResult};

/// How long a connection waits for a lock before SQLITE_BUSY: only readers
/// and one writer share the file, so waits are short.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// `PRAGMA application_id` of a receipts database ("RCPT"): tells it apart
/// from any other SQLite file before a single table is touched.
const APPLICATION_ID: i64 = 0x5243_5054;

/// The schema this version writes.
const SCHEMA_VERSION: i64 = 1;

/// The writer's page cache, in KiB: keeps the upper levels of the event-id
/// indexes of millions of receipts in memory.
const WRITER_CACHE_KIB: i64 = 65_536;

const SCHEMA: &str = "
CREATE TABLE receipts (
    id           INTEGER PRIMARY KEY,
    event_id     TEXT    NOT NULL,
    payment_id   INTEGER NOT NULL CHECK (payment_id > 0),
    idem_key     TEXT,
    src          TEXT    NOT NULL,
    dest         TEXT    NOT NULL CHECK (dest <> src),
    amount_minor INTEGER NOT NULL CHECK (typeof(amount_minor) = 'integer' AND amount_minor > 0 AND amount_minor <= 100000000000),
    paid_at_ms   INTEGER NOT NULL,
    issued_at_ms INTEGER NOT NULL
);
CREATE INDEX receipts_by_event ON receipts(event_id);
CREATE INDEX receipts_by_payment ON receipts(payment_id);
CREATE TABLE inbox (
    event_id       TEXT    PRIMARY KEY,
    receipt_id     INTEGER NOT NULL REFERENCES receipts(id),
    received_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE receipt_totals (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    receipts            INTEGER NOT NULL,
    events              INTEGER NOT NULL,
    duplicates_absorbed INTEGER NOT NULL,
    -- Money receipted: amount_hi * 2^32 + amount_lo, exact past i64.
    amount_hi           INTEGER NOT NULL,
    amount_lo           INTEGER NOT NULL,
    last_receipt_id     INTEGER NOT NULL
);
INSERT INTO receipt_totals VALUES (1, 0, 0, 0, 0, 0, 0);
";

/// Opens (creating if needed) the database for the one writer: WAL, every
/// commit fsynced (an acknowledged receipt survives power loss), the schema
/// created in a new file, and a file of another kind refused.
pub(crate) fn open_writer(path: &Path) -> DbResult<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(DbError::Io(format!(
            "journal_mode is {mode}, WAL is required (is the file on a network drive?)"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    create_or_check(&mut conn, path)?;
    Ok(conn)
}

/// A read-only connection: WAL lets it read a consistent snapshot while the
/// writer commits.
pub(crate) fn open_reader(path: &Path) -> DbResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
    Ok(conn)
}

/// An empty file gets the schema; a receipts database of this version is
/// used as it is (one header read); anything else is refused, saying why.
fn create_or_check(conn: &mut Connection, path: &Path) -> DbResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let id: i64 = tx.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = tx.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    let db = path.display();
    match (id, version) {
        (APPLICATION_ID, SCHEMA_VERSION) => return Ok(()),
        (APPLICATION_ID, v) => {
            return Err(DbError::Other(format!(
                "{db} has receipts schema version {v}, this receipts service knows {SCHEMA_VERSION}; use the receipts service that wrote it, or another --db"
            )));
        }
        (0, 0) if tables == 0 => {}
        _ => {
            return Err(DbError::Other(format!(
                "{db} is not a receipts database (another SQLite file: {tables} tables); give the receipts service its own --db, e.g. --db receipts.db"
            )));
        }
    }
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_is_created_and_reopened_and_a_foreign_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("r.db");
        drop(open_writer(&db).expect("created"));
        drop(open_writer(&db).expect("reopened"));
        let other = dir.path().join("payments.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE payments (id INTEGER PRIMARY KEY);")
            .unwrap();
        let refused = open_writer(&other).expect_err("a foreign file").to_string();
        assert!(refused.contains("is not a receipts database"), "{refused}");
        assert!(refused.contains("its own --db"), "{refused}");
    }
}
