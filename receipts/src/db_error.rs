//! Database failures, typed by SQLite's result code, so each gets the answer
//! the relay must act on: what would fail again the same way is a 4xx (the
//! relay stops), a failure of the moment is a 503 with `Retry-After` (the
//! relay delivers again, and the inbox absorbs the duplicate if it landed).

use rusqlite::ErrorCode;

use crate::error::{ApiError, Problem};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DbError {
    /// Another connection held the lock past the busy timeout.
    Busy(String),
    /// The disk (or a size limit) is full.
    DiskFull(String),
    /// The file system under the database failed, or the file is damaged.
    Io(String),
    /// The event breaks a rule of the schema (a CHECK the parser missed).
    Constraint(String),
    /// The writer has stopped (shutdown, or a start that failed).
    Stopped,
    /// Anything else SQLite reports.
    Other(String),
}

pub(crate) type DbResult<T> = Result<T, DbError>;

impl DbError {
    /// The answer for a request that failed this way.
    pub(crate) fn to_api(&self) -> ApiError {
        let (problem, detail) = match self {
            DbError::Busy(e) => (Problem::TemporarilyUnavailable, format!("the database is busy ({e})")),
            DbError::DiskFull(e) => (Problem::StorageFull, format!("the database's disk is full ({e})")),
            DbError::Io(e) => (Problem::TemporarilyUnavailable, format!("the database failed ({e})")),
            DbError::Constraint(e) => (Problem::RefusedByStore, format!("the database refuses the event: {e}")),
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

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> DbError {
        let text = e.to_string();
        let rusqlite::Error::SqliteFailure(failure, _) = &e else {
            return DbError::Other(text);
        };
        match failure.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => DbError::Busy(text),
            ErrorCode::DiskFull => DbError::DiskFull(text),
            ErrorCode::ConstraintViolation => DbError::Constraint(text),
            ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied
            | ErrorCode::DatabaseCorrupt
            | ErrorCode::NotADatabase => DbError::Io(text),
            _ => DbError::Other(text),
        }
    }
}
