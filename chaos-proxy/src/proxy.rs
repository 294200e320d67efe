//! The data plane of one proxy: its accept loop and its connections.
//!
//! A running proxy is one accept-loop task plus one task per connection.
//! The accept loop never dials: each connection task resolves and connects
//! to the upstream under a timeout, so a black-holed upstream cannot stall
//! accepting (a toxiproxy flaw). Stopping a proxy flips a `watch` flag that
//! the accept loop and every connection of that run observe.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::{ACCEPT_ERROR_BACKOFF_MS_MAX, PROXY_STOP_TIMEOUT_MS, UPSTREAM_HOST_ALIASES};
use crate::error::ApiError;
use crate::link::{self, ConnCtx, ExchangeTracker, LinkEnd};
use crate::loops;
use crate::stats::Stats;
use crate::toxic::{Direction, Toxic};

/// The toxics of a proxy as the data plane sees them: one snapshot per
/// change, each direction in creation order.
#[derive(Default, Debug)]
pub struct Chain {
    pub upstream: Vec<Toxic>,
    pub downstream: Vec<Toxic>,
}

impl Chain {
    /// Splits a proxy's toxics by direction, keeping creation order.
    pub fn from_toxics(toxics: &[Toxic]) -> Chain {
        let pick = |d| toxics.iter().filter(|t| t.direction == d).cloned().collect();
        Chain {
            upstream: pick(Direction::Upstream),
            downstream: pick(Direction::Downstream),
        }
    }

    pub fn for_direction(&self, dir: Direction) -> &[Toxic] {
        match dir {
            Direction::Upstream => &self.upstream,
            Direction::Downstream => &self.downstream,
        }
    }
}

/// What a proxy shares between the control plane and its connections. It
/// outlives restarts (disable/enable, address changes) of the proxy.
pub struct ProxyShared {
    pub name: String,
    /// The control plane publishes each new chain here; `send_replace`
    /// never waits for readers, so an API call cannot block on traffic.
    pub chain: watch::Sender<Arc<Chain>>,
    pub stats: Stats,
    /// Next connection index (accept order); zeroed with the stats.
    pub next_connection: AtomicU64,
}

impl ProxyShared {
    pub fn new(name: String, toxics: &[Toxic]) -> Arc<ProxyShared> {
        let (chain, _) = watch::channel(Arc::new(Chain::from_toxics(toxics)));
        Arc::new(ProxyShared {
            name,
            chain,
            stats: Stats::default(),
            next_connection: AtomicU64::new(0),
        })
    }

    pub fn publish(&self, toxics: &[Toxic]) {
        self.chain.send_replace(Arc::new(Chain::from_toxics(toxics)));
    }
}

/// Process-wide data-plane settings.
pub struct DataPlane {
    pub seed: u64,
    pub allow_remote: bool,
    pub dial_timeout: Duration,
    pub idle_timeout: Duration,
    /// One permit per live proxied connection, all proxies together.
    pub permits: Arc<Semaphore>,
    /// Host-name lookups of the control plane (listen and upstream names).
    pub resolver: Arc<dyn Resolve>,
}

/// What a host-name lookup returns.
pub type LookupFuture = Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;

/// Host-name resolution for the control plane. A trait so that tests can
/// hold a lookup open and show that nothing waits on it.
pub trait Resolve: Send + Sync {
    fn lookup(&self, host: &str, port: u16) -> LookupFuture;
}

/// The system resolver (`getaddrinfo` on tokio's blocking pool).
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup(&self, host: &str, port: u16) -> LookupFuture {
        let host = host.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect()) })
    }
}

/// A parsed upstream address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    Addr(SocketAddr),
    /// A host name resolved at every dial (only with `--allow-remote`).
    Host(String, u16),
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Addr(a) => write!(f, "{a}"),
            Upstream::Host(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// Parses `host:port`. Aliases (`localhost`, `payment`) mean 127.0.0.1;
/// anything that is not loopback needs `allow_remote`.
pub fn parse_upstream(s: &str, allow_remote: bool) -> Result<Upstream, ApiError> {
    let bad = |why: &str| {
        ApiError::BadRequest(format!(
            "invalid upstream {s:?}: {why} (expected host:port, e.g. 127.0.0.1:8080)"
        ))
    };
    if let Ok(addr) = s.parse::<SocketAddr>() {
        if !allow_remote && !addr.ip().is_loopback() {
            return Err(bad("not a loopback address; start with --allow-remote to allow it"));
        }
        return Ok(Upstream::Addr(addr));
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
    if host.is_empty() || host.contains(['/', ' ', '[', ']']) {
        return Err(bad("not a host name"));
    }
    if UPSTREAM_HOST_ALIASES.iter().any(|a| a.eq_ignore_ascii_case(host)) {
        return Ok(Upstream::Addr(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)));
    }
    if !allow_remote {
        return Err(bad(
            "only loopback addresses, localhost and payment are allowed; start with --allow-remote for other hosts",
        ));
    }
    Ok(Upstream::Host(host.to_owned(), port))
}

/// Resolves a listen string to the address to bind. Without `allow_remote`
/// wildcard addresses (`0.0.0.0`, `[::]`, empty host) bind 127.0.0.1, so the
/// workshop's `"listen": "0.0.0.0:8888"` stays on loopback.
pub async fn resolve_listen(s: &str, plane: &DataPlane) -> Result<SocketAddr, ApiError> {
    let allow_remote = plane.allow_remote;
    let loopback = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let bad = |why: &str| ApiError::BadRequest(format!("invalid listen {s:?}: {why}"));
    if s.is_empty() {
        return Ok(if allow_remote {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0)
        } else {
            loopback(0)
        });
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        if allow_remote || addr.ip().is_loopback() {
            return Ok(addr);
        }
        if addr.ip().is_unspecified() {
            return Ok(loopback(addr.port()));
        }
        return Err(bad("not a loopback address; start with --allow-remote to allow it"));
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
    if host.is_empty() {
        return Ok(if allow_remote {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port)
        } else {
            loopback(port)
        });
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(loopback(port));
    }
    if !allow_remote {
        return Err(bad(
            "only loopback addresses and localhost are allowed; start with --allow-remote for other hosts",
        ));
    }
    lookup(plane, host, port)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Internal(format!("lookup {host}: no address")))
}

/// Resolves `host` within the dial budget, in toxiproxy's error wording.
pub async fn lookup(plane: &DataPlane, host: &str, port: u16) -> Result<Vec<SocketAddr>, ApiError> {
    tokio::time::timeout(plane.dial_timeout, plane.resolver.lookup(host, port))
        .await
        .map_err(|_| ApiError::Internal(format!("lookup {host}: timed out")))?
        .map_err(|e| ApiError::Internal(format!("lookup {host}: {e}")))
}

/// A started proxy: its accept loop and the flag that stops its run.
pub struct Running {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    /// The accept loop hands its socket back when it stops.
    accept: JoinHandle<TcpListener>,
}

impl Running {
    /// Stops accepting and tells every connection of this run to close.
    /// Waits only for the accept loop (which exits at its next poll) and
    /// returns its still-bound socket, so that a restart on the same address
    /// cannot lose the port; `None` only if the loop did not stop in time
    /// (it is aborted then, which closes the socket).
    pub async fn stop(self) -> Option<Bound> {
        self.stop.send_replace(true);
        let guard = Duration::from_millis(PROXY_STOP_TIMEOUT_MS);
        let mut accept = self.accept;
        match tokio::time::timeout(guard, &mut accept).await {
            Ok(Ok(listener)) => Some(Bound {
                listener,
                addr: self.addr,
            }),
            Ok(Err(e)) => {
                tracing::error!(addr = %self.addr, error = %e, "accept loop failed");
                None
            }
            Err(_) => {
                tracing::warn!(addr = %self.addr, "accept loop did not stop in time; aborting it");
                accept.abort();
                None
            }
        }
    }
}

/// A bound listening socket and its real address (port 0 resolved).
pub struct Bound {
    pub listener: TcpListener,
    pub addr: SocketAddr,
}

/// Binds `listen` at once (a plain socket call, nothing to wait for), in
/// toxiproxy's error wording.
pub fn bind(listen: SocketAddr) -> Result<Bound, ApiError> {
    let fail = |e: std::io::Error| ApiError::Internal(format!("listen tcp {listen}: {e}"));
    let std_listener = std::net::TcpListener::bind(listen).map_err(fail)?;
    std_listener.set_nonblocking(true).map_err(fail)?;
    let addr = std_listener.local_addr().map_err(fail)?;
    let listener = TcpListener::from_std(std_listener).map_err(fail)?;
    Ok(Bound { listener, addr })
}

/// Starts accepting on `bound` for `shared`.
pub fn start(bound: Bound, upstream: Upstream, shared: Arc<ProxyShared>, plane: Arc<DataPlane>) -> Running {
    let Bound { listener, addr } = bound;
    let (stop, stop_rx) = watch::channel(false);
    tracing::info!(proxy = %shared.name, listen = %addr, upstream = %upstream, "proxy started");
    let run = Arc::new(RunCtx {
        shared,
        listen: addr,
        upstream,
        plane,
    });
    let accept = tokio::spawn(accept_loop(listener, run, stop_rx));
    Running { addr, stop, accept }
}

/// What every connection of one run shares.
struct RunCtx {
    shared: Arc<ProxyShared>,
    /// The bound address of this run.
    listen: SocketAddr,
    upstream: Upstream,
    plane: Arc<DataPlane>,
}

/// Resolves when the run is stopped (or its stop sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn accept_loop(listener: TcpListener, run: Arc<RunCtx>, mut stop_rx: watch::Receiver<bool>) -> TcpListener {
    let mut backoff_ms = 1;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stopped(&mut stop_rx) => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((client, peer)) => {
                backoff_ms = 1;
                let stats = &run.shared.stats;
                let index = run.shared.next_connection.fetch_add(1, Relaxed);
                stats.connections_accepted.fetch_add(1, Relaxed);
                match run.plane.permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(handle_connection(client, index, run.clone(), permit, stop_rx.clone()));
                    }
                    Err(_) => {
                        // Over the cap: refuse loudly (RST) rather than queue.
                        stats.connections_rejected.fetch_add(1, Relaxed);
                        tracing::warn!(proxy = %run.shared.name, %peer, "connection cap reached, resetting");
                        let _ = client.set_zero_linger();
                    }
                }
            }
            Err(e) => {
                tracing::warn!(proxy = %run.shared.name, error = %e, "accept failed, backing off");
                let pause = Duration::from_millis(backoff_ms);
                backoff_ms = (backoff_ms * 2).min(ACCEPT_ERROR_BACKOFF_MS_MAX);
                tokio::select! {
                    () = stopped(&mut stop_rx) => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    tracing::info!(proxy = %run.shared.name, "proxy stopped");
    listener
}

/// Connects to the run's upstream. Never to the run's own listen address:
/// the API refuses such an upstream, but a host name can start resolving to
/// it later, or a proxy re-enabled on port 0 can land on its upstream's
/// port, and each looped connection would dial again, up to the connection
/// cap (see `loops.rs`).
async fn dial(run: &RunCtx) -> std::io::Result<TcpStream> {
    let refused = |addr| {
        std::io::Error::other(format!(
            "upstream {addr} is this proxy's own listen address {} (a proxy loop)",
            run.listen
        ))
    };
    match &run.upstream {
        Upstream::Addr(addr) if loops::reaches(*addr, run.listen) => Err(refused(*addr)),
        Upstream::Addr(addr) => TcpStream::connect(addr).await,
        Upstream::Host(host, port) => {
            let mut last = std::io::Error::other(format!("{host}: no address"));
            for addr in tokio::net::lookup_host((host.as_str(), *port)).await? {
                if !run.plane.allow_remote && !addr.ip().is_loopback() {
                    continue;
                }
                if loops::reaches(addr, run.listen) {
                    last = refused(addr);
                    continue;
                }
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
}

/// Keeps `connections_active` right on every exit path, and releases the
/// connection's permit *before* the gauge drops, so that anyone who sees the
/// gauge fall can rely on the slot being free.
struct ActiveGuard<'a> {
    gauge: &'a AtomicU64,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.gauge.fetch_sub(1, Relaxed);
    }
}

/// Resolves once a whole idle period passed without traffic.
async fn idle(activity: &AtomicBool, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        if !activity.swap(false, Relaxed) {
            return;
        }
    }
}

/// Runs both links until both ended normally, or one of them ends the
/// connection (reset, close, broken).
async fn both_links(up: impl Future<Output = LinkEnd>, down: impl Future<Output = LinkEnd>) -> LinkEnd {
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    loop {
        let end = tokio::select! {
            e = &mut up, if !up_done => { up_done = true; e }
            e = &mut down, if !down_done => { down_done = true; e }
        };
        if end != LinkEnd::Eof {
            return end;
        }
        if up_done && down_done {
            return LinkEnd::Eof;
        }
    }
}

/// Why a connection ended (for logs).
#[derive(Debug)]
enum ConnEnd {
    Link(LinkEnd),
    Stopped,
    Idle,
}

async fn handle_connection(
    mut client: TcpStream,
    connection: u64,
    run: Arc<RunCtx>,
    permit: OwnedSemaphorePermit,
    mut stop_rx: watch::Receiver<bool>,
) {
    let shared = &run.shared;
    shared.stats.connections_active.fetch_add(1, Relaxed);
    let _active = ActiveGuard {
        gauge: &shared.stats.connections_active,
        permit: Some(permit),
    };
    let plane = &run.plane;

    let dialed = tokio::select! {
        () = stopped(&mut stop_rx) => return,
        r = tokio::time::timeout(plane.dial_timeout, dial(&run)) => r,
    };
    let mut upstream = match dialed {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return dial_failed(shared, &client, connection, &e.to_string()),
        Err(_) => return dial_failed(shared, &client, connection, "timed out"),
    };
    // Small request/response messages must not wait for Nagle.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);

    let ctx = ConnCtx {
        seed: plane.seed,
        proxy: shared.clone(),
        connection,
        exchanges: ExchangeTracker::default(),
        activity: AtomicBool::new(false),
    };
    let end = {
        let (mut client_rd, mut client_wr) = client.split();
        let (mut upstream_rd, mut upstream_wr) = upstream.split();
        let chain_rx = shared.chain.subscribe();
        let up = link::pump(
            &ctx,
            Direction::Upstream,
            &mut client_rd,
            &mut upstream_wr,
            chain_rx.clone(),
        );
        let down = link::pump(&ctx, Direction::Downstream, &mut upstream_rd, &mut client_wr, chain_rx);
        tokio::select! {
            end = both_links(up, down) => ConnEnd::Link(end),
            () = stopped(&mut stop_rx) => ConnEnd::Stopped,
            () = idle(&ctx.activity, plane.idle_timeout) => ConnEnd::Idle,
        }
    };
    if matches!(end, ConnEnd::Link(LinkEnd::Reset | LinkEnd::Broken)) {
        // SO_LINGER 0 only where a reset_peer fired (or a peer aborted), so
        // that ordinary closes stay FINs (toxiproxy bug #603).
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
    tracing::debug!(proxy = %shared.name, connection, ?end, "connection closed");
}

fn dial_failed(shared: &ProxyShared, client: &TcpStream, connection: u64, why: &str) {
    shared.stats.upstream_dial_failures.fetch_add(1, Relaxed);
    tracing::warn!(proxy = %shared.name, connection, error = why, "upstream dial failed, resetting client");
    // An RST tells the client at once that nothing is behind the proxy; a
    // FIN would look like an empty answer.
    let _ = client.set_zero_linger();
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Bound on any awaited event in these tests.
    const HANG_GUARD: Duration = Duration::from_secs(10);

    /// A run whose upstream is its own address, started behind the API's
    /// back (as a DNS change or a port 0 landing on the upstream's port
    /// would make it): the connection is refused at the dial instead of
    /// looping through the proxy up to the connection cap.
    #[tokio::test]
    async fn a_run_never_dials_its_own_address() {
        let plane = Arc::new(DataPlane {
            seed: 1,
            allow_remote: false,
            dial_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            permits: Arc::new(Semaphore::new(64)),
            resolver: Arc::new(SystemResolver),
        });
        let shared = ProxyShared::new("self".into(), &[]);
        let bound = bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap_or_else(|e| panic!("{e}"));
        let addr = bound.addr;
        let running = start(bound, Upstream::Addr(addr), shared.clone(), plane);

        let mut client = tokio::time::timeout(HANG_GUARD, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let _ = client.write_all(b"x").await;
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(HANG_GUARD, client.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "the client must be closed, got {read:?}"
        );
        assert_eq!(shared.stats.upstream_dial_failures.load(Relaxed), 1);
        assert_eq!(shared.stats.connections_accepted.load(Relaxed), 1);
        running.stop().await;
    }
}
