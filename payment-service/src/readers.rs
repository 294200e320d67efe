//! Small pools of read-only connections, so reads never queue behind the
//! writer: one for GET requests, lookups, replays and the `check-then-insert`
//! lookup, and one of its own for the audit, so that requests never wait for
//! an audit's connection.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::db::Connection;
use tokio::sync::Semaphore;

use crate::audit;
use crate::db_error::{DbError, DbResult};
use crate::db_file::DbWatch;
use crate::error::{ApiError, Problem};
use crate::store;

/// Concurrent read queries; more would only contend for the 2 cores.
pub(crate) const READERS_COUNT_MAX: usize = 4;

/// How long a read waits for a free connection before answering 503.
const READ_WAIT_MS_MAX: u64 = 5_000;

pub struct Readers {
    path: PathBuf,
    watch: Arc<DbWatch>,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    /// A pool of at most `count` connections, opened on first use.
    pub(crate) fn new(path: PathBuf, watch: Arc<DbWatch>, count: usize) -> Arc<Readers> {
        Arc::new(Readers {
            path,
            watch,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(count)),
        })
    }

    /// A permit of this pool if one is free now: whoever holds it may run
    /// [`Readers::run`] on the blocking pool (the audit holds one throughout).
    pub(crate) fn try_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }

    /// Runs `query` on a pooled connection on the blocking thread pool. The
    /// permit travels with the query, so [`READERS_COUNT_MAX`] bounds the
    /// queries running even when their callers have gone away.
    pub(crate) async fn read<T, F>(self: &Arc<Readers>, query: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> DbResult<T> + Send + 'static,
    {
        let unavailable = |why: String| ApiError::new(Problem::TemporarilyUnavailable, why);
        if let Some(why) = self.watch.lost() {
            return Err(DbError::FileReplaced(why.to_owned()).to_api());
        }
        let permit = tokio::time::timeout(
            Duration::from_millis(READ_WAIT_MS_MAX),
            Arc::clone(&self.permits).acquire_owned(),
        )
        .await
        .map_err(|_| unavailable("all database readers are busy".into()))?
        .map_err(|_| unavailable("the service is shutting down".into()))?;
        let pool = Arc::clone(self);
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            pool.run(query)
        });
        match task.await {
            Ok(result) => result.map_err(|e| e.to_api()),
            Err(e) => Err(unavailable(format!("the read task failed: {e}"))),
        }
    }

    /// Blocking: takes an idle connection (or opens one on the file this
    /// service opened, nothing else), runs the query, puts the connection back.
    /// The caller holds a permit.
    /// Holds the file's gate throughout, so a DELETE's swap of the file waits
    /// for it and finds the connection back in the pool.
    pub(crate) fn run<T>(&self, query: impl FnOnce(&mut Connection) -> DbResult<T>) -> DbResult<T> {
        let gate = self.watch.gate()?;
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = store::open_reader(&self.path)?;
                self.watch.check_under(&gate)?;
                conn
            }
        };
        let result = query(&mut conn);
        // A broken PostgreSQL connection is dropped: the next read opens a new one.
        if !conn.is_broken()
            && let Ok(mut idle) = self.idle.lock()
        {
            idle.push(conn);
        }
        drop(gate);
        result
    }

    /// Whether the file at the path is still the one the service opened
    /// (two `stat`s): before an answer that claims success, such as a replay.
    pub(crate) fn check_file(&self) -> DbResult<()> {
        self.watch.check()
    }

    /// Closes every idle connection. The writer calls it with the gate held
    /// exclusively, when every connection is idle, before it swaps the file.
    pub(crate) fn close_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

/// The audit's reads on a pool: each chunk its own short transaction.
pub(crate) struct Chunked<'a>(pub &'a Readers);

impl audit::Snapshots for Chunked<'_> {
    fn snapshot<T>(&mut self, read: impl FnOnce(&Connection) -> DbResult<T>) -> DbResult<T> {
        self.0.run(|conn| audit::Snapshots::snapshot(conn, read))
    }
}
