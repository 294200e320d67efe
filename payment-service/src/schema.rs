//! The database file: schema, connection settings, and bringing a database
//! of an older version up to date.
//!
//! Tables:
//! - `payments`: the ledger, one row per executed payment, never changed once
//!   written. `idem_key` is the key as sent (kept forever, also in modes that
//!   ignore it); `dedup_key` is set only under `--dedup unique` and is UNIQUE:
//!   the permanent last line of defence that catches a retry arriving after
//!   its stored response expired.
//! - `accounts`: balances, created on first use at 0, may go negative.
//! - `idempotency_keys`: one row per key under `--dedup unique`: in-flight
//!   lease or stored response. Completed rows are reaped after the retention.
//!   A lease belongs to a replica (`lease_replica`, see `db_lock.rs`) and a
//!   request of it (`lock_owner`, a token).
//! - `ledger_totals`: the figures `/stats` shows, maintained by every write
//!   (see `totals.rs`), and the outbox's counts.
//! - `ledger_meta` (the ledger id) and `outbox` (one event per payment under
//!   `--notify outbox`): see `outbox.rs`.
//!
//! `PRAGMA user_version` says which schema a file has, so opening a current
//! file reads one header field and nothing else.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::OpenFlags;

use crate::db::{Connection, Dialect};

use crate::audit;
use crate::config::Synchronous;
use crate::db_error::{DbError, DbResult};
use crate::{outbox, pg, totals};

/// How long a connection waits for a lock before giving up with SQLITE_BUSY.
/// Readers never wait for writers (WAL); a writer waits for the one writer
/// of another replica's batch (milliseconds), so 5 s only trips on a stall.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// The schema this version writes; 0 is a file of a version without
/// `ledger_totals` (or a new, empty file), 1 one without the lease's
/// replica, the ledger id and the outbox.
pub(crate) const SCHEMA_VERSION: i64 = 2;

/// The writer's page cache, in KiB: keeps the upper levels of the key indexes
/// of a ledger of millions of payments in memory.
const WRITER_CACHE_KIB: i64 = 65_536;

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
    lease_replica   INTEGER,
    locked_until_ms INTEGER,
    payment_id      INTEGER REFERENCES payments(id),
    response_status INTEGER,
    response_body   TEXT,
    created_at_ms   INTEGER NOT NULL,
    completed_at_ms INTEGER
-- One b-tree keyed by the key, not a rowid table plus an index on the key:
-- one insert less per payment. (A file of the previous version keeps its
-- rowid table; the statements are the same for both.)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_by_completion ON idempotency_keys(completed_at_ms) WHERE state = 'completed';
-- Leases of dead replicas are expired through this: it visits only
-- keys in flight, not every stored response.
CREATE INDEX IF NOT EXISTS idempotency_keys_in_flight ON idempotency_keys(idem_key) WHERE state = 'in_progress';
";

/// Opens (creating if needed) the database for the single writer, with every
/// setting stated explicitly rather than left to defaults, and brings a file
/// of an older version up to date.
pub(crate) fn open_writer(path: &Path, synchronous: Synchronous) -> DbResult<Connection> {
    if let Some(url) = crate::config::postgres_url(path) {
        return pg::open_writer(url);
    }
    // Replicas starting next to running ones: some steps of opening a file
    // in WAL mode answer SQLITE_BUSY at once instead of waiting for the busy
    // timeout (seen under load, at a replica's start). Each try is a fresh
    // connection; bounded by the busy timeout.
    let started = Instant::now();
    loop {
        match open_sqlite_writer(path, synchronous) {
            Err(DbError::Busy(why)) if started.elapsed() < Duration::from_millis(BUSY_TIMEOUT_MS) => {
                tracing::debug!(why, "the database was busy while opening it; trying again");
                std::thread::sleep(Duration::from_millis(OPEN_RETRY_MS));
            }
            opened => return opened,
        }
    }
}

/// The wait between two tries of opening a busy database.
const OPEN_RETRY_MS: u64 = 20;

fn open_sqlite_writer(path: &Path, synchronous: Synchronous) -> DbResult<Connection> {
    // Through the VFS that writes a commit's WAL frames together: the only
    // connection that writes (readers open the default VFS).
    let vfs = crate::wal_gather::vfs_name().map_err(DbError::Io)?;
    let conn = rusqlite::Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs)?;
    // First: every statement below may have to wait for a lock.
    conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
    // Asked first: switching (even to the mode the file already has) takes
    // the write lock, which other replicas' writers hold in turn.
    let mut mode: String = conn.query_row("PRAGMA journal_mode", (), |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        mode = conn.query_row("PRAGMA journal_mode = WAL", (), |r| r.get(0))?;
    }
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(DbError::Io(format!(
            "journal_mode is {mode}, WAL is required (is the file on a network drive?)"
        )));
    }
    conn.pragma_update(None, "synchronous", synchronous.pragma())?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Statement journals and temporary tables in memory: a temporary file
    // written for every statement that might have to be undone costs more
    // CPU than the payment itself.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    let conn = Connection::from(conn);
    bring_up_to_date(&conn)?;
    Ok(conn)
}

/// Opens a read-only connection; WAL lets it read a consistent snapshot while
/// the writer commits.
pub(crate) fn open_reader(path: &Path) -> DbResult<Connection> {
    if let Some(url) = crate::config::postgres_url(path) {
        return pg::open_reader(url);
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = rusqlite::Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn.into())
}

/// A current file: nothing to do (one header read). Else, in one
/// transaction, each step from the file's version to this one: version 1
/// (the schema and a zero totals row; for a file of payments, the totals
/// computed once from them: O(n), once, the same pass as the audit, so
/// nothing slips between), then version 2 (the lease's replica column, the
/// ledger id, the outbox and its counts; payments made before it have no
/// events: O(1)). The version is read again inside the write transaction:
/// replicas may start together.
fn bring_up_to_date(conn: &Connection) -> DbResult<()> {
    if schema_version(conn)? == SCHEMA_VERSION {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let upgraded = upgrade(conn).and_then(|()| conn.execute_batch("COMMIT"));
    if upgraded.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    upgraded
}

/// The steps from the file's version (read again in the write transaction).
fn upgrade(tx: &Connection) -> DbResult<()> {
    let version = schema_version(tx)?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    if version < 1 {
        to_version_1(tx, SCHEMA)?;
    }
    to_version_2(tx)?;
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
    Ok(())
}

/// The tables of version 1 and their figures, computed from what the file holds.
pub(crate) fn to_version_1(tx: &Connection, schema: &str) -> DbResult<()> {
    let started = Instant::now();
    tx.execute_batch(schema)?;
    tx.execute_batch(&tx.dialect().ddl(totals::TOTALS_SCHEMA))?;
    let audited = audit::run(&mut audit::Within(tx), audit::Balances::Skip, &mut |_| {})?;
    let figures = audited.report.recomputed;
    totals::reset(tx, &figures)?;
    if figures.payments > 0 || figures.accounts > 0 {
        tracing::info!(
            payments = figures.payments,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "database of an older version brought up to date: its totals were computed once"
        );
    }
    Ok(())
}

/// Version 2: leases owned by a replica, the ledger id and the outbox.
pub(crate) fn to_version_2(tx: &Connection) -> DbResult<()> {
    // A new file's table already has the column (`SCHEMA`), and so has
    // every PostgreSQL database (it starts at this version).
    if tx.dialect() == Dialect::Sqlite && !has_column(tx, "idempotency_keys", "lease_replica")? {
        tx.execute_batch("ALTER TABLE idempotency_keys ADD COLUMN lease_replica INTEGER")?;
    }
    tx.execute_batch(&tx.dialect().ddl(outbox::OUTBOX_SCHEMA))?;
    outbox::new_ledger_id(tx)?;
    Ok(())
}

/// The file's schema version; an error for one written by a newer version.
fn schema_version(conn: &Connection) -> DbResult<i64> {
    let version: i64 = conn.query_row("PRAGMA user_version", (), |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(DbError::Other(format!(
            "the database has schema version {version}, written by a newer payment-service (this one knows {SCHEMA_VERSION})"
        )));
    }
    Ok(version)
}

fn has_column(conn: &Connection, table: &str, column: &str) -> DbResult<bool> {
    let found: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get(0),
    )?;
    Ok(found > 0)
}
