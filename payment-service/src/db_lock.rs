//! One service per database file: the single place that decides it.
//!
//! The service assumes it is the only writer of its file (it expires every
//! lease at startup, because their owners died with the previous process).
//! A second service on the same file would take over the first one's live
//! leases, so it must not start. The service holds an exclusive `flock(2)` on
//! `<db>.lock` for as long as its writer runs; the kernel drops it when the
//! process dies, so a crash never leaves a stale lock.
//!
//! A lock file next to the database rather than a lock on the database
//! itself: SQLite uses POSIX record locks on its files, and closing any other
//! descriptor of the same file would silently drop those.
//!
//! To let several replicas share a file later (leases owned per replica),
//! relax this module: take the lock shared, or per replica, and stop
//! expiring other replicas' leases at startup.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// An exclusive claim on a database file, released on drop.
#[derive(Debug)]
pub(crate) struct DbLock {
    // The lock lives as long as this descriptor is open.
    _file: File,
}

/// `<db>.lock`, next to the database.
pub(crate) fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl DbLock {
    /// Takes the lock for `db` or explains who holds it and what to do.
    pub(crate) fn acquire(db: &Path) -> anyhow::Result<DbLock> {
        let path = lock_path(db);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        if let Err(e) = try_lock_exclusive(&file) {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!(
                "the database {} is in use by another payment-service ({}, holding {}); \
                 two services on one file would take over each other's payments. \
                 Stop the other service first, or give this one its own --db",
                db.display(),
                describe_holder(&holder),
                path.display()
            );
        }
        // For the operator who finds the file: which process holds it.
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "pid {}", std::process::id())?;
        Ok(DbLock { _file: file })
    }
}

fn describe_holder(content: &str) -> String {
    match content.trim() {
        "" => "pid unknown".to_owned(),
        pid => pid
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == ' ')
            .take(32)
            .collect(),
    }
}

#[cfg(unix)]
fn try_lock_exclusive(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn try_lock_exclusive(_file: &File) -> std::io::Result<()> {
    tracing::warn!("no advisory lock on this platform: make sure one service uses the database file");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("p.db");
        let first = DbLock::acquire(&db).expect("first");
        let refused = DbLock::acquire(&db).expect_err("second").to_string();
        assert!(refused.contains(&db.display().to_string()), "{refused}");
        assert!(refused.contains(&format!("pid {}", std::process::id())), "{refused}");
        assert!(refused.contains("Stop the other service first"), "{refused}");
        drop(first);
        DbLock::acquire(&db).expect("free again");
    }
}
