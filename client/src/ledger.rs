//! The client's own durable memory: every payment it intends to make, written
//! and fsynced before the first attempt, so that a client that crashes can
//! finish its payments later with the same keys (`client resume`) instead of
//! minting new ones and paying twice.
//!
//! The file is JSON lines:
//!
//! ```text
//! {"type":"header","format":"client-ledger-2","intents":N,"baseline_id":B,"seed":S}
//! {"type":"intent","index":0,"key":"pay-…","src":"bianca","dest":"marc","amount_minor":100}
//! … N intent lines …
//! {"type":"complete","intents":N}
//! {"type":"done","key":"pay-…","outcome":"confirmed"}     (appended as payments finish)
//! ```
//!
//! A ledger is either complete or not there: it is written to `FILE.partial`
//! in the same directory, fsynced, then linked into place and the directory
//! fsynced, so a client killed while creating it leaves only `FILE.partial`.
//! The header's count and the `complete` line make a ledger say that it is
//! whole; one that does not is refused. A torn last `done` line (killed
//! mid-append) is cut off on opening.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::intents::{INTENTS_MAX, Intents, IntentsBuilder};
use crate::lines::LineWriter;

/// The format this client writes and reads; older ledgers had no header.
pub const LEDGER_FORMAT: &str = "client-ledger-2";
/// The largest ledger read back, in lines: a bound on the time and memory of
/// `resume` (a million intents and several resumes' worth of `done` lines).
pub const LEDGER_LINES_MAX: usize = 10_000_000;
/// The longest line accepted: an intent with a 255-byte key and two 64-byte
/// accounts is under 500 bytes, so anything longer is not a ledger line.
const LEDGER_LINE_BYTES_MAX: usize = 4096;

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Line {
    Header {
        format: String,
        intents: usize,
        baseline_id: i64,
        seed: u64,
    },
    Intent {
        index: usize,
        key: String,
        src: String,
        dest: String,
        amount_minor: i64,
    },
    Complete {
        intents: usize,
    },
    Done {
        key: String,
        outcome: Finish,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    Confirmed,
    GivenUp,
}

/// What the header records about the run that created the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// The service's last payment id before the first payment was sent:
    /// every payment of this ledger made since has a higher id.
    pub baseline_id: i64,
    pub seed: u64,
}

/// An open ledger, appending `done` lines from a writer thread.
pub struct Ledger {
    path: PathBuf,
    out: LineWriter,
}

/// A ledger read back by [`Ledger::open`].
pub struct Opened {
    pub ledger: Ledger,
    pub meta: Meta,
    pub intents: Intents,
    /// Indexes of the intents an earlier run confirmed (got a 2xx for).
    pub confirmed: HashSet<usize>,
    /// The length of a torn last line that was cut off, if there was one.
    pub repaired_bytes: Option<u64>,
}

impl Opened {
    /// The intents not confirmed yet, in ledger order.
    pub fn unfinished(&self) -> Intents {
        self.intents
            .filter(|at| !self.confirmed.contains(&self.intents.index(at)))
    }
}

/// `dir/ledger.jsonl` → `dir/ledger.jsonl.partial`: where a ledger is
/// written before it is complete.
pub fn partial_path(path: &Path) -> anyhow::Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let mut partial = name.to_owned();
    partial.push(".partial");
    Ok(path.with_file_name(partial))
}

impl Ledger {
    /// Creates a complete ledger holding `intents`, durably, or nothing.
    /// Blocking (file I/O and fsync): call it off the async workers.
    pub fn create(path: &Path, intents: &Intents, meta: Meta) -> anyhow::Result<Ledger> {
        if path.exists() {
            bail!(
                "the ledger {} already exists: finish it with `client resume --ledger {}`, or choose another file",
                path.display(),
                path.display()
            );
        }
        let partial = partial_path(path)?;
        let file = match OpenOptions::new().write(true).create_new(true).open(&partial) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                "{} exists: a `client pay --ledger {}` was killed while creating its ledger (or is creating it now); \
                 it never sent a payment from it. Remove {} and start again",
                partial.display(),
                path.display(),
                partial.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", partial.display())),
        };
        let written = write_all(file, intents, meta).and_then(|()| publish(&partial, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} to append", path.display()))?;
        Ok(Ledger {
            path: path.to_owned(),
            out: LineWriter::spawn("ledger", file)?,
        })
    }

    /// Opens a complete ledger: its intents and which of them were confirmed.
    /// A torn last line is cut off (and reported in `repaired_bytes`); a
    /// ledger that is not complete is refused with what happened and what to
    /// do. Blocking: call it off the async workers.
    pub fn open(path: &Path) -> anyhow::Result<Opened> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing(path)),
            Err(e) => return Err(e).with_context(|| format!("cannot open the ledger {}", path.display())),
        };
        let mut lines = LineReader::new(file, path);
        let (meta, count) = read_header(&mut lines)?;
        let intents = read_intents(&mut lines, count)?;
        let confirmed = read_done(&mut lines, &intents)?;
        let repaired_bytes = match lines.torn {
            Some(bytes) => {
                cut(path, lines.complete_len)?;
                Some(bytes)
            }
            None => None,
        };
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} to append", path.display()))?;
        Ok(Opened {
            ledger: Ledger {
                path: path.to_owned(),
                out: LineWriter::spawn("ledger", file)?,
            },
            meta,
            intents,
            confirmed,
            repaired_bytes,
        })
    }

    /// Records that a payment finished. Not synced: a lost line only makes a
    /// later `resume` retry a confirmed payment, which its key turns into a replay.
    pub async fn finish(&self, key: &str, outcome: Finish) -> anyhow::Result<()> {
        let line = serde_json::to_string(&Line::Done {
            key: key.to_owned(),
            outcome,
        })?;
        self.out
            .append(line)
            .await
            .with_context(|| format!("cannot append to {}", self.path.display()))
    }

    /// Simulates the process dying: lines appended but not yet written are
    /// lost, as they would be (a plain drop would write them).
    pub async fn abandon_unflushed(&self) {
        self.out.abandon().await;
    }

    /// Writes and fsyncs every line appended so far.
    pub async fn flush(&self) -> anyhow::Result<()> {
        self.out
            .flush(true)
            .await
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Header, intents and the completion line, then fsync.
fn write_all(file: File, intents: &Intents, meta: Meta) -> anyhow::Result<()> {
    let mut out = BufWriter::new(file);
    let mut line = |line: &Line| -> anyhow::Result<()> {
        serde_json::to_writer(&mut out, line)?;
        out.write_all(b"\n")?;
        Ok(())
    };
    line(&Line::Header {
        format: LEDGER_FORMAT.to_owned(),
        intents: intents.len(),
        baseline_id: meta.baseline_id,
        seed: meta.seed,
    })?;
    for i in intents.iter() {
        line(&Line::Intent {
            index: i.index,
            key: i.key,
            src: i.src,
            dest: i.dest,
            amount_minor: i.amount_minor,
        })?;
    }
    line(&Line::Complete { intents: intents.len() })?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all().context("cannot sync the ledger to disk")
}

/// Puts the finished `partial` at `path` without ever replacing a file
/// there (a hard link fails if `path` exists), then makes it durable.
fn publish(partial: &Path, path: &Path) -> anyhow::Result<()> {
    match std::fs::hard_link(partial, path) {
        Ok(()) => std::fs::remove_file(partial).with_context(|| format!("cannot remove {}", partial.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("the ledger {} appeared while it was being written", path.display())
        }
        // A file system without hard links: rename, after checking again.
        Err(_) if !path.exists() => {
            std::fs::rename(partial, path).with_context(|| format!("cannot rename to {}", path.display()))?
        }
        Err(e) => return Err(e).with_context(|| format!("cannot link {}", path.display())),
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))
}

/// The error for a ledger that is not there, telling a killed creation apart.
fn missing(path: &Path) -> anyhow::Error {
    match partial_path(path) {
        Ok(partial) if partial.exists() => anyhow::anyhow!(
            "there is no ledger at {}, only {}: the `client pay --ledger {}` that was creating it was killed \
             before the ledger was complete, so it never sent a payment from it. Nothing can be resumed; \
             remove {} and start again with `client pay --ledger {}`",
            path.display(),
            partial.display(),
            path.display(),
            partial.display(),
            path.display()
        ),
        _ => anyhow::anyhow!("there is no ledger at {}", path.display()),
    }
}

/// Cuts the file to `len` bytes (dropping a torn last line) and fsyncs it.
fn cut(path: &Path, len: u64) -> anyhow::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {} to repair it", path.display()))?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot repair {}", path.display()))
}

/// Complete lines of a ledger, one at a time, bounded in length and number;
/// a last line without its newline is a torn write, noted in `torn`.
struct LineReader<'a> {
    input: BufReader<File>,
    path: &'a Path,
    number: usize,
    /// Bytes up to the end of the last complete line.
    complete_len: u64,
    torn: Option<u64>,
    buf: Vec<u8>,
}

impl<'a> LineReader<'a> {
    fn new(file: File, path: &'a Path) -> LineReader<'a> {
        LineReader {
            input: BufReader::new(file),
            path,
            number: 0,
            complete_len: 0,
            torn: None,
            buf: Vec::new(),
        }
    }

    /// The next complete line, parsed; `None` at the end (or at a torn tail).
    fn next(&mut self) -> anyhow::Result<Option<Line>> {
        self.buf.clear();
        let limit = LEDGER_LINE_BYTES_MAX as u64 + 1;
        let n = (&mut self.input)
            .take(limit)
            .read_until(b'\n', &mut self.buf)
            .with_context(|| format!("cannot read the ledger {}", self.path.display()))?;
        if n == 0 {
            return Ok(None);
        }
        self.number += 1;
        if self.buf.last() != Some(&b'\n') {
            if n as u64 == limit {
                bail!(
                    "{}:{}: a line longer than {LEDGER_LINE_BYTES_MAX} bytes: not a ledger",
                    self.path.display(),
                    self.number
                );
            }
            self.torn = Some(n as u64);
            return Ok(None);
        }
        if self.number > LEDGER_LINES_MAX {
            bail!(
                "the ledger {} has more than {LEDGER_LINES_MAX} lines",
                self.path.display()
            );
        }
        self.complete_len += n as u64;
        serde_json::from_slice(&self.buf)
            .map(Some)
            .with_context(|| format!("{}:{}: not a ledger line", self.path.display(), self.number))
    }

    /// The error for a ledger that ends before its completion line.
    fn incomplete(&self, announced: usize, found: usize) -> anyhow::Error {
        let path = self.path.display();
        anyhow::anyhow!(
            "{path} is not a complete ledger: its header announces {announced} payments, but the file ends after \
             {found} of them without the completion line. It was cut short (a client killed while writing it, \
             or a copy that did not finish); resuming it would silently drop the rest. Start again: remove \
             {path} and run `client pay --ledger {path}`"
        )
    }
}

fn read_header(lines: &mut LineReader) -> anyhow::Result<(Meta, usize)> {
    let not_ours = |path: &Path| {
        anyhow::anyhow!(
            "{}:1: no `{LEDGER_FORMAT}` header: this file was not written by this version of \
             `client pay --ledger` (or is not a ledger), so it cannot be resumed",
            path.display()
        )
    };
    match lines.next() {
        Ok(Some(Line::Header {
            format,
            intents,
            baseline_id,
            seed,
        })) if format == LEDGER_FORMAT => {
            if intents > INTENTS_MAX {
                bail!(
                    "{}: announces {intents} payments, more than {INTENTS_MAX}",
                    lines.path.display()
                );
            }
            Ok((Meta { baseline_id, seed }, intents))
        }
        Ok(None) if lines.torn.is_none() => bail!("the ledger {} is empty", lines.path.display()),
        _ => Err(not_ours(lines.path)),
    }
}

fn read_intents(lines: &mut LineReader, count: usize) -> anyhow::Result<Intents> {
    let mut intents = IntentsBuilder::with_capacity(count);
    let mut read = 0;
    // Indexes seen, once they stop being 0, 1, 2, ... (as this client writes them).
    let mut indexes: Option<HashSet<usize>> = None;
    loop {
        let at = lines.number + 1;
        match lines.next()? {
            None => return Err(lines.incomplete(count, read)),
            Some(Line::Intent {
                index,
                key,
                src,
                dest,
                amount_minor,
            }) if read < count => {
                if index != read || indexes.is_some() {
                    let seen = indexes.get_or_insert_with(|| (0..read).collect());
                    if !seen.insert(index) {
                        bail!("{}:{at}: payment {index} appears twice", lines.path.display());
                    }
                }
                intents.push(index, &key, &src, &dest, amount_minor);
                read += 1;
            }
            Some(Line::Complete { intents: n }) if n == count && read == count => return Ok(intents.finish()),
            Some(_) => bail!(
                "{}:{at}: not what a complete ledger of {count} payments holds here: the file is damaged and cannot be resumed",
                lines.path.display()
            ),
        }
    }
}

/// The `done` lines: which intents (by index) were confirmed.
fn read_done(lines: &mut LineReader, intents: &Intents) -> anyhow::Result<HashSet<usize>> {
    let index_of = |key: &str| intents.position_of_key(key).map(|at| intents.index(at));
    let mut confirmed = HashSet::new();
    loop {
        let at = lines.number + 1;
        match lines.next()? {
            None => return Ok(confirmed),
            Some(Line::Done { key, outcome }) => {
                let Some(index) = index_of(&key) else {
                    bail!(
                        "{}:{at}: a payment {key:?} that the ledger does not hold",
                        lines.path.display()
                    );
                };
                if outcome == Finish::Confirmed {
                    confirmed.insert(index);
                }
            }
            Some(_) => bail!(
                "{}:{at}: only `done` lines may follow the completion line",
                lines.path.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intents(n: usize) -> Intents {
        Intents::repeat(n, "bianca", "marc", 100, 7)
    }

    const META: Meta = Meta {
        baseline_id: 41,
        seed: 7,
    };

    #[test]
    fn a_ledger_round_trips_and_leaves_no_partial_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("l.jsonl");
        drop(Ledger::create(&path, &intents(3), META).expect("create"));
        assert!(!partial_path(&path).expect("partial").exists());
        let opened = Ledger::open(&path).expect("open");
        assert_eq!(
            (
                opened.meta,
                opened.intents.iter().collect::<Vec<_>>(),
                opened.repaired_bytes
            ),
            (META, crate::runner::repeat(3, "bianca", "marc", 100, 7), None)
        );
        assert!(
            Ledger::create(&path, &intents(3), META).is_err(),
            "never replaces a ledger"
        );
    }

    #[test]
    fn a_truncated_ledger_is_refused_with_what_happened() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("l.jsonl");
        drop(Ledger::create(&path, &intents(10), META).expect("create"));
        let text = std::fs::read_to_string(&path).expect("read");
        // Cut after the header and four intents: a complete line boundary,
        // and in the middle of a line.
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        for cut_text in [
            lines[..5].concat(),
            format!("{}{}", lines[..5].concat(), &lines[5][..9]),
        ] {
            std::fs::write(&path, cut_text).expect("write");
            let error = format!("{:#}", Ledger::open(&path).err().expect("refused"));
            assert!(
                error.contains("not a complete ledger")
                    && error.contains("announces 10 payments")
                    && error.contains("after 4"),
                "{error}"
            );
        }
        std::fs::write(&path, lines[1..].concat()).expect("write");
        let error = format!("{:#}", Ledger::open(&path).err().expect("refused"));
        assert!(error.contains("no `client-ledger-2` header"), "{error}");
    }

    #[test]
    fn a_torn_done_line_is_cut_off() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("l.jsonl");
        drop(Ledger::create(&path, &intents(2), META).expect("create"));
        let complete = std::fs::read(&path).expect("read");
        let done = format!(
            "{{\"type\":\"done\",\"key\":\"{}\",\"outcome\":\"confirmed\"}}\n",
            intents(2).key(0)
        );
        let mut torn = complete.clone();
        torn.extend_from_slice(done.as_bytes());
        torn.extend_from_slice(&done.as_bytes()[..20]);
        std::fs::write(&path, &torn).expect("write");
        let opened = Ledger::open(&path).expect("open repairs");
        assert_eq!(opened.repaired_bytes, Some(20));
        assert_eq!(opened.confirmed, HashSet::from([0]));
        assert_eq!(std::fs::read(&path).expect("read").len(), complete.len() + done.len());
    }

    #[test]
    fn a_killed_creation_is_named_by_its_partial_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("l.jsonl");
        std::fs::write(partial_path(&path).expect("partial"), "{\"type\":\"header\"").expect("write");
        let error = format!("{:#}", Ledger::open(&path).err().expect("refused"));
        assert!(
            error.contains("l.jsonl.partial") && error.contains("was killed"),
            "{error}"
        );
        let error = format!("{:#}", Ledger::create(&path, &intents(1), META).err().expect("refused"));
        assert!(error.contains("was killed") && error.contains("Remove"), "{error}");
    }
}
