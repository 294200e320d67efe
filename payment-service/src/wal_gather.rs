//! A commit's WAL frames in two writes instead of two per frame.
//!
//! SQLite writes each WAL frame with two `pwrite`s (its 24-byte header, then
//! the page): a commit of 25 pages makes 50 system calls before its fsync.
//! On the VM this was measured on they cost as much CPU as the fsync itself
//! (about 160 µs of kernel time per commit of 25 frames; 80 µs gathered).
//!
//! The writer's connection opens its database through this VFS: the
//! platform's default one with one change. Writes to a WAL file are
//! gathered in memory while each continues the last, and handed to the
//! real file as one write:
//! - at a commit frame's header (its "database size" field is not zero),
//!   which goes out with everything gathered before it; the commit frame's
//!   page, which SQLite writes next, goes out on its own at once;
//! - before any other operation on the file (sync, read, size, truncate,
//!   file control, close);
//! - when a write does not continue the gathered bytes, or would pass
//!   [`GATHER_BYTES_MAX`].
//!
//! Why this cannot lose or expose anything: SQLite makes a commit durable
//! (xSync) and visible (the wal-index header, in shared memory) only after
//! it has written every frame of it, and by then every byte is on the file,
//! in the order SQLite wrote it. Bytes still gathered belong to a
//! transaction that has not committed; a crash loses them as it would lose
//! them unwritten (recovery stops at the last whole commit). Only the
//! writer uses this VFS; readers read the WAL through their own handles,
//! and only frames the index says are there.
//!
//! SQLite's own write pattern is relied on only for speed, except in one
//! place: with `synchronous=NORMAL` there is no xSync at commit, so the
//! commit header is what flushes. A test commits under NORMAL and reads
//! every commit from a second connection at once; it fails if a future
//! SQLite writes frames differently.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::ffi;

/// The name this VFS is registered under.
const VFS_NAME: &CStr = c"eo-wal-gather";

/// Most bytes gathered before they are written: the most SQLite's unix VFS
/// writes in one call (128 KiB - 1; it asserts that). A commit of up to 31
/// frames of 4 KiB goes out in one write, a larger one in several.
const GATHER_BYTES_MAX: usize = 0x1_ffff;

/// A WAL frame header's size, fixed by SQLite's file format: no other write
/// to a WAL file has it (the WAL header is 32 bytes, pages at least 512).
const FRAME_HEADER_BYTES: usize = 24;

/// SQLite's writes to WAL files, and the writes this VFS made of them, in
/// this process (for the benchmark's report).
static WRITES_ASKED: AtomicU64 = AtomicU64::new(0);
static WRITES_MADE: AtomicU64 = AtomicU64::new(0);

/// Writes to WAL files so far in this process: asked by SQLite, made here.
pub(crate) fn writes() -> (u64, u64) {
    (
        WRITES_ASKED.load(Ordering::Relaxed),
        WRITES_MADE.load(Ordering::Relaxed),
    )
}

/// The default VFS this one wraps, and where a file's gather state sits in
/// the file object SQLite allocates (right after the real file's own part).
struct Registered {
    real: usize,
    state_offset: usize,
}

static REGISTERED: OnceLock<Result<Registered, String>> = OnceLock::new();

/// The name to open the writer's connection with, registering the VFS on
/// first use.
pub(crate) fn vfs_name() -> Result<&'static CStr, String> {
    match REGISTERED.get_or_init(register) {
        Ok(_) => Ok(VFS_NAME),
        Err(why) => Err(why.clone()),
    }
}

fn register() -> Result<Registered, String> {
    // SAFETY: sqlite3_vfs_find and sqlite3_vfs_register are thread-safe;
    // the registered struct is leaked, so it outlives every connection.
    unsafe {
        let real = ffi::sqlite3_vfs_find(std::ptr::null());
        if real.is_null() {
            return Err("SQLite has no default VFS".to_owned());
        }
        let real_bytes = usize::try_from((*real).szOsFile).map_err(|e| e.to_string())?;
        let state_offset = real_bytes.next_multiple_of(std::mem::align_of::<*mut Gather>());
        let mut vfs: ffi::sqlite3_vfs = *real;
        vfs.szOsFile = c_int::try_from(state_offset + std::mem::size_of::<*mut Gather>()).map_err(|e| e.to_string())?;
        vfs.pNext = std::ptr::null_mut();
        vfs.zName = VFS_NAME.as_ptr();
        vfs.xOpen = Some(open);
        let vfs = Box::leak(Box::new(vfs));
        let rc = ffi::sqlite3_vfs_register(vfs, 0);
        if rc != ffi::SQLITE_OK {
            return Err(format!("cannot register the WAL-gathering VFS (SQLite error {rc})"));
        }
        Ok(Registered {
            real: real as usize,
            state_offset,
        })
    }
}

/// One WAL file's gathered writes.
struct Gather {
    /// The real file's methods (the file object is the real file's).
    real: *const ffi::sqlite3_io_methods,
    bytes: Vec<u8>,
    /// Where `bytes` go in the file.
    offset: i64,
    /// Set right after a commit frame's header went out: where its page is.
    commit_page_at: Option<i64>,
    /// Writes SQLite asked for, and writes made of them.
    asked: u64,
    made: u64,
}

impl Gather {
    fn end(&self) -> i64 {
        self.offset
            .saturating_add(i64::try_from(self.bytes.len()).unwrap_or(i64::MAX))
    }
}

fn registered() -> &'static Registered {
    match REGISTERED.get() {
        Some(Ok(r)) => r,
        // open() is only reachable through a registered VFS.
        _ => unreachable!("the WAL-gathering VFS is used before it is registered"),
    }
}

/// The slot after the real file's part of `file` holding its gather state.
///
/// SAFETY: `file` was allocated by SQLite with this VFS's `szOsFile`.
unsafe fn slot(file: *mut ffi::sqlite3_file) -> *mut *mut Gather {
    unsafe { file.cast::<u8>().add(registered().state_offset).cast::<*mut Gather>() }
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite hands a file object of szOsFile bytes; the real VFS
    // fills its own part (at offset 0), the slot after it is ours.
    unsafe {
        let real = registered().real as *mut ffi::sqlite3_vfs;
        slot(file).write(std::ptr::null_mut());
        let Some(real_open) = (*real).xOpen else {
            (*file).pMethods = std::ptr::null();
            return ffi::SQLITE_CANTOPEN;
        };
        let rc = real_open(real, name, file, flags, out_flags);
        let methods = (*file).pMethods;
        if rc == ffi::SQLITE_OK && flags & ffi::SQLITE_OPEN_WAL != 0 && !methods.is_null() {
            let gather = Box::new(Gather {
                real: methods,
                bytes: Vec::new(),
                offset: 0,
                commit_page_at: None,
                asked: 0,
                made: 0,
            });
            slot(file).write(Box::into_raw(gather));
            (*file).pMethods = &WAL_METHODS;
        }
        rc
    }
}

/// SAFETY: `file` is a WAL file opened by [`open`] (its methods are
/// [`WAL_METHODS`]), used by one connection on one thread at a time.
unsafe fn gather<'a>(file: *mut ffi::sqlite3_file) -> &'a mut Gather {
    unsafe { &mut **slot(file) }
}

/// Writes `data` at `offset` through the real file's own method.
///
/// SAFETY: `file` is a WAL file of this VFS, `g` its gather state.
unsafe fn write_real(file: *mut ffi::sqlite3_file, g: &mut Gather, data: &[u8], offset: i64) -> c_int {
    let Ok(amount) = c_int::try_from(data.len()) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    g.made += 1;
    WRITES_MADE.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the real method on the real file object; it does not touch
    // the gather state (a separate allocation).
    unsafe {
        match (*g.real).xWrite {
            Some(write) => write(file, data.as_ptr().cast::<c_void>(), amount, offset),
            None => ffi::SQLITE_IOERR_WRITE,
        }
    }
}

/// Writes out what is gathered. On failure the bytes are dropped: SQLite
/// fails the transaction they belong to.
///
/// SAFETY: as [`write_real`].
unsafe fn flush(file: *mut ffi::sqlite3_file, g: &mut Gather) -> c_int {
    if g.bytes.is_empty() {
        return ffi::SQLITE_OK;
    }
    // The allocation is kept for the next commit.
    let bytes = std::mem::take(&mut g.bytes);
    // SAFETY: as the caller's.
    let rc = unsafe { write_real(file, g, &bytes, g.offset) };
    g.bytes = bytes;
    g.bytes.clear();
    rc
}

/// Does `data` hold a commit frame's header (its database size not zero)?
fn is_commit_header(data: &[u8]) -> bool {
    data.len() == FRAME_HEADER_BYTES && data[4..8] != [0, 0, 0, 0]
}

unsafe extern "C" fn wal_write(file: *mut ffi::sqlite3_file, buf: *const c_void, amount: c_int, offset: i64) -> c_int {
    WRITES_ASKED.fetch_add(1, Ordering::Relaxed);
    let Ok(len) = usize::try_from(amount) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: SQLite passes `amount` readable bytes at `buf`; the file is
    // a WAL file of this VFS.
    unsafe {
        let data = std::slice::from_raw_parts(buf.cast::<u8>(), len);
        let g = gather(file);
        g.asked += 1;
        if g.commit_page_at.take() == Some(offset) {
            // Everything before it is out already.
            return write_real(file, g, data, offset);
        }
        let continues = g.bytes.is_empty() || offset == g.end();
        if !continues || g.bytes.len() + len > GATHER_BYTES_MAX {
            let rc = flush(file, g);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        if len > GATHER_BYTES_MAX {
            return write_real(file, g, data, offset);
        }
        if g.bytes.is_empty() {
            g.offset = offset;
        }
        g.bytes.extend_from_slice(data);
        if is_commit_header(data) {
            g.commit_page_at = offset.checked_add(FRAME_HEADER_BYTES as i64);
            return flush(file, g);
        }
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn wal_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: the file is a WAL file of this VFS; after the real close the
    // gather state is freed and the slot cleared, so nothing reaches it.
    unsafe {
        let g = gather(file);
        let flushed = flush(file, g);
        let real = g.real;
        let closed = match (*real).xClose {
            Some(close) => close(file),
            None => ffi::SQLITE_OK,
        };
        let state = slot(file).replace(std::ptr::null_mut());
        drop(Box::from_raw(state));
        if flushed != ffi::SQLITE_OK { flushed } else { closed }
    }
}

/// Forwards a method to the real file after writing out what is gathered.
macro_rules! flush_then {
    ($name:ident, $method:ident, $missing:expr, ($($arg:ident: $ty:ty),*)) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            // SAFETY: the file is a WAL file of this VFS; the real method
            // gets its own file object.
            unsafe {
                let g = gather(file);
                let rc = flush(file, g);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
                match (*g.real).$method {
                    Some(method) => method(file $(, $arg)*),
                    None => $missing,
                }
            }
        }
    };
}

/// Forwards a method that does not touch the file's bytes.
macro_rules! forward {
    ($name:ident, $method:ident, $ret:ty, $missing:expr, ($($arg:ident: $ty:ty),*)) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> $ret {
            // SAFETY: as in flush_then.
            unsafe {
                match (*gather(file).real).$method {
                    Some(method) => method(file $(, $arg)*),
                    None => $missing,
                }
            }
        }
    };
}

flush_then!(wal_read, xRead, ffi::SQLITE_IOERR_READ, (buf: *mut c_void, amount: c_int, offset: i64));
flush_then!(wal_truncate, xTruncate, ffi::SQLITE_IOERR_TRUNCATE, (size: i64));
flush_then!(wal_sync, xSync, ffi::SQLITE_IOERR_FSYNC, (flags: c_int));
flush_then!(wal_file_size, xFileSize, ffi::SQLITE_IOERR_FSTAT, (size: *mut i64));
flush_then!(wal_file_control, xFileControl, ffi::SQLITE_NOTFOUND, (op: c_int, arg: *mut c_void));
forward!(wal_lock, xLock, c_int, ffi::SQLITE_OK, (level: c_int));
forward!(wal_unlock, xUnlock, c_int, ffi::SQLITE_OK, (level: c_int));
forward!(wal_check_reserved_lock, xCheckReservedLock, c_int, ffi::SQLITE_OK, (out: *mut c_int));
forward!(wal_sector_size, xSectorSize, c_int, 4096, ());
forward!(wal_device_characteristics, xDeviceCharacteristics, c_int, 0, ());

/// A WAL file's methods: version 1 (a WAL file is never memory-mapped and
/// has no shared memory of its own; SQLite asks the database file for those).
static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(wal_close),
    xRead: Some(wal_read),
    xWrite: Some(wal_write),
    xTruncate: Some(wal_truncate),
    xSync: Some(wal_sync),
    xFileSize: Some(wal_file_size),
    xLock: Some(wal_lock),
    xUnlock: Some(wal_unlock),
    xCheckReservedLock: Some(wal_check_reserved_lock),
    xFileControl: Some(wal_file_control),
    xSectorSize: Some(wal_sector_size),
    xDeviceCharacteristics: Some(wal_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags};

    fn open_gathering(path: &std::path::Path, synchronous: &str) -> Connection {
        let name = vfs_name().expect("registered");
        let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), name).expect("open");
        conn.query_row("PRAGMA journal_mode = WAL", (), |r| r.get::<_, String>(0))
            .expect("wal");
        conn.pragma_update(None, "synchronous", synchronous)
            .expect("synchronous");
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
            .expect("schema");
        conn
    }

    /// The writes this connection's WAL file asked for and made.
    fn wal_writes(conn: &Connection) -> (u64, u64) {
        let mut wal: *mut ffi::sqlite3_file = std::ptr::null_mut();
        // SAFETY: the handle is open; JOURNAL_POINTER stores the pager's
        // journal file (in WAL mode, the WAL file) into `wal`.
        unsafe {
            let rc = ffi::sqlite3_file_control(
                conn.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_JOURNAL_POINTER,
                (&raw mut wal).cast::<c_void>(),
            );
            assert_eq!(rc, ffi::SQLITE_OK);
            assert!(
                !wal.is_null() && std::ptr::eq((*wal).pMethods, &WAL_METHODS),
                "the WAL file gathers"
            );
            let g = gather(wal);
            (g.asked, g.made)
        }
    }

    /// `rows` rows of 500 bytes under scattered keys, in one transaction.
    fn commit_rows(conn: &Connection, from: u64, rows: u64) {
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        for i in from..from + rows {
            let key = format!("{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            conn.execute("INSERT INTO t (k, v) VALUES (?1, zeroblob(500))", [key])
                .expect("insert");
        }
        conn.execute_batch("COMMIT").expect("commit");
    }

    fn count(path: &std::path::Path) -> i64 {
        let reader = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("reader");
        reader
            .query_row("SELECT count(*) FROM t", (), |r| r.get(0))
            .expect("count")
    }

    #[test]
    fn a_commit_of_many_frames_is_two_writes() {
        let dir = tempfile::tempdir().expect("dir");
        let conn = open_gathering(&dir.path().join("g.db"), "FULL");
        commit_rows(&conn, 0, 50); // the WAL's header, first frames
        let before = wal_writes(&conn);
        commit_rows(&conn, 1_000, 100);
        let (asked, made) = (wal_writes(&conn).0 - before.0, wal_writes(&conn).1 - before.1);
        assert!(
            asked >= 40,
            "100 scattered rows of 500 bytes: at least 20 frames ({asked} writes)"
        );
        assert_eq!(made, 2, "everything up to the commit frame's header, then its page");
    }

    #[test]
    fn every_commit_is_readable_at_once_under_synchronous_normal() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("n.db");
        let conn = open_gathering(&path, "NORMAL");
        for round in 0..20 {
            commit_rows(&conn, round * 100, 7);
            assert_eq!(
                count(&path),
                i64::try_from((round + 1) * 7).expect("small"),
                "after commit {round}"
            );
        }
    }

    #[test]
    fn checkpoints_and_wal_restarts_keep_every_row() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("c.db");
        let conn = open_gathering(&path, "FULL");
        conn.pragma_update(None, "wal_autocheckpoint", 20)
            .expect("checkpoint often");
        for round in 0..60 {
            commit_rows(&conn, round * 1_000, 1 + round % 9);
        }
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", (), |r| r.get(0))
            .expect("check");
        assert_eq!(integrity, "ok");
        let expected: u64 = (0..60).map(|round| 1 + round % 9).sum();
        assert_eq!(count(&path), i64::try_from(expected).expect("small"));
        drop(conn);
        // Reopened without this VFS, recovering the WAL from the file alone.
        assert_eq!(count(&path), i64::try_from(expected).expect("small"));
    }

    #[test]
    fn a_transaction_larger_than_the_gather_limit_commits_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("big.db");
        let conn = open_gathering(&path, "FULL");
        conn.execute(
            "INSERT INTO t (k, v) VALUES ('big', zeroblob(?1))",
            [i64::try_from(3 * GATHER_BYTES_MAX).expect("small")],
        )
        .expect("a blob of several gather buffers");
        commit_rows(&conn, 0, 3_000);
        let big: i64 = conn
            .query_row("SELECT length(v) FROM t WHERE k = 'big'", (), |r| r.get(0))
            .expect("read");
        assert_eq!(usize::try_from(big).expect("positive"), 3 * GATHER_BYTES_MAX);
        assert_eq!(count(&path), 3_001);
    }

    #[test]
    fn recognises_only_commit_headers() {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        assert!(!is_commit_header(&header), "a frame of a commit's middle");
        header[7] = 3;
        assert!(is_commit_header(&header));
        assert!(!is_commit_header(&[1u8; 32]), "the WAL header");
        assert!(!is_commit_header(&[1u8; 4096]), "a page");
    }
}
