//! One registry entry: a proxy's settings, toxics and run, and how a change
//! to it happens in two steps so that a failed API call changes nothing:
//!
//! 1. [`ProxyEntry::prepare`] does everything that can fail (binding the new
//!    listening socket) without touching the entry;
//! 2. [`ProxyEntry::apply`] commits: it stops the old run and starts the new
//!    one on the prepared socket, which cannot fail, except in the one case
//!    its doc names.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;

use crate::error::ApiError;
use crate::proxy::{self, Bound, DataPlane, ProxyShared, Running, Upstream};
use crate::toxic::{Direction, Toxic};

/// What the API sets on a proxy, its addresses resolved.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// As given, until the proxy is started; then the real bound address.
    pub listen: String,
    /// `listen` resolved (before the registry lock was taken); the real
    /// bound address once started.
    pub listen_addr: SocketAddr,
    pub upstream: UpstreamSpec,
    pub enabled: bool,
}

/// An upstream as given, parsed, and resolved for the loop check.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamSpec {
    /// Verbatim, as toxiproxy stores and echoes it.
    pub text: String,
    pub target: Upstream,
    /// What it resolved to when it was set (empty if a host name did not
    /// resolve then; the data plane resolves it again at every dial).
    pub addrs: Vec<SocketAddr>,
}

/// A proxy as the API shows it (toxiproxy's keys, in its order).
#[derive(Serialize, Clone, Debug)]
pub struct ProxyView {
    pub name: String,
    pub listen: String,
    pub upstream: String,
    pub enabled: bool,
    pub toxics: Vec<Toxic>,
}

/// A proxy in the registry. `settings.enabled` is true exactly when it runs.
pub(crate) struct ProxyEntry {
    pub settings: Settings,
    /// Creation order across both directions.
    pub toxics: Vec<Toxic>,
    pub shared: Arc<ProxyShared>,
    running: Option<Running>,
}

/// The listening socket a prepared change runs on.
pub(crate) enum Listener {
    /// The proxy is (or stays) stopped.
    Stopped,
    /// The current run goes on untouched.
    Unchanged,
    /// The current run stops and hands its socket (the same address) over
    /// to the new run: only the upstream changed.
    Handover,
    /// A socket bound while preparing.
    Fresh(Bound),
}

impl Listener {
    /// The address the proxy will listen on with this listener.
    pub fn addr(&self, next: &Settings) -> SocketAddr {
        match self {
            Listener::Fresh(bound) => bound.addr,
            _ => next.listen_addr,
        }
    }
}

/// Toxics in toxiproxy's listing order: upstream ones first, then
/// downstream ones, each in creation order.
pub(crate) fn listing(toxics: &[Toxic]) -> Vec<Toxic> {
    let mut out: Vec<Toxic> = toxics
        .iter()
        .filter(|t| t.direction == Direction::Upstream)
        .cloned()
        .collect();
    out.extend(toxics.iter().filter(|t| t.direction == Direction::Downstream).cloned());
    out
}

impl ProxyEntry {
    /// A stopped proxy with `settings` (apply `enabled` with
    /// [`ProxyEntry::prepare`] and [`ProxyEntry::apply`]).
    pub fn new(name: &str, settings: &Settings, toxics: Vec<Toxic>) -> ProxyEntry {
        ProxyEntry {
            settings: Settings {
                enabled: false,
                ..settings.clone()
            },
            shared: ProxyShared::new(name.to_owned(), &toxics),
            toxics,
            running: None,
        }
    }

    pub fn view(&self, name: &str) -> ProxyView {
        ProxyView {
            name: name.to_owned(),
            listen: self.settings.listen.clone(),
            upstream: self.settings.upstream.text.clone(),
            enabled: self.settings.enabled,
            toxics: listing(&self.toxics),
        }
    }

    /// Whether `next` changes the addresses, which restarts a running proxy
    /// (toxiproxy compares the resolved listen and the upstream string).
    pub fn moves(&self, next: &Settings) -> bool {
        next.upstream.text != self.settings.upstream.text || next.listen_addr != self.settings.listen_addr
    }

    /// The settings an update asks for: fields not given keep their value,
    /// and a listen naming the current address keeps the stored string.
    pub fn merged(
        &self,
        listen: Option<(String, SocketAddr)>,
        upstream: Option<UpstreamSpec>,
        enabled: Option<bool>,
    ) -> Settings {
        let mut next = self.settings.clone();
        if let Some((listen, addr)) = listen
            && addr != self.settings.listen_addr
        {
            next.listen = listen;
            next.listen_addr = addr;
        }
        if let Some(upstream) = upstream {
            next.upstream = upstream;
        }
        next.enabled = enabled.unwrap_or(self.settings.enabled);
        next
    }

    /// Everything that can fail in moving to `next`, done without changing
    /// anything: a new listening socket is bound while the current one still
    /// runs, so a busy port leaves the proxy as it was.
    pub fn prepare(&self, next: &Settings) -> Result<Listener, ApiError> {
        if !next.enabled {
            return Ok(Listener::Stopped);
        }
        match &self.running {
            Some(_) if !self.moves(next) => Ok(Listener::Unchanged),
            Some(r) if r.addr == next.listen_addr => Ok(Listener::Handover),
            _ => Ok(Listener::Fresh(proxy::bind(next.listen_addr)?)),
        }
    }

    /// Commits a prepared change. Stopping the old run closes its
    /// connections, as toxiproxy does on a change. The only failure: a
    /// handed-over socket was lost because its accept loop did not stop in
    /// time (a hang guard) and the address cannot be bound again; the proxy
    /// is then left stopped with its old settings.
    pub async fn apply(&mut self, next: Settings, listener: Listener, plane: &Arc<DataPlane>) -> Result<(), ApiError> {
        let bound = match listener {
            Listener::Unchanged => {
                self.settings = next;
                return Ok(());
            }
            Listener::Stopped => {
                self.stop().await;
                None
            }
            Listener::Fresh(bound) => {
                self.stop().await;
                Some(bound)
            }
            Listener::Handover => match self.stop().await {
                Some(bound) => Some(bound),
                None => Some(proxy::bind(next.listen_addr)?),
            },
        };
        self.settings = next;
        self.settings.enabled = false;
        if let Some(bound) = bound {
            self.run(bound, plane);
        }
        Ok(())
    }

    /// Starts a new run on `bound`; `listen` becomes the real bound address
    /// (port 0 resolved), as toxiproxy echoes it.
    fn run(&mut self, bound: Bound, plane: &Arc<DataPlane>) {
        self.settings.listen = bound.addr.to_string();
        self.settings.listen_addr = bound.addr;
        self.settings.enabled = true;
        let target = self.settings.upstream.target.clone();
        self.running = Some(proxy::start(bound, target, self.shared.clone(), plane.clone()));
    }

    /// Starts the proxy if it is stopped (`/reset`).
    pub async fn start(&mut self, plane: &Arc<DataPlane>) -> Result<(), ApiError> {
        let next = Settings {
            enabled: true,
            ..self.settings.clone()
        };
        let listener = self.prepare(&next)?;
        self.apply(next, listener, plane).await
    }

    /// Stops the run, if any, and returns its still-bound socket.
    pub async fn stop(&mut self) -> Option<Bound> {
        self.settings.enabled = false;
        self.running.take()?.stop().await
    }

    /// Replaces the toxics and publishes them to live connections.
    pub fn set_toxics(&mut self, toxics: Vec<Toxic>) {
        self.toxics = toxics;
        self.shared.publish(&self.toxics);
    }

    /// A brand-new identity (toxics, stats, connection index) for a proxy
    /// that populate replaces; the next [`ProxyEntry::apply`] restarts it.
    pub fn renew(&mut self, name: &str, toxics: Vec<Toxic>) {
        self.shared = ProxyShared::new(name.to_owned(), &toxics);
        self.toxics = toxics;
    }

    /// Zeroes the stats and the connection index.
    pub fn reset_stats(&self) {
        self.shared.stats.reset();
        self.shared.next_connection.store(0, Relaxed);
    }
}
