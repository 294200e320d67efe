//! A small pool of read-only connections for GET requests, lookups and the
//! `check-then-insert` lookup, so reads never queue behind the writer.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::Semaphore;

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
    pub(crate) fn new(path: PathBuf, watch: Arc<DbWatch>) -> Arc<Readers> {
        Arc::new(Readers {
            path,
            watch,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(READERS_COUNT_MAX)),
        })
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
    fn run<T>(&self, query: impl FnOnce(&mut Connection) -> DbResult<T>) -> DbResult<T> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = store::open_reader(&self.path)?;
                self.watch.check()?;
                conn
            }
        };
        let result = query(&mut conn);
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
        result
    }
}
