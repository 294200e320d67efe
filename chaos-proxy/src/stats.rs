//! Per-proxy observability: live counters and a bounded log of fired faults.
//!
//! Counters are relaxed atomics bumped by the data plane; the fault book is a
//! std mutex taken only when a fault fires (rare) or when the API reads it,
//! and never held across an `.await`, so neither plane can stall the other.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use serde::Serialize;

use crate::config::FAULT_LOG_ENTRIES_MAX;
use crate::toxic::{Direction, ToxicType};

/// Counters of one proxy. They survive toxic changes and proxy restarts and
/// are zeroed by `POST /reset` and `DELETE /proxies/{p}/stats`.
#[derive(Default)]
pub struct Stats {
    pub connections_accepted: AtomicU64,
    pub connections_active: AtomicU64,
    /// Accepted, then reset at once because the connection cap was reached.
    pub connections_rejected: AtomicU64,
    pub upstream_dial_failures: AtomicU64,
    /// Bytes read from the client / written to the upstream.
    pub upstream_bytes_received: AtomicU64,
    pub upstream_bytes_sent: AtomicU64,
    /// Bytes read from the upstream / written to the client.
    pub downstream_bytes_received: AtomicU64,
    pub downstream_bytes_sent: AtomicU64,
    book: Mutex<FaultBook>,
}

struct FaultBook {
    /// Time zero of `at_ms` in the log.
    epoch: Instant,
    /// (toxic name, direction) → (type, count).
    counts: BTreeMap<(String, Direction), (ToxicType, u64)>,
    log: VecDeque<FaultEvent>,
    /// Entries pushed out of the bounded log.
    log_dropped: u64,
}

impl Default for FaultBook {
    fn default() -> Self {
        FaultBook {
            epoch: Instant::now(),
            counts: BTreeMap::new(),
            log: VecDeque::new(),
            log_dropped: 0,
        }
    }
}

/// One fired fault, as listed by `GET /proxies/{p}/stats`.
#[derive(Clone, Debug, Serialize)]
pub struct FaultEvent {
    /// Accept-order index of the connection (0-based, per proxy).
    pub connection: u64,
    /// Request/response exchange within the connection (1-based; 0 before
    /// the client sent anything).
    pub exchange: u64,
    pub toxic: String,
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub stream: &'static str,
    /// Milliseconds since the stats were last reset.
    pub at_ms: u64,
    /// When it fired, in µs since the Unix epoch: the clock a client's
    /// history and the payment service's event record use, so one payment's
    /// story can be lined up across them.
    pub at_unix_us: u64,
}

/// Fault count per toxic and direction.
#[derive(Serialize)]
pub struct FaultCount {
    pub toxic: String,
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub stream: &'static str,
    pub count: u64,
}

/// The JSON of `GET /proxies/{p}/stats`.
#[derive(Serialize)]
pub struct StatsView {
    pub proxy: String,
    pub seed: u64,
    pub connections: ConnectionsView,
    pub bytes: BytesView,
    pub faults: Vec<FaultCount>,
    pub fault_log: Vec<FaultEvent>,
    pub fault_log_dropped: u64,
}

#[derive(Serialize)]
pub struct ConnectionsView {
    pub accepted: u64,
    pub active: u64,
    pub rejected: u64,
    pub upstream_dial_failures: u64,
}

#[derive(Serialize)]
pub struct BytesView {
    pub upstream_received: u64,
    pub upstream_sent: u64,
    pub downstream_received: u64,
    pub downstream_sent: u64,
}

impl Stats {
    /// Records a fired fault: bumps its counter and appends to the log.
    pub fn record_fault(&self, connection: u64, exchange: u64, toxic: &str, ty: ToxicType, direction: Direction) {
        tracing::debug!(
            connection,
            exchange,
            toxic,
            r#type = ty.as_str(),
            stream = direction.as_str(),
            "fault fired"
        );
        let Ok(mut book) = self.book.lock() else {
            return; // A poisoned book only loses observability, never traffic.
        };
        let at_ms = book.epoch.elapsed().as_millis() as u64;
        book.counts.entry((toxic.to_owned(), direction)).or_insert((ty, 0)).1 += 1;
        if book.log.len() >= FAULT_LOG_ENTRIES_MAX {
            book.log.pop_front();
            book.log_dropped += 1;
        }
        book.log.push_back(FaultEvent {
            connection,
            exchange,
            toxic: toxic.to_owned(),
            ty: ty.as_str(),
            stream: direction.as_str(),
            at_ms,
            at_unix_us: eo_core::wire::unix_us_now(),
        });
    }

    /// Zeroes every counter and clears the fault log.
    pub fn reset(&self) {
        for c in [
            &self.connections_accepted,
            &self.connections_rejected,
            &self.upstream_dial_failures,
            &self.upstream_bytes_received,
            &self.upstream_bytes_sent,
            &self.downstream_bytes_received,
            &self.downstream_bytes_sent,
        ] {
            c.store(0, Relaxed);
        }
        // `connections_active` is a gauge of live sockets: not reset.
        if let Ok(mut book) = self.book.lock() {
            *book = FaultBook::default();
        }
    }

    /// A consistent-enough snapshot for the API (counters are read one by one).
    pub fn view(&self, proxy: &str, seed: u64) -> StatsView {
        let (faults, fault_log, fault_log_dropped) = match self.book.lock() {
            Ok(book) => (
                book.counts
                    .iter()
                    .map(|((toxic, dir), (ty, count))| FaultCount {
                        toxic: toxic.clone(),
                        ty: ty.as_str(),
                        stream: dir.as_str(),
                        count: *count,
                    })
                    .collect(),
                book.log.iter().cloned().collect(),
                book.log_dropped,
            ),
            Err(_) => (Vec::new(), Vec::new(), 0),
        };
        StatsView {
            proxy: proxy.to_owned(),
            seed,
            connections: ConnectionsView {
                accepted: self.connections_accepted.load(Relaxed),
                active: self.connections_active.load(Relaxed),
                rejected: self.connections_rejected.load(Relaxed),
                upstream_dial_failures: self.upstream_dial_failures.load(Relaxed),
            },
            bytes: BytesView {
                upstream_received: self.upstream_bytes_received.load(Relaxed),
                upstream_sent: self.upstream_bytes_sent.load(Relaxed),
                downstream_received: self.downstream_bytes_received.load(Relaxed),
                downstream_sent: self.downstream_bytes_sent.load(Relaxed),
            },
            faults,
            fault_log,
            fault_log_dropped,
        }
    }
}
