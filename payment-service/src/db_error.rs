//! What can go wrong with the database, typed, so that each cause gets the
//! answer it deserves: a failure that would happen again the same way (a
//! constraint, an overflow) is the request's fault and a 4xx that the client
//! must not retry; a failure of the moment (busy, disk full, I/O) is a 503 with
//! `Retry-After`, because the same request may well succeed later.

use rusqlite::ErrorCode;

use crate::error::{ApiError, Problem};

/// A database failure, mapped from SQLite's result codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DbError {
    /// SQLITE_BUSY / SQLITE_LOCKED: another connection held the lock past the
    /// busy timeout.
    Busy(String),
    /// SQLITE_FULL: the disk (or a size limit) is full.
    DiskFull(String),
    /// SQLITE_IOERR, SQLITE_CANTOPEN, SQLITE_READONLY and other failures of
    /// the file system under the database.
    Io(String),
    /// SQLITE_CORRUPT / SQLITE_NOTADB: the file is damaged or not a database.
    Corrupt(String),
    /// SQLITE_CONSTRAINT: the request breaks a rule of the schema.
    Constraint(String),
    /// A number left its range: SQLITE_TOOBIG, SQLite's "integer overflow",
    /// or a value that does not fit an `i64`.
    Overflow(String),
    /// The payment would take `account`'s balance out of the `i64` range.
    BalanceOutOfRange { account: String },
    /// The file at the database path is no longer the file this service
    /// opened (removed, renamed or replaced under it).
    FileReplaced(String),
    /// The writer has stopped (shutdown, or a start that failed).
    Stopped,
    /// The writer's queue is full: nothing was stored.
    QueueFull,
    /// Anything else SQLite reports.
    Other(String),
}

impl DbError {
    /// True when the same request would fail again the same way: the client
    /// must fix the request, not retry it.
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(
            self,
            DbError::Constraint(_) | DbError::Overflow(_) | DbError::BalanceOutOfRange { .. }
        )
    }

    /// The answer for a request that failed this way.
    pub(crate) fn to_api(&self) -> ApiError {
        let (problem, detail) = match self {
            DbError::Busy(e) => (Problem::TemporarilyUnavailable, format!("the database is busy ({e})")),
            DbError::DiskFull(e) => (Problem::StorageFull, format!("the database's disk is full ({e})")),
            DbError::Io(e) => (
                Problem::TemporarilyUnavailable,
                format!("the database could not be written ({e})"),
            ),
            DbError::Corrupt(e) => (
                Problem::TemporarilyUnavailable,
                format!("the database file is damaged ({e})"),
            ),
            DbError::Constraint(e) => (
                Problem::RefusedByLedger,
                format!("the ledger refuses this payment: {e}"),
            ),
            DbError::Overflow(e) => (Problem::RefusedByLedger, format!("a number is out of range: {e}")),
            DbError::BalanceOutOfRange { account } => (
                Problem::BalanceOutOfRange,
                format!("the balance of account {account:?} would leave the range a balance can hold"),
            ),
            DbError::FileReplaced(e) => (Problem::DatabaseReplaced, e.clone()),
            DbError::QueueFull => (Problem::Overloaded, "the write queue is full".to_owned()),
            DbError::Stopped => (
                Problem::TemporarilyUnavailable,
                "the service is shutting down".to_owned(),
            ),
            DbError::Other(e) => (Problem::TemporarilyUnavailable, format!("the database failed ({e})")),
        };
        ApiError::new(problem, detail)
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_api().detail)
    }
}

impl std::error::Error for DbError {}

/// A database result with the failure typed.
pub(crate) type DbResult<T> = Result<T, DbError>;

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> DbError {
        let text = e.to_string();
        match &e {
            rusqlite::Error::SqliteFailure(failure, _) => from_code(failure.code, text),
            rusqlite::Error::IntegralValueOutOfRange(..) => DbError::Overflow(text),
            _ => DbError::Other(text),
        }
    }
}

/// PostgreSQL's SQLSTATEs to the same causes: a rule of the schema or a
/// number out of range is permanent; a serialization failure, a deadlock, a
/// lock or statement timeout or a lost connection is of the moment.
impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> DbError {
        let text = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        let Some(code) = e.code().map(|c| c.code().to_owned()) else {
            // No SQLSTATE: the connection is gone or a value did not convert.
            return match e.is_closed() || e.to_string().contains("connection") {
                true => DbError::Io(text),
                false => DbError::Other(text),
            };
        };
        match code.as_str() {
            "22003" => DbError::Overflow(text),
            "40001" | "40P01" | "55P03" | "57014" => DbError::Busy(text),
            "53100" => DbError::DiskFull(text),
            c if c.starts_with("23") || c.starts_with("22") => DbError::Constraint(text),
            c if c.starts_with("53") => DbError::Busy(text),
            c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("58") => DbError::Io(text),
            "XX001" | "XX002" => DbError::Corrupt(text),
            _ => DbError::Other(text),
        }
    }
}

fn from_code(code: ErrorCode, text: String) -> DbError {
    match code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => DbError::Busy(text),
        ErrorCode::DiskFull => DbError::DiskFull(text),
        ErrorCode::SystemIoFailure
        | ErrorCode::CannotOpen
        | ErrorCode::ReadOnly
        | ErrorCode::PermissionDenied
        | ErrorCode::FileLockingProtocolFailed
        | ErrorCode::NoLargeFileSupport => DbError::Io(text),
        ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => DbError::Corrupt(text),
        ErrorCode::ConstraintViolation => DbError::Constraint(text),
        ErrorCode::TooBig => DbError::Overflow(text),
        // SUM() and arithmetic report overflow as a plain SQLITE_ERROR.
        ErrorCode::Unknown if text.contains("integer overflow") => DbError::Overflow(text),
        _ => DbError::Other(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, ffi};

    fn code(c: i32) -> DbError {
        DbError::from(rusqlite::Error::SqliteFailure(ffi::Error::new(c), None))
    }

    #[test]
    fn maps_result_codes_to_causes() {
        assert!(matches!(code(ffi::SQLITE_BUSY), DbError::Busy(_)));
        assert!(matches!(code(ffi::SQLITE_LOCKED), DbError::Busy(_)));
        assert!(matches!(code(ffi::SQLITE_FULL), DbError::DiskFull(_)));
        assert!(matches!(code(ffi::SQLITE_IOERR_WRITE), DbError::Io(_)));
        assert!(matches!(code(ffi::SQLITE_IOERR_FSYNC), DbError::Io(_)));
        assert!(matches!(code(ffi::SQLITE_CANTOPEN), DbError::Io(_)));
        assert!(matches!(code(ffi::SQLITE_READONLY), DbError::Io(_)));
        assert!(matches!(code(ffi::SQLITE_CORRUPT), DbError::Corrupt(_)));
        assert!(matches!(code(ffi::SQLITE_NOTADB), DbError::Corrupt(_)));
        assert!(matches!(code(ffi::SQLITE_CONSTRAINT_CHECK), DbError::Constraint(_)));
        assert!(matches!(code(ffi::SQLITE_CONSTRAINT_UNIQUE), DbError::Constraint(_)));
        assert!(matches!(code(ffi::SQLITE_TOOBIG), DbError::Overflow(_)));
        assert!(matches!(code(ffi::SQLITE_MISUSE), DbError::Other(_)));
        let out_of_range = rusqlite::Error::IntegralValueOutOfRange(0, i64::MAX);
        assert!(matches!(DbError::from(out_of_range), DbError::Overflow(_)));
    }

    #[test]
    fn permanent_failures_are_4xx_without_retry_after_and_transient_ones_503_with_it() {
        for (e, status) in [
            (DbError::Constraint("c".into()), 422),
            (DbError::Overflow("o".into()), 422),
            (DbError::BalanceOutOfRange { account: "a".into() }, 422),
            (DbError::Busy("b".into()), 503),
            (DbError::DiskFull("f".into()), 503),
            (DbError::Io("i".into()), 503),
            (DbError::Corrupt("c".into()), 503),
            (DbError::FileReplaced("r".into()), 503),
            (DbError::Stopped, 503),
            (DbError::QueueFull, 503),
            (DbError::Other("o".into()), 503),
        ] {
            let api = e.to_api();
            assert_eq!(api.problem.status().as_u16(), status, "{e:?}");
            assert_eq!(e.is_permanent(), status == 422, "{e:?}");
            assert_eq!(api.retry_after_s.is_some(), status == 503, "{e:?}");
        }
    }

    /// Real failures from a real SQLite, not just codes built by hand.
    #[test]
    fn real_sqlite_failures_map_to_their_cause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER CHECK (v > 0), pad BLOB)")
            .unwrap();
        let constraint = conn.execute("INSERT INTO t (v) VALUES (0)", ()).unwrap_err();
        assert!(matches!(DbError::from(constraint), DbError::Constraint(_)));
        let sum = "SELECT SUM(v) FROM (SELECT 9223372036854775807 AS v UNION ALL SELECT 1)";
        let overflow = conn.query_row(sum, [], |r| r.get::<_, i64>(0)).unwrap_err();
        assert!(matches!(DbError::from(overflow), DbError::Overflow(_)));
        // A page limit makes the file "full" after a few rows.
        let pages: i64 = conn.query_row("PRAGMA page_count", (), |r| r.get(0)).unwrap();
        conn.pragma_update(None, "max_page_count", pages + 2).unwrap();
        let full = (0..100)
            .find_map(|_| conn.execute("INSERT INTO t VALUES (1, zeroblob(4000))", ()).err())
            .expect("the file fills up");
        assert!(matches!(DbError::from(full), DbError::DiskFull(_)));
        // Another connection holding the write lock: busy once the timeout passes.
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        conn.busy_timeout(std::time::Duration::ZERO).unwrap();
        let busy = conn.execute_batch("BEGIN IMMEDIATE").unwrap_err();
        assert!(matches!(DbError::from(busy), DbError::Busy(_)));
    }
}
