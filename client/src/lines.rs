//! An append-only file of text lines, written by a thread of its own, so the
//! async workers that produce lines (attempt records, ledger `done` lines)
//! never block on file I/O.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

/// Lines queued for the writer thread at most: a producer faster than the
/// disk waits instead of growing the queue without bound.
const LINES_QUEUED_MAX: usize = 4096;

enum Command {
    Line(String),
    /// Write out what is buffered (and fsync with `sync`), then answer.
    Flush {
        sync: bool,
        done: oneshot::Sender<io::Result<()>>,
    },
    /// Drop what is buffered without writing it, and stop: what a process
    /// killed at this moment would have left on disk.
    Abandon {
        done: oneshot::Sender<()>,
    },
}

pub(crate) struct LineWriter {
    tx: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl LineWriter {
    /// Starts the writer thread for `file` (opened for writing or appending).
    pub(crate) fn spawn(name: &str, file: File) -> io::Result<LineWriter> {
        let (tx, rx) = mpsc::channel(LINES_QUEUED_MAX);
        let thread = std::thread::Builder::new()
            .name(format!("{name}-writer"))
            .spawn(move || write_lines(BufWriter::new(file), rx))?;
        Ok(LineWriter {
            tx,
            thread: Some(thread),
        })
    }

    /// Queues one line (a newline is added). Buffered: durable only after
    /// [`LineWriter::flush`] with `sync`.
    pub(crate) async fn append(&self, line: String) -> io::Result<()> {
        self.tx.send(Command::Line(line)).await.map_err(|_| stopped())
    }

    /// Writes out everything appended so far; with `sync`, fsyncs it too.
    pub(crate) async fn flush(&self, sync: bool) -> io::Result<()> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Command::Flush { sync, done })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Loses what is buffered, as a crash would, and stops the writer.
    pub(crate) async fn abandon(&self) {
        let (done, answer) = oneshot::channel();
        if self.tx.send(Command::Abandon { done }).await.is_ok() {
            let _ = answer.await;
        }
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        // Closing the channel ends the thread, which writes out its buffer;
        // it is not joined here, so dropping never blocks an async worker.
        drop(self.thread.take());
    }
}

fn stopped() -> io::Error {
    io::Error::other("the file writer has stopped (an earlier write failed)")
}

/// The thread's loop. The first write error is kept and reported by every
/// later flush; later lines are dropped, since a file with a hole in it would
/// be worse than one that stops.
fn write_lines(mut out: BufWriter<File>, mut rx: mpsc::Receiver<Command>) {
    let mut failed: Option<(io::ErrorKind, String)> = None;
    while let Some(command) = rx.blocking_recv() {
        match command {
            Command::Line(line) => {
                if failed.is_none()
                    && let Err(e) = out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n"))
                {
                    failed = Some((e.kind(), e.to_string()));
                }
            }
            Command::Flush { sync, done } => {
                let result = match &failed {
                    Some((kind, why)) => Err(io::Error::new(*kind, why.clone())),
                    None => out
                        .flush()
                        .and_then(|()| if sync { out.get_ref().sync_all() } else { Ok(()) }),
                };
                let _ = done.send(result);
            }
            Command::Abandon { done } => {
                let (_file, _lost) = out.into_parts();
                let _ = done.send(());
                return;
            }
        }
    }
}
