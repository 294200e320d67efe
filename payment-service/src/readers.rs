//! A small pool of read-only connections for GET requests and the
//! `check-then-insert` lookup, so reads never queue behind the writer.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::error::{ApiError, Problem};
use crate::store;

/// Concurrent read queries; more would only contend for the 2 cores.
pub const READERS_COUNT_MAX: usize = 4;

/// How long a read waits for a free connection before answering 503.
const READ_WAIT_MS_MAX: u64 = 5_000;

pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl Readers {
    pub fn new(path: PathBuf) -> Arc<Readers> {
        Arc::new(Readers {
            path,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(READERS_COUNT_MAX),
        })
    }

    /// Runs `query` on a pooled connection on the blocking thread pool.
    pub async fn read<T, F>(self: &Arc<Readers>, query: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let unavailable = |why: String| ApiError::new(Problem::TemporarilyUnavailable, why);
        let _permit = tokio::time::timeout(Duration::from_millis(READ_WAIT_MS_MAX), self.permits.acquire())
            .await
            .map_err(|_| unavailable("all database readers are busy".into()))?
            .map_err(|_| unavailable("the service is shutting down".into()))?;
        let pool = Arc::clone(self);
        let task = tokio::task::spawn_blocking(move || {
            let pooled = pool.idle.lock().ok().and_then(|mut idle| idle.pop());
            let mut conn = match pooled {
                Some(conn) => conn,
                None => store::open_reader(&pool.path)?,
            };
            let result = query(&mut conn);
            // The connection goes back even if the awaiting handler was cancelled.
            if let Ok(mut idle) = pool.idle.lock() {
                idle.push(conn);
            }
            result
        });
        match task.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(unavailable(format!("the database could not be read: {e}"))),
            Err(e) => Err(unavailable(format!("the read task failed: {e}"))),
        }
    }
}
