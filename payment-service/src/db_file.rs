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

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::db_error::DbError;

/// Device and inode: what a path resolves to.
type FileId = (u64, u64);

/// The identity of the open database, and the verdict once it is lost.
#[derive(Debug)]
pub(crate) struct DbWatch {
    db: PathBuf,
    wal: PathBuf,
    db_id: FileId,
    wal_id: FileId,
    /// Set once, on the first difference; never cleared (restart to recover).
    lost: OnceLock<String>,
}

impl DbWatch {
    /// Records what `db` and its WAL are now; call right after opening them.
    pub(crate) fn record(db: &Path) -> std::io::Result<DbWatch> {
        let wal = wal_path(db);
        Ok(DbWatch {
            db_id: file_id(db)?,
            wal_id: file_id(&wal)?,
            db: db.to_owned(),
            wal,
            lost: OnceLock::new(),
        })
    }

    /// Why the database was lost, if it was.
    pub(crate) fn lost(&self) -> Option<&str> {
        self.lost.get().map(String::as_str)
    }

    /// `Ok` while both paths still name the open files. Blocking (two
    /// `stat`s): call it from the writer thread or the blocking pool.
    pub(crate) fn check(&self) -> Result<(), DbError> {
        if self.lost.get().is_none()
            && let Some(why) = self.difference()
        {
            self.lose(why);
        }
        match self.lost() {
            Some(why) => Err(DbError::FileReplaced(why.to_owned())),
            None => Ok(()),
        }
    }

    fn difference(&self) -> Option<String> {
        for (path, expected) in [(&self.db, self.db_id), (&self.wal, self.wal_id)] {
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

    fn lose(&self, why: String) {
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

fn wal_path(db: &Path) -> PathBuf {
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
