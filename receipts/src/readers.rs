//! A small pool of read-only connections used on the blocking pool, so reads
//! never queue behind the writer and no SQLite call runs on an async worker.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::config::{READ_WAIT_MS_MAX, READERS_COUNT_MAX};
use crate::db_error::DbResult;
use crate::error::{ApiError, Problem};
use crate::schema;

pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    /// A pool of at most [`READERS_COUNT_MAX`] connections, opened on first use.
    pub(crate) fn new(path: PathBuf) -> Arc<Readers> {
        Arc::new(Readers {
            path,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(READERS_COUNT_MAX)),
        })
    }

    /// Runs `query` on a pooled connection on the blocking pool. The permit
    /// travels with the query, so the bound holds even when callers go away.
    pub(crate) async fn read<T, F>(self: &Arc<Readers>, query: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> DbResult<T> + Send + 'static,
    {
        let unavailable = |why: String| ApiError::new(Problem::TemporarilyUnavailable, why);
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

    /// Blocking: an idle connection (or a new one), the query, the
    /// connection back into the pool.
    fn run<T>(&self, query: impl FnOnce(&mut Connection) -> DbResult<T>) -> DbResult<T> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut conn = match pooled {
            Some(conn) => conn,
            None => schema::open_reader(&self.path)?,
        };
        let result = query(&mut conn);
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
        result
    }
}
