//! `DELETE /payments` in O(1): instead of deleting millions of rows (which
//! holds the writer for minutes and grows the WAL by the size of the
//! ledger), the writer prepares a fresh, empty database file next to the
//! database (`<db>.next`) and exchanges the two names in one atomic
//! `renameat2(RENAME_EXCHANGE)`. The old ledger, now at `<db>.next`, is
//! deleted by a background thread, in steps.
//!
//! SQLite finds a database's WAL and shared-memory files by name
//! (`<db>-wal`, `<db>-shm`), so no connection may be open on the old file
//! when the names are exchanged: the writer closes its own connection (which
//! checkpoints and removes the WAL), the reader pools close theirs under the
//! exclusive gate of [`crate::db_file::DbWatch`], and if `-wal` or `-shm` is
//! still there, another process has the file open and the ledger is deleted
//! in place instead (slow, but correct).
//!
//! A crash at any point leaves either the old ledger or the new one at
//! `<db>` (the exchange is atomic) and garbage at `<db>.next`, removed at the
//! next start.

use std::path::{Path, PathBuf};

use crate::config::Synchronous;
use crate::db_error::{DbError, DbResult};
use crate::db_file::wal_path;
use crate::schema;

/// `<db>.next`: where the fresh file is prepared, and the old one goes.
pub(crate) fn next_path(db: &Path) -> PathBuf {
    with_suffix(db, ".next")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// `-wal` and `-shm` of `db`: present after every connection of this
/// service was closed means another process has the file open.
pub(crate) fn sidecars_present(db: &Path) -> bool {
    wal_path(db).exists() || with_suffix(db, "-shm").exists()
}

/// Removes `<db>.next` and its sidecars: a fresh file never swapped in, or an
/// old ledger whose deletion a crash interrupted. Only the lock holder calls it.
pub(crate) fn remove_leftovers(db: &Path) -> std::io::Result<()> {
    let next = next_path(db);
    for path in [wal_path(&next), with_suffix(&next, "-shm"), next] {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Creates `<db>.next` with the schema and an empty ledger (a new ledger
/// uid), durably, with no connection left open on it.
pub(crate) fn prepare_fresh(db: &Path, synchronous: Synchronous) -> DbResult<PathBuf> {
    remove_leftovers(db).map_err(|e| DbError::Io(format!("cannot remove an old {}: {e}", next_path(db).display())))?;
    let next = next_path(db);
    let conn = schema::open_writer(&next, synchronous)?;
    // Closing the only connection checkpoints the WAL into the file and
    // removes it: the file is complete on its own.
    conn.close().map_err(|failed| failed.1)?;
    if sidecars_present(&next) {
        return Err(DbError::Io(format!("{} kept its WAL after closing", next.display())));
    }
    Ok(next)
}

/// Whether this platform can exchange two names atomically.
pub(crate) const EXCHANGE_SUPPORTED: bool = cfg!(target_os = "linux");

/// Exchanges the names `a` and `b` atomically, then makes the exchange
/// durable (fsync of the directory). `Ok(false)` when the file system cannot
/// exchange names (nothing changed).
pub(crate) fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let to_c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
        let (a_c, b_c) = (to_c(a)?, to_c(b)?);
        // SAFETY: two NUL-terminated paths that live across the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a_c.as_ptr(),
                libc::AT_FDCWD,
                b_c.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
                _ => Err(e),
            };
        }
        let dir = b
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(dir)?.sync_all()?;
        Ok(true)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Ok(false)
    }
}

/// Bytes freed per step when the old ledger is removed, and the pause
/// between steps. Unlinking gigabytes at once makes the file system free
/// every block in one journal transaction, which the writer's next fsync
/// then waits for; in steps, each fsync waits for at most a step's worth.
const REMOVE_STEP_BYTES: u64 = 64 << 20;
const REMOVE_PAUSE_MS: u64 = 5;

/// Deletes the old ledger at `path`: the name at once (on the caller's
/// thread, so a next DELETE may use it), the blocks in steps on a thread of
/// its own through the still open file.
pub(crate) fn remove_in_background(path: PathBuf) {
    let opened = std::fs::OpenOptions::new().write(true).open(&path);
    let file = match opened.and_then(|file| std::fs::remove_file(&path).map(|()| file)) {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the old ledger; it is removed at the next start");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("payment-wipe".into())
        .spawn(move || match shrink(&file) {
            Ok(()) => tracing::debug!("old ledger removed"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot shrink the removed old ledger; it is freed when the service stops")
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the thread that frees the old ledger; it is freed when the service stops");
    }
}

/// Frees the blocks of an unlinked file a step at a time.
fn shrink(file: &std::fs::File) -> std::io::Result<()> {
    let mut len = file.metadata()?.len();
    // Bounded: the length shrinks by a step each time round.
    while len > 0 {
        len = len.saturating_sub(REMOVE_STEP_BYTES);
        file.set_len(len)?;
        std::thread::sleep(std::time::Duration::from_millis(REMOVE_PAUSE_MS));
    }
    Ok(())
}
