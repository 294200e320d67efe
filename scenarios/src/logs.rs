//! Where the parts' logs go while the tour talks to a room: into
//! `parts.log` in the lesson's scratch directory (kept with `--keep`), never
//! between the lines of the narrative. The lesson's report then counts the
//! warnings and errors and names the most frequent ones.
//!
//! With `RUST_LOG` set, logging is eo-core's as in every other binary: on
//! stderr, filtered by `RUST_LOG`, for those who asked for it.
//!
//! Lines are written by one thread behind a bounded queue, so a log call on
//! an async worker never waits for the disk; when the queue is full, lines
//! are dropped and counted.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use serde::Serialize;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Log lines queued for the writer thread at most; beyond, lines are dropped
/// (and counted) rather than slowing the parts down.
const LOG_QUEUE_LINES_MAX: usize = 8192;
/// Distinct messages a lesson's report names at most.
const REPORTED_MESSAGES_MAX: usize = 3;
/// Bytes of a log file the summary reads at most (a runaway log cannot make
/// the report slow).
const SUMMARY_READ_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// What the parts log into the file when `RUST_LOG` is not set.
const FILE_FILTER: &str = "info";
/// The file in each lesson's directory.
pub const LOG_FILE: &str = "parts.log";

enum Msg {
    Line(Vec<u8>),
    /// Write to this file from now on (None: to stderr); acknowledged once
    /// everything before it is written.
    Switch(Option<File>, SyncSender<()>),
}

struct Route {
    queue: SyncSender<Msg>,
    dropped: AtomicU64,
    /// The current lesson's file, for a child process's stderr.
    current: std::sync::Mutex<Option<PathBuf>>,
}

static ROUTE: OnceLock<Route> = OnceLock::new();

/// Installs logging for the runner: eo-core's (stderr) when `RUST_LOG` is
/// set, else the per-lesson files. Call once, at start.
pub fn init() {
    if std::env::var_os("RUST_LOG").is_some() {
        eo_core::logging::init("warn");
        return;
    }
    let (queue, lines) = sync_channel(LOG_QUEUE_LINES_MAX);
    let spawned = std::thread::Builder::new()
        .name("parts-log".into())
        .spawn(move || write_lines(lines));
    if spawned.is_err() {
        eo_core::logging::init("warn");
        return;
    }
    let route = Route {
        queue,
        dropped: AtomicU64::new(0),
        current: std::sync::Mutex::new(None),
    };
    if ROUTE.set(route).is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(FILE_FILTER))
            .with_writer(Routed)
            .with_ansi(false)
            .try_init();
    }
}

/// The writer thread: lines to the current file or, between lessons, stderr.
fn write_lines(lines: Receiver<Msg>) {
    let mut file: Option<File> = None;
    for msg in lines {
        match msg {
            Msg::Line(line) => {
                let _ = match file.as_mut() {
                    Some(f) => f.write_all(&line),
                    None => std::io::stderr().write_all(&line),
                };
            }
            Msg::Switch(next, done) => {
                if let Some(f) = file.as_mut() {
                    let _ = f.flush();
                }
                file = next;
                let _ = done.send(());
            }
        }
    }
}

/// tracing's writer: one formatted event per `write`, handed to the thread.
struct Routed;

struct RoutedLine(Vec<u8>);

impl<'a> MakeWriter<'a> for Routed {
    type Writer = RoutedLine;
    fn make_writer(&'a self) -> RoutedLine {
        RoutedLine(Vec::new())
    }
}

impl Write for RoutedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RoutedLine {
    fn drop(&mut self) {
        let Some(route) = ROUTE.get() else { return };
        if self.0.is_empty() {
            return;
        }
        if let Err(TrySendError::Full(_)) = route.queue.try_send(Msg::Line(std::mem::take(&mut self.0))) {
            route.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a lesson's parts logged, for its report.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LogSummary {
    pub warnings: u64,
    pub errors: u64,
    /// The most frequent messages, errors first: (level, count, message).
    pub top: Vec<(String, u64, String)>,
    /// Lines dropped because the writer fell behind (whole run so far).
    pub dropped: u64,
    /// Where the file stays, if it is kept.
    pub kept: Option<PathBuf>,
}

/// One lesson's log file, routed while this lives.
pub struct LessonLog {
    path: Option<PathBuf>,
}

impl LessonLog {
    /// Routes the parts' logs to `dir/parts.log` (nothing happens when the
    /// runner logs to stderr, or in tests, where no route is installed).
    pub async fn open(dir: &Path) -> LessonLog {
        let Some(route) = ROUTE.get() else {
            return LessonLog { path: None };
        };
        let path = dir.join(LOG_FILE);
        let created = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || File::create(path)).await
        };
        let Ok(Ok(file)) = created else {
            return LessonLog { path: None };
        };
        switch(route, Some(file)).await;
        if let Ok(mut current) = route.current.lock() {
            *current = Some(path.clone());
        }
        LessonLog { path: Some(path) }
    }

    /// Stops routing to the file and summarises it.
    pub async fn close(self, kept: bool) -> Option<LogSummary> {
        let route = ROUTE.get()?;
        let path = self.path?;
        if let Ok(mut current) = route.current.lock() {
            *current = None;
        }
        switch(route, None).await;
        let read = path.clone();
        let mut summary = tokio::task::spawn_blocking(move || summarize(&read)).await.ok()?;
        summary.dropped = route.dropped.load(Ordering::Relaxed);
        summary.kept = kept.then_some(path);
        Some(summary)
    }
}

/// Hands the writer thread a new destination and waits until it took it.
async fn switch(route: &Route, file: Option<File>) {
    let (done, taken) = sync_channel(1);
    let queue = route.queue.clone();
    // The queue may be full: wait for room on the blocking pool.
    let _ = tokio::task::spawn_blocking(move || {
        if queue.send(Msg::Switch(file, done)).is_ok() {
            let _ = taken.recv();
        }
    })
    .await;
}

/// Where a child process of the current lesson should write its stderr (its
/// logs): the lesson's file, stderr itself when `RUST_LOG` is set, or nowhere.
/// Blocking (opens a file): call it from the blocking pool.
pub fn child_stderr() -> std::process::Stdio {
    let Some(route) = ROUTE.get() else {
        return if std::env::var_os("RUST_LOG").is_some() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        };
    };
    let path = route.current.lock().ok().and_then(|c| c.clone());
    let file = path.and_then(|p| std::fs::OpenOptions::new().append(true).open(p).ok());
    file.map_or_else(std::process::Stdio::null, std::process::Stdio::from)
}

/// Counts warnings and errors in a log file and groups them by message.
pub fn summarize(path: &Path) -> LogSummary {
    let mut summary = LogSummary::default();
    let Ok(file) = File::open(path) else {
        return summary;
    };
    let mut groups: BTreeMap<(String, String), u64> = BTreeMap::new();
    let reader = BufReader::new(std::io::Read::take(file, SUMMARY_READ_BYTES_MAX));
    for line in reader.lines().map_while(Result::ok) {
        let Some((level, message)) = level_and_message(&line) else {
            continue;
        };
        match level {
            "ERROR" => summary.errors += 1,
            "WARN" => summary.warnings += 1,
            _ => continue,
        }
        *groups.entry((level.to_owned(), message)).or_insert(0) += 1;
    }
    let mut top: Vec<(String, u64, String)> = groups.into_iter().map(|((l, m), n)| (l, n, m)).collect();
    top.sort_by_key(|(level, count, _)| (level != "ERROR", std::cmp::Reverse(*count)));
    top.truncate(REPORTED_MESSAGES_MAX);
    summary.top = top;
    summary
}

/// `2026-01-01T00:00:00.000000Z  WARN target: message key=value` →
/// (`WARN`, `target: message`): the fields are left out, so the same message
/// about different connections groups together.
fn level_and_message(line: &str) -> Option<(&str, String)> {
    let mut words = line.split_whitespace();
    let _time = words.next()?;
    let level = words.next()?;
    if !matches!(level, "ERROR" | "WARN" | "INFO" | "DEBUG" | "TRACE") {
        return None;
    }
    let message: Vec<&str> = words.take_while(|w| !w.contains('=')).collect();
    Some((level, message.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_warnings_and_errors_by_message_errors_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let lines = [
            "2026-11-25T01:00:00.000001Z  WARN chaos_proxy::proxy: upstream dial failed proxy=\"payment\" error=refused",
            "2026-11-25T01:00:00.000002Z  WARN chaos_proxy::proxy: upstream dial failed proxy=\"payment\" error=reset",
            "2026-11-25T01:00:00.000003Z  INFO payment_service: started db=x",
            "2026-11-25T01:00:00.000004Z ERROR payment_service::writer: commit failed code=10",
            "not a log line",
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let summary = summarize(&path);
        assert_eq!((summary.warnings, summary.errors), (2, 1));
        assert_eq!(
            summary.top,
            vec![
                (
                    "ERROR".to_owned(),
                    1,
                    "payment_service::writer: commit failed".to_owned()
                ),
                (
                    "WARN".to_owned(),
                    2,
                    "chaos_proxy::proxy: upstream dial failed".to_owned()
                ),
            ]
        );
    }
}
