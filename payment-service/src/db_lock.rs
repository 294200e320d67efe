//! Who may use a database file, and which replica is alive: the single place
//! that decides both.
//!
//! **The file.** By default a service holds an exclusive `flock(2)` on
//! `<db>.lock` for as long as its writer runs, so a second service started on
//! the same file by accident refuses to start. With `--replica`, several
//! services share the file on purpose: each holds the same lock *shared*. An
//! exclusive service refuses while replicas run and replicas refuse while an
//! exclusive service runs, each saying what to do. The kernel drops the lock
//! when the process dies, so a crash never leaves a stale lock.
//!
//! **Replicas.** Every service (exclusive or not) is a replica with a random
//! id, and holds an exclusive `flock` on `<db>.replica-<id>.lock` for its
//! whole life. Leases (keys in flight) are written with the id of the replica
//! that took them. Anyone who can take that lock knows the replica is dead:
//! its leases may be expired at once ([`dead_replicas`]), and only those.
//! Start-up never expires every lease, because another replica may be alive.
//!
//! Lock files next to the database rather than locks on the database itself:
//! SQLite uses POSIX record locks on its files, and closing any other
//! descriptor of the same file would silently drop those.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// How a service shares its database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sharing {
    /// The only service on the file (the default: it catches accidents).
    Exclusive,
    /// One of several services on the file (`--replica`).
    Replica,
}

/// A claim on a database file (exclusive or shared), released on drop.
#[derive(Debug)]
pub(crate) struct DbLock {
    // The lock lives as long as this descriptor is open.
    _file: File,
}

/// `<db>.lock`, next to the database.
pub(crate) fn lock_path(db: &Path) -> PathBuf {
    with_suffix(db, ".lock")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn open_rw(path: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

impl DbLock {
    /// Takes the lock for `db` as `sharing` says, or explains who holds it
    /// and what to do.
    pub(crate) fn acquire(db: &Path, sharing: Sharing) -> anyhow::Result<DbLock> {
        let path = lock_path(db);
        let mut file = open_rw(&path, true).with_context(|| format!("cannot open the lock file {}", path.display()))?;
        let lock_error = |e| anyhow::Error::new(e).context(format!("cannot lock {}", path.display()));
        match sharing {
            Sharing::Exclusive => {
                if !try_flock(&file, Flock::Exclusive).map_err(lock_error)? {
                    // Shared holders only: replicas run on the file.
                    let replicas = try_flock(&file, Flock::Shared).map_err(lock_error)?;
                    bail!(refusal(db, &path, &mut file, replicas));
                }
                // For the operator who finds the file: which process holds it.
                file.set_len(0)?;
                file.rewind()?;
                writeln!(file, "pid {}", std::process::id())?;
            }
            Sharing::Replica => {
                if !REPLICAS_SUPPORTED {
                    bail!("--replica needs flock(2), which this platform does not have");
                }
                if !try_flock(&file, Flock::Shared).map_err(lock_error)? {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    bail!(
                        "the database {} is in use by a payment-service started without --replica ({}, holding {}); \
                         a replica would take over its payments. Stop it, then start every service on this file with --replica",
                        db.display(),
                        describe_holder(&holder),
                        path.display()
                    );
                }
            }
        }
        Ok(DbLock { _file: file })
    }
}

/// Why an exclusive service cannot have the file.
fn refusal(db: &Path, path: &Path, file: &mut File, replicas: bool) -> String {
    if replicas {
        return format!(
            "the database {} is shared by payment-service replicas (started with --replica, holding {} shared); \
             an exclusive service would take over their payments. Start this one with --replica too, \
             or stop the replicas first",
            db.display(),
            path.display()
        );
    }
    let mut holder = String::new();
    let _ = file.read_to_string(&mut holder);
    format!(
        "the database {} is in use by another payment-service ({}, holding {}); \
         two services on one file would take over each other's payments. \
         Stop the other service first, give this one its own --db, or run both with --replica",
        db.display(),
        describe_holder(&holder),
        path.display()
    )
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

/// A replica's id: random, shown as 8 hex digits (in `/health`, `/stats`, the
/// name of its liveness file), stored with its leases as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ReplicaId(u32);

impl ReplicaId {
    /// The id as stored with a lease.
    pub(crate) fn as_i64(self) -> i64 {
        i64::from(self.0)
    }

    /// A new random id.
    pub(crate) fn random() -> ReplicaId {
        ReplicaId(rand::random::<u32>())
    }

    pub(crate) fn as_u32(self) -> u32 {
        self.0
    }

    /// The id stored with a lease or in PostgreSQL's `replicas`.
    pub(crate) fn from_i64(id: i64) -> Option<ReplicaId> {
        u32::try_from(id).ok().map(ReplicaId)
    }

    fn parse(hex: &str) -> Option<ReplicaId> {
        (hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(hex, 16).ok().map(ReplicaId))
            .flatten()
    }
}

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// `<db>.replica-`: the liveness files' common prefix (then 8 hex digits and `.lock`).
fn liveness_prefix(db: &Path) -> PathBuf {
    with_suffix(db, ".replica-")
}

fn liveness_path(db: &Path, id: ReplicaId) -> PathBuf {
    with_suffix(&liveness_prefix(db), &format!("{id}.lock"))
}

/// Attempts at a fresh replica id: each is a random 32-bit id whose file
/// does not exist yet, so more than a few failures mean something else is
/// wrong (a directory that cannot be written).
pub(crate) const REPLICA_ID_ATTEMPTS_MAX: usize = 16;

/// This replica's id and the lock that says it is alive, held until drop.
/// A replica that dies leaves the file behind: the next replica (or restart)
/// that finds it unlocked expires its leases and removes it. A clean stop
/// removes it itself ([`Liveness::remove`]).
#[derive(Debug)]
pub(crate) struct Liveness {
    pub(crate) id: ReplicaId,
    path: PathBuf,
    _file: File,
}

impl Liveness {
    /// Picks a new id and locks its liveness file.
    pub(crate) fn take(db: &Path) -> anyhow::Result<Liveness> {
        for _ in 0..REPLICA_ID_ATTEMPTS_MAX {
            let id = ReplicaId(rand::random::<u32>());
            let path = liveness_path(db, id);
            // A new file only: never the id of a dead replica whose leases
            // have not been expired yet.
            let mut file = match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
            };
            let locked =
                try_flock(&file, Flock::Exclusive).with_context(|| format!("cannot lock {}", path.display()))?;
            // Between creating and locking, another replica may have found
            // the file unlocked, judged its owner dead and removed it: then
            // the path is no longer ours, and nobody could see us alive.
            if locked && same_file(&file, &path) {
                writeln!(file, "pid {}", std::process::id())?;
                return Ok(Liveness { id, path, _file: file });
            }
        }
        bail!(
            "cannot create a liveness file {}XXXXXXXX.lock in {REPLICA_ID_ATTEMPTS_MAX} attempts",
            liveness_prefix(db).display()
        )
    }
}

impl Liveness {
    /// Removes the liveness file at a clean stop, once this replica's leases
    /// are expired; the lock goes with the descriptor at drop.
    pub(crate) fn remove(&self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove this replica's liveness file");
        }
    }
}

/// A replica found dead: its liveness file, locked by us until
/// [`DeadReplica::forget`] removes it (after its leases were expired).
#[derive(Debug)]
pub(crate) struct DeadReplica {
    pub(crate) id: ReplicaId,
    path: PathBuf,
    _file: File,
}

impl DeadReplica {
    /// Removes the liveness file: the replica's leases are expired, nobody
    /// needs to find it again. Another replica may have removed it already.
    pub(crate) fn forget(self) {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a dead replica's liveness file");
            }
            _ => {}
        }
    }
}

/// Dead replicas taken per scan: enough for any number of replicas one
/// machine runs; the rest (after many crashes) are found by the next scans.
pub(crate) const DEAD_REPLICAS_PER_SCAN_MAX: usize = 1024;

/// Directory entries read per scan: the database's directory may hold other
/// files, and a scan runs every second; a huge directory is read in part.
const DIR_ENTRIES_SCANNED_MAX: usize = 100_000;

/// The replicas of `db` whose liveness file nobody holds (dead), except
/// `me`, each still locked so nobody takes it for alive meanwhile. Blocking
/// file I/O: call it from the writer thread or the blocking pool.
pub(crate) fn dead_replicas(db: &Path, me: ReplicaId) -> std::io::Result<Vec<DeadReplica>> {
    let prefix = liveness_prefix(db);
    let dir = prefix
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(name_prefix) = prefix.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let mut dead = Vec::new();
    for entry in std::fs::read_dir(dir)?.take(DIR_ENTRIES_SCANNED_MAX) {
        let Some(name) = entry?.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let id = name
            .strip_prefix(name_prefix)
            .and_then(|rest| rest.strip_suffix(".lock"))
            .and_then(ReplicaId::parse);
        let Some(id) = id.filter(|id| *id != me) else { continue };
        let path = dir.join(&name);
        let file = match open_rw(&path, false) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if try_flock(&file, Flock::Exclusive)? && same_file(&file, &path) {
            dead.push(DeadReplica { id, path, _file: file });
            if dead.len() == DEAD_REPLICAS_PER_SCAN_MAX {
                break;
            }
        }
    }
    Ok(dead)
}

/// Whether `path` still names the open `file` (it was not removed or replaced).
fn same_file(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

enum Flock {
    Exclusive,
    Shared,
}

/// Whether this platform has the locks replicas rely on.
const REPLICAS_SUPPORTED: bool = cfg!(unix);

/// Takes (or converts to) the lock without waiting: Ok(false) if another
/// open file holds a conflicting one.
#[cfg(unix)]
fn try_flock(file: &File, kind: Flock) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let op = match kind {
        Flock::Exclusive => libc::LOCK_EX,
        Flock::Shared => libc::LOCK_SH,
    };
    // SAFETY: flock(2) on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

#[cfg(not(unix))]
fn try_flock(_file: &File, _kind: Flock) -> std::io::Result<bool> {
    tracing::warn!("no advisory lock on this platform: make sure one service uses the database file");
    Ok(true)
}

/// Who this service is on its database, and how it finds replicas that
/// died: lock files for a SQLite file, a session of advisory locks for
/// PostgreSQL (`pg::Presence`). The writer holds it for the service's life;
/// the replica watcher shares it.
pub(crate) enum Presence {
    Files {
        db: PathBuf,
        // Before the lock: released first.
        liveness: Liveness,
        _lock: DbLock,
    },
    Pg(Box<std::sync::Mutex<crate::pg::Presence>>),
}

/// Replicas found dead, held so nobody takes them for alive until their
/// leases are expired.
pub(crate) enum Dead {
    Files(Vec<DeadReplica>),
    Pg(Vec<ReplicaId>),
}

impl Dead {
    pub(crate) fn ids(&self) -> Vec<ReplicaId> {
        match self {
            Dead::Files(dead) => dead.iter().map(|d| d.id).collect(),
            Dead::Pg(ids) => ids.clone(),
        }
    }
}

impl Presence {
    /// Takes the database as `sharing` says, and a new replica id.
    pub(crate) fn take(db: &Path, sharing: Sharing) -> anyhow::Result<Presence> {
        if let Some(url) = crate::config::postgres_url(db) {
            let presence = crate::pg::Presence::take(url, sharing)?;
            return Ok(Presence::Pg(Box::new(std::sync::Mutex::new(presence))));
        }
        let lock = DbLock::acquire(db, sharing)?;
        let liveness = Liveness::take(db)?;
        Ok(Presence::Files {
            db: db.to_owned(),
            liveness,
            _lock: lock,
        })
    }

    pub(crate) fn id(&self) -> ReplicaId {
        match self {
            Presence::Files { liveness, .. } => liveness.id,
            Presence::Pg(pg) => pg.lock().map_or(ReplicaId(0), |pg| pg.id),
        }
    }

    fn pg(&self) -> anyhow::Result<std::sync::MutexGuard<'_, crate::pg::Presence>> {
        match self {
            Presence::Pg(pg) => pg
                .lock()
                .map_err(|_| anyhow::anyhow!("the replica session's lock is poisoned")),
            Presence::Files { .. } => anyhow::bail!("not a PostgreSQL database"),
        }
    }

    /// The replicas that died, except this one. Blocking.
    pub(crate) fn dead(&self) -> anyhow::Result<Dead> {
        match self {
            Presence::Files { db, liveness, .. } => Ok(Dead::Files(dead_replicas(db, liveness.id)?)),
            Presence::Pg(_) => Ok(Dead::Pg(self.pg()?.dead_replicas()?)),
        }
    }

    /// Forgets dead replicas once their leases are expired. Blocking.
    pub(crate) fn forget(&self, dead: Dead) {
        match dead {
            Dead::Files(dead) => dead.into_iter().for_each(DeadReplica::forget),
            Dead::Pg(ids) => {
                if let Ok(mut pg) = self.pg() {
                    pg.forget(&ids);
                }
            }
        }
    }

    /// Lets go of dead replicas whose leases were not expired: the next scan
    /// finds them again. Blocking.
    pub(crate) fn release(&self, dead: Dead) {
        if let (Dead::Pg(ids), Ok(mut pg)) = (&dead, self.pg()) {
            pg.release(ids);
        }
    }

    /// A clean stop, after this replica's leases were expired.
    pub(crate) fn remove(&self) {
        match self {
            Presence::Files { liveness, .. } => liveness.remove(),
            Presence::Pg(_) => {
                if let Ok(mut pg) = self.pg() {
                    pg.remove();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("p.db");
        let first = DbLock::acquire(&db, Sharing::Exclusive).expect("first");
        let refused = DbLock::acquire(&db, Sharing::Exclusive)
            .expect_err("second")
            .to_string();
        assert!(refused.contains(&db.display().to_string()), "{refused}");
        assert!(refused.contains(&format!("pid {}", std::process::id())), "{refused}");
        assert!(refused.contains("Stop the other service first"), "{refused}");
        let replica = DbLock::acquire(&db, Sharing::Replica)
            .expect_err("a replica")
            .to_string();
        assert!(replica.contains("started without --replica"), "{replica}");
        drop(first);
        DbLock::acquire(&db, Sharing::Exclusive).expect("free again");
    }

    #[test]
    fn replicas_share_the_file_and_keep_an_exclusive_service_out() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("p.db");
        let a = DbLock::acquire(&db, Sharing::Replica).expect("replica a");
        let b = DbLock::acquire(&db, Sharing::Replica).expect("replica b");
        let refused = DbLock::acquire(&db, Sharing::Exclusive)
            .expect_err("exclusive")
            .to_string();
        assert!(refused.contains("shared by payment-service replicas"), "{refused}");
        assert!(refused.contains("--replica"), "{refused}");
        drop(a);
        assert!(DbLock::acquire(&db, Sharing::Exclusive).is_err(), "b still runs");
        drop(b);
        DbLock::acquire(&db, Sharing::Exclusive).expect("no replica left");
    }

    #[test]
    fn a_replica_is_dead_once_its_liveness_lock_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("p.db");
        let (a, b) = (Liveness::take(&db).unwrap(), Liveness::take(&db).unwrap());
        assert_ne!(a.id, b.id);
        assert!(dead_replicas(&db, b.id).unwrap().is_empty(), "a is alive");
        let a_id = a.id;
        drop(a);
        let dead = dead_replicas(&db, b.id).unwrap();
        assert_eq!(dead.iter().map(|d| d.id).collect::<Vec<_>>(), vec![a_id]);
        // Held by the finder until forgotten: another scan does not see it dead twice at once.
        assert!(dead_replicas(&db, b.id).unwrap().is_empty());
        dead.into_iter().for_each(DeadReplica::forget);
        assert!(!liveness_path(&db, a_id).exists());
        assert!(dead_replicas(&db, b.id).unwrap().is_empty());
        assert!(liveness_path(&db, b.id).exists(), "the live one stays");
    }
}
