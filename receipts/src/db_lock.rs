//! One receipts service per database file. Two would still issue one
//! receipt per event (every delivery is one `BEGIN IMMEDIATE` transaction
//! checking the inbox), but they would wait on each other's locks and answer
//! 503s; more likely the second one is a mistake (the same `--db` given
//! twice), so it is refused at start, with the fix. The writer holds an
//! exclusive `flock(2)` on `<db>.lock`; the kernel drops it when the process
//! dies, so a crash never leaves a stale lock. (A lock file rather than the
//! database itself: closing any other descriptor of a file drops SQLite's
//! own POSIX locks on it.)

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{Context, bail};

/// An exclusive claim on a database file, released on drop.
#[derive(Debug)]
pub(crate) struct DbLock {
    _file: File,
}

impl DbLock {
    /// Takes the lock for `db` or explains who holds it and what to do.
    pub(crate) fn acquire(db: &Path) -> anyhow::Result<DbLock> {
        let mut name = db.as_os_str().to_owned();
        name.push(".lock");
        let path = std::path::PathBuf::from(name);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| {
                format!(
                    "cannot open the lock file {} (does its directory exist?)",
                    path.display()
                )
            })?;
        if let Err(e) = try_lock_exclusive(&file) {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder: String = holder
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == ' ')
                .take(32)
                .collect();
            bail!(
                "the database {} is in use by another receipts service ({}); stop it first, or give this one its own --db",
                db.display(),
                if holder.is_empty() {
                    "pid unknown"
                } else {
                    holder.trim()
                },
            );
        }
        // For the operator who finds the file: which process holds it.
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "pid {}", std::process::id())?;
        Ok(DbLock { _file: file })
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("r.db");
        let first = DbLock::acquire(&db).expect("first");
        let refused = DbLock::acquire(&db).expect_err("second").to_string();
        assert!(refused.contains(&format!("pid {}", std::process::id())), "{refused}");
        assert!(refused.contains("its own --db"), "{refused}");
        drop(first);
        DbLock::acquire(&db).expect("free again");
    }
}
