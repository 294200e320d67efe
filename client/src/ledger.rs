//! The client's own durable memory: every payment it intends to make, written
//! and fsynced before the first attempt, so that a client that crashes can
//! finish its payments later with the same keys (`client resume`) instead of
//! minting new ones and paying twice.
//!
//! The file is JSON lines: `{"type":"intent",...}` for each payment, then
//! `{"type":"done","key":...,"outcome":"confirmed"|"given_up"}` as payments
//! finish. A torn last line (the crash hit mid-write) is ignored.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::runner::Intent;

/// The largest ledger read back, in lines: a bound on memory for `resume`.
pub const LEDGER_LINES_MAX: usize = 10_000_000;

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Line {
    Intent {
        index: usize,
        key: String,
        src: String,
        dest: String,
        amount_minor: i64,
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

pub struct Ledger {
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
}

impl Ledger {
    /// Creates a new ledger holding `intents`, synced to disk before returning.
    pub fn create(path: &Path, intents: &[Intent]) -> anyhow::Result<Ledger> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| {
                format!(
                    "cannot create the ledger {} (if it exists, finish it with `client resume --ledger`)",
                    path.display()
                )
            })?;
        let mut out = BufWriter::new(file);
        for i in intents {
            let line = Line::Intent {
                index: i.index,
                key: i.key.clone(),
                src: i.src.clone(),
                dest: i.dest.clone(),
                amount_minor: i.amount_minor,
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        }
        out.flush()?;
        out.get_ref().sync_all().context("cannot sync the ledger to disk")?;
        Ok(Ledger {
            path: path.to_owned(),
            out: Mutex::new(out),
        })
    }

    /// Opens an existing ledger: all its intents, and the keys already confirmed.
    pub fn open(path: &Path) -> anyhow::Result<(Ledger, Vec<Intent>, HashSet<String>)> {
        let file = File::open(path).with_context(|| format!("cannot open the ledger {}", path.display()))?;
        let lines: Vec<String> = BufReader::new(file)
            .lines()
            .take(LEDGER_LINES_MAX + 1)
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot read the ledger {}", path.display()))?;
        if lines.len() > LEDGER_LINES_MAX {
            bail!("the ledger {} has more than {LEDGER_LINES_MAX} lines", path.display());
        }
        let (mut intents, mut confirmed) = (Vec::new(), HashSet::new());
        for (n, text) in lines.iter().enumerate() {
            match serde_json::from_str::<Line>(text) {
                Ok(Line::Intent {
                    index,
                    key,
                    src,
                    dest,
                    amount_minor,
                }) => intents.push(Intent {
                    index,
                    key,
                    src,
                    dest,
                    amount_minor,
                }),
                Ok(Line::Done {
                    key,
                    outcome: Finish::Confirmed,
                }) => {
                    confirmed.insert(key);
                }
                Ok(Line::Done {
                    outcome: Finish::GivenUp,
                    ..
                }) => {}
                Err(_) if n + 1 == lines.len() => {
                    tracing::warn!(line = n + 1, "ignoring a torn last line in the ledger");
                }
                Err(e) => bail!("{}:{}: not a ledger line: {e}", path.display(), n + 1),
            }
        }
        let file = OpenOptions::new().append(true).open(path)?;
        Ok((
            Ledger {
                path: path.to_owned(),
                out: Mutex::new(BufWriter::new(file)),
            },
            intents,
            confirmed,
        ))
    }

    /// Records that a payment finished. Not synced: a lost line only makes a
    /// later `resume` retry a confirmed payment, which its key turns into a replay.
    pub fn finish(&self, key: &str, outcome: Finish) -> anyhow::Result<()> {
        let line = serde_json::to_string(&Line::Done {
            key: key.to_owned(),
            outcome,
        })?;
        let mut out = self.out.lock().map_err(|_| anyhow::anyhow!("ledger writer poisoned"))?;
        writeln!(out, "{line}").with_context(|| format!("cannot append to {}", self.path.display()))
    }

    /// Simulates the process dying: lines appended but not yet flushed are
    /// lost, as they would be (a plain drop would flush them).
    pub fn abandon_unflushed(&self) {
        if let Ok(mut out) = self.out.lock()
            && let Ok(file) = out.get_ref().try_clone()
        {
            let old = std::mem::replace(&mut *out, BufWriter::new(file));
            let (_file, _lost) = old.into_parts();
        }
    }

    pub fn flush(&self) -> anyhow::Result<()> {
        let mut out = self.out.lock().map_err(|_| anyhow::anyhow!("ledger writer poisoned"))?;
        out.flush()?;
        out.get_ref().sync_all()?;
        Ok(())
    }
}
