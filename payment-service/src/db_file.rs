//! Is the database file at the configured path still the file this service
//! opened?
//!
//! A file removed or renamed under a running service stays open: SQLite
//! keeps writing to it, reads through new connections fail or see another
//! file, and after a restart every payment acknowledged meanwhile is gone. So
//! the service records the identity (device and inode) of the database and
//! its WAL when it opens them, compares them with what the path holds before
//! and after every batch (two `stat` calls each, a few microseconds), and on
//! the first difference stops acknowledging for good and says why.
//!
//! The service itself replaces the file on `DELETE /payments` (a fresh file
//! swapped in, see `generation.rs`). The identities are therefore behind a
//! lock that is also the gate of every reader connection: readers hold it
//! shared while they use a connection, the swap holds it exclusively, so no
//! connection of the service is open on the old file when it is swapped and
//! no check sees the paths halfway.

use std::path::{Path, PathBuf};
use std::sync::{OnceLock, RwLock, RwLockReadGuard};

use crate::db_error::{DbError, DbResult};

/// Device and inode: what a path resolves to.
type FileId = (u64, u64);

/// What the database and its WAL were when the service opened them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ids {
    db: FileId,
    wal: FileId,
}

/// The identity of the open database, and the verdict once it is lost.
#[derive(Debug)]
pub(crate) struct DbWatch {
    db: PathBuf,
    wal: PathBuf,
    ids: RwLock<Ids>,
    /// Set once, on the first difference; never cleared (restart to recover).
    lost: OnceLock<String>,
    /// False for a PostgreSQL database: no file of ours to watch.
    watched: bool,
}

/// Held while a reader connection is in use: no swap happens meanwhile.
pub(crate) type Gate<'a> = RwLockReadGuard<'a, Ids>;

fn poisoned() -> DbError {
    DbError::Other("the database gate is poisoned (a thread panicked while swapping files)".into())
}

impl DbWatch {
    /// Records what `db` and its WAL are now; call right after opening them.
    pub(crate) fn record(db: &Path) -> std::io::Result<DbWatch> {
        let wal = wal_path(db);
        Ok(DbWatch {
            ids: RwLock::new(Ids {
                db: file_id(db)?,
                wal: file_id(&wal)?,
            }),
            db: db.to_owned(),
            wal,
            lost: OnceLock::new(),
            watched: true,
        })
    }

    /// For a database that is not a file (PostgreSQL): nothing to compare,
    /// never lost; the gate still orders readers (no swap ever happens).
    pub(crate) fn unwatched(db: &Path) -> DbWatch {
        DbWatch {
            ids: RwLock::new(Ids {
                db: (0, 0),
                wal: (0, 0),
            }),
            db: db.to_owned(),
            wal: PathBuf::new(),
            lost: OnceLock::new(),
            watched: false,
        }
    }

    /// The gate, shared: waits while the service swaps the file.
    pub(crate) fn gate(&self) -> DbResult<Gate<'_>> {
        self.ids.read().map_err(|_| poisoned())
    }

    /// Runs `swap` with the gate held exclusively (every reader connection
    /// returned), then records what the paths are now.
    pub(crate) fn swap<T>(&self, swap: impl FnOnce() -> DbResult<T>) -> DbResult<T> {
        let mut ids = self.ids.write().map_err(|_| poisoned())?;
        let result = swap()?;
        *ids = Ids {
            db: file_id(&self.db).map_err(|e| DbError::Io(e.to_string()))?,
            wal: file_id(&self.wal).map_err(|e| DbError::Io(e.to_string()))?,
        };
        Ok(result)
    }

    /// Why the database was lost, if it was.
    pub(crate) fn lost(&self) -> Option<&str> {
        self.lost.get().map(String::as_str)
    }

    /// `Ok` while both paths still name the open files. Blocking (two
    /// `stat`s): call it from the writer thread or the blocking pool.
    pub(crate) fn check(&self) -> Result<(), DbError> {
        let gate = self.gate()?;
        self.check_under(&gate)
    }

    /// [`DbWatch::check`] for a caller that holds the gate already.
    pub(crate) fn check_under(&self, gate: &Gate<'_>) -> Result<(), DbError> {
        if self.lost.get().is_none()
            && let Some(why) = self.difference(gate)
        {
            self.lose(why);
        }
        match self.lost() {
            Some(why) => Err(DbError::FileReplaced(why.to_owned())),
            None => Ok(()),
        }
    }

    fn difference(&self, ids: &Ids) -> Option<String> {
        if !self.watched {
            return None;
        }
        for (path, expected) in [(&self.db, ids.db), (&self.wal, ids.wal)] {
            match file_id(path) {
                Ok(id) if id == expected => {}
                Ok(_) => {
                    return Some(format!(
                        "{} is no longer the file this service opened (replaced)",
                        path.display()
                    ));
                }
                Err(e) => {
                    return Some(format!(
                        "{} is no longer the file this service opened ({e})",
                        path.display()
                    ));
                }
            }
        }
        None
    }

    /// Stops acknowledging for good, saying why.
    pub(crate) fn lose(&self, why: String) {
        if self.lost.set(why.clone()).is_ok() {
            tracing::error!(
                db = %self.db.display(),
                "{why}: every payment is refused from now on, because what this service commits would be lost at \
                 the next restart. What to do: stop sending payments, put the original file (and its -wal) back \
                 at {} (while this process runs, the removed file can still be copied from /proc/{}/fd/), then \
                 restart the service",
                self.db.display(),
                std::process::id()
            );
        }
    }
}

pub(crate) fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

#[cfg(unix)]
fn file_id(path: &Path) -> std::io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_id(path: &Path) -> std::io::Result<FileId> {
    // No inode here: presence is all that can be checked.
    std::fs::metadata(path).map(|_| (0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("p.db");
        std::fs::write(&db, b"db").unwrap();
        std::fs::write(wal_path(&db), b"wal").unwrap();
        (dir, db)
    }

    #[test]
    fn notices_a_rename_a_removal_and_a_replacement_and_stays_lost() {
        for change in ["rename", "remove", "replace", "remove-wal"] {
            let (_dir, db) = files();
            let watch = DbWatch::record(&db).unwrap();
            assert_eq!(watch.check(), Ok(()));
            match change {
                "rename" => std::fs::rename(&db, db.with_extension("old")).unwrap(),
                "remove" => std::fs::remove_file(&db).unwrap(),
                "replace" => {
                    std::fs::write(db.with_extension("new"), b"other").unwrap();
                    std::fs::rename(db.with_extension("new"), &db).unwrap();
                }
                _ => std::fs::remove_file(wal_path(&db)).unwrap(),
            }
            assert!(matches!(watch.check(), Err(DbError::FileReplaced(_))), "{change}");
            assert!(watch.lost().is_some(), "{change}");
            // Putting a file back does not make the service trust it again.
            std::fs::write(&db, b"db").unwrap();
            std::fs::write(wal_path(&db), b"wal").unwrap();
            assert!(watch.check().is_err(), "{change}: sticky");
        }
    }
}
