//! A bounded HTTP/1.1 server for an axum router, shared by both servers.
//!
//! `axum::serve` gives hyper no timer, so hyper's header-read deadline is off
//! and a client sending one header byte a second holds its connection for
//! ever; 800 such clients made the payment service unreachable. This accept
//! loop drives hyper itself, with:
//!
//! - a **connection cap** sized from the process's file-descriptor limit
//!   (raised to its hard limit at start), so capacity is cheap and large;
//!   at the cap the loop stops accepting and new clients wait in the kernel's
//!   backlog instead of exhausting descriptors;
//! - a **header-read deadline** (hyper's own, with a tokio timer): a request
//!   head must arrive whole within it, and a keep-alive connection that starts
//!   no new request within it is closed;
//! - a **body-read deadline** counted from the head: a body trickled in byte
//!   by byte fails with a body error (the handler answers 4xx), nothing stored;
//! - an **idle deadline**: a connection moving no bytes at all is closed;
//! - a **graceful drain** on shutdown, itself bounded.
//!
//! Together these make a slow-client attack cost the attacker a connection
//! per header-read deadline, while ordinary requests keep being answered.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// File descriptors kept back from the connection cap for everything else a
/// server opens (database files, upstream sockets of a proxy, log files).
pub const FDS_RESERVED_COUNT: u64 = 256;

/// After `accept` fails (usually: out of descriptors), wait this long before
/// trying again instead of spinning.
const ACCEPT_RETRY_MS: u64 = 50;

/// The bounds of one server. Every field has a unit in its name.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most (further clamped to the descriptor limit).
    pub connections_max: usize,
    /// A request head must be read whole within this, and an idle keep-alive
    /// connection must start its next request within it.
    pub header_read_ms_max: u64,
    /// A request body must be read whole within this, counted from its head.
    pub body_read_ms_max: u64,
    /// A connection moving no bytes either way for this long is closed
    /// (covers a handler's answer never being read).
    pub idle_ms_max: u64,
    /// On shutdown, open requests get this long to finish.
    pub drain_ms_max: u64,
}

/// Raises the soft limit on open files to the hard limit (as Go's runtime
/// does) and returns the soft limit now in force. A laptop's default soft
/// limit of 1024 would otherwise cap a server at a few hundred connections.
pub fn raise_open_files_limit() -> u64 {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return 1024;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                }
            }
        }
        // rlim_t is u64 on Linux and macOS but not on every unix.
        #[allow(clippy::unnecessary_cast)]
        let soft = limit.rlim_cur as u64;
        soft
    }
    #[cfg(not(unix))]
    {
        1024
    }
}

/// The connection cap actually used: `wanted`, unless the descriptor limit
/// cannot hold it next to [`FDS_RESERVED_COUNT`] others.
pub fn connections_cap(wanted: usize) -> usize {
    let fds = raise_open_files_limit();
    let room = fds.saturating_sub(FDS_RESERVED_COUNT).max(16);
    let cap = wanted.min(usize::try_from(room).unwrap_or(usize::MAX));
    if cap < wanted {
        tracing::warn!(
            wanted,
            cap,
            open_files_limit = fds,
            "the open-files limit caps connections; raise it with `ulimit -n`"
        );
    }
    cap
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting, lets open requests finish within `limits.drain_ms_max` and
/// returns. Errors of single connections are logged, never returned.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(connections_cap(limits.connections_max)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_ms_max))
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = accept(&listener, &permits) => accepted,
        };
        let Some((stream, permit)) = accepted else { break };
        let io = TokioIo::new(LimitedStream::new(stream, permit, limits.idle_ms_max));
        let body_read = Duration::from_millis(limits.body_read_ms_max);
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let request = request.map(|body| Body::new(DeadlineBody::new(body, body_read)));
            tower_service::Service::call(&mut router.clone(), request)
        });
        let connection = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let drain = Duration::from_millis(limits.drain_ms_max);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("open requests did not finish within the drain period; stopping anyway");
    }
    Ok(())
}

/// Waits for a free connection slot, then for a connection. `None` when the
/// semaphore is closed (never, today).
async fn accept(listener: &TcpListener, permits: &Arc<Semaphore>) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    let permit = Arc::clone(permits).acquire_owned().await.ok()?;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Answers are small and latency matters more than packet count.
                let _ = stream.set_nodelay(true);
                return Some((stream, permit));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
            }
        }
    }
}

/// A connection with its slot and its idle deadline, pushed back whenever
/// bytes move; past it the next read or write fails and hyper drops it.
pub struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Pin<Box<Sleep>>,
    idle_limit: Duration,
}

impl LimitedStream {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, idle_ms_max: u64) -> LimitedStream {
        let idle_limit = Duration::from_millis(idle_ms_max);
        LimitedStream {
            stream,
            _permit: permit,
            idle: Box::pin(tokio::time::sleep(idle_limit)),
            idle_limit,
        }
    }

    fn touch(&mut self) {
        let next = Instant::now() + self.idle_limit;
        self.idle.as_mut().reset(next);
    }

    /// Called when the socket is not ready: an error once the deadline passed.
    fn idle_error(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.idle
            .as_mut()
            .poll(cx)
            .map(|()| io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long"))
    }

    fn written(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(result) => {
                self.touch();
                Poll::Ready(result)
            }
            Poll::Pending => self.idle_error(cx).map(Err),
        }
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.idle_error(cx).map(Err),
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.written(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.written(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A request body that must be read whole before a deadline set when its
/// head arrived (tower-http's body timeout resets on every frame, so a
/// body trickled a byte at a time would never trip it).
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, limit: Duration) -> DeadlineBody {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

/// The error a body past its deadline reports to whoever reads it.
#[derive(Debug)]
pub struct BodyDeadlineExceeded;

impl std::fmt::Display for BodyDeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body was not received within the deadline")
    }
}

impl std::error::Error for BodyDeadlineExceeded {}

impl http_body::Body for DeadlineBody {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyDeadlineExceeded)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
