//! A listener that bounds connections: how many are open at once, and how
//! long one may stay silent.
//!
//! axum 0.8 installs no timer in hyper, so hyper's header-read timeout is
//! off: a client that opens a connection and never finishes its request
//! would hold it for ever. Here every connection carries an idle deadline,
//! pushed back whenever bytes move; past it the next read or write fails and
//! hyper drops the connection. At the cap, the accept loop waits for a free
//! slot and new clients queue in the kernel's backlog instead of exhausting
//! file descriptors.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Open connections at most: well under a laptop's default 1024 file
/// descriptors once SQLite's files and the readers are counted.
pub const CONNECTIONS_COUNT_MAX: usize = 768;

/// A connection moving no bytes for this long is closed. Longer than any
/// request may take to answer (the writer wait is 30 s), short enough that
/// abandoned connections do not pile up.
pub const CONNECTION_IDLE_S_MAX: u64 = 120;

pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    idle: Duration,
}

impl LimitedListener {
    pub fn new(inner: TcpListener) -> LimitedListener {
        LimitedListener::with_limits(inner, CONNECTIONS_COUNT_MAX, Duration::from_secs(CONNECTION_IDLE_S_MAX))
    }

    pub fn with_limits(inner: TcpListener, connections_count_max: usize, idle: Duration) -> LimitedListener {
        LimitedListener {
            inner,
            permits: Arc::new(Semaphore::new(connections_count_max)),
            idle,
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (LimitedStream, std::net::SocketAddr) {
        loop {
            let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
                // The semaphore is never closed; should it be, stop accepting.
                std::future::pending::<()>().await;
                continue;
            };
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let idle = Box::pin(tokio::time::sleep(self.idle));
                    return (
                        LimitedStream {
                            stream,
                            _permit: permit,
                            idle,
                            idle_limit: self.idle,
                        },
                        addr,
                    );
                }
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection with its slot and its idle deadline.
pub struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Pin<Box<Sleep>>,
    idle_limit: Duration,
}

impl LimitedStream {
    fn touch(&mut self) {
        let next = tokio::time::Instant::now() + self.idle_limit;
        self.idle.as_mut().reset(next);
    }

    /// Called when the socket is not ready: an error once the deadline passed.
    fn idle_error(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.idle
            .as_mut()
            .poll(cx)
            .map(|()| io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long"))
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
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(result) => {
                self.touch();
                Poll::Ready(result)
            }
            Poll::Pending => self.idle_error(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
