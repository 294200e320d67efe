//! `GET /metrics`: Prometheus (OpenMetrics) text, written by the official
//! `prometheus-client` crate. Traffic counters are read from
//! [`Counters`] at each scrape (one source of truth with `/stats`); the
//! writer's batch sizes and commit latencies and the refusals by cause are
//! recorded as they happen. Money is not here: it is in the ledger, and
//! `/stats` computes it from there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::AppState;
use crate::config::NotifyMode;
use crate::error::Problem;
use crate::outbox::{self, OutboxFigures};

/// OpenMetrics text, which Prometheus scrapes natively.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

/// What is recorded as it happens (the rest is read at scrape time).
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Requests per batch of the writer (1 to 512).
    batch_size: Histogram,
    /// BEGIN to COMMIT returned, per batch, fsync included, in seconds.
    commit_seconds: Histogram,
    /// Payment requests refused, by problem type (`invalid-amount`, ...).
    refused: Family<Labels, Counter>,
}

impl Default for Recorded {
    fn default() -> Self {
        Recorded {
            // 1, 2, 4, ... 512: the writer's batch bound.
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            // 25 µs to about 0.8 s: a RAM disk to a stalled one.
            commit_seconds: Histogram::new(exponential_buckets(0.000_025, 2.0, 16)),
            refused: Family::default(),
        }
    }
}

impl Recorded {
    /// One committed batch (called by the writer thread after COMMIT).
    pub fn batch(&self, requests: usize, took: Duration) {
        self.batch_size.observe(requests as f64);
        self.commit_seconds.observe(took.as_secs_f64());
    }

    pub fn refused(&self, problem: Problem) {
        let labels = vec![("cause".to_owned(), problem.slug().to_owned())];
        self.refused.get_or_create(&labels).inc();
    }
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: &AtomicU64) {
    let c: Counter = Counter::default();
    c.inc_by(value.load(Ordering::Relaxed));
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: usize) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

/// The traffic counters, read from the atomics `/stats` reads too.
fn register_counters(r: &mut Registry, c: &crate::stats::Counters) {
    let counters: [(&str, &str, &AtomicU64); 7] = [
        ("payment_requests", "POST /payments requests received", &c.received),
        (
            "payments_executed",
            "payments executed (committed) by a request",
            &c.executed,
        ),
        ("payments_replayed", "answers replayed for a known key", &c.replayed),
        (
            "payment_conflicts_409",
            "409: the key was still in flight",
            &c.conflicts_409,
        ),
        (
            "payment_mismatches_422",
            "422: a key reused for another payment",
            &c.mismatches_422,
        ),
        (
            "payment_unavailable_503",
            "503: queue full, database failed or replaced",
            &c.unavailable_503,
        ),
        (
            "payment_lease_takeovers",
            "keys taken over from a dead worker",
            &c.lease_takeovers,
        ),
    ];
    for (name, help, value) in counters {
        counter(r, name, help, value);
    }
}

/// The writer's queue and the requests in flight, now.
fn register_gauges(r: &mut Registry, state: &AppState) {
    let inner = &state.0;
    let queued = inner.config.queue_depth_max.saturating_sub(inner.writer.capacity());
    let gauges = [
        ("writer_queue_depth", "requests waiting for the writer", queued),
        (
            "writer_queue_depth_max",
            "bound of the writer's queue",
            inner.config.queue_depth_max,
        ),
        (
            "requests_in_flight",
            "requests admitted and not finished",
            state.requests_in_flight(),
        ),
    ];
    for (name, help, value) in gauges {
        gauge(r, name, help, value);
    }
}

/// The outbox's gauges (`--notify outbox`): read from the maintained row
/// and one index seek, like `/stats`.
fn register_outbox(r: &mut Registry, f: &OutboxFigures) {
    let age_ms = f
        .oldest_pending_since_ms
        .map_or(0, |since| crate::clock::now_ms().saturating_sub(since).max(0));
    let gauges = [
        ("outbox_pending", "events waiting for delivery", f.pending),
        ("outbox_delivered", "events delivered (2xx)", f.delivered),
        ("outbox_refused", "events refused for good (dead letter)", f.refused),
        (
            "outbox_oldest_pending_age_ms",
            "how long the oldest pending event has waited",
            age_ms,
        ),
        (
            "outbox_delivery_attempts",
            "delivery attempts made",
            f.delivery_attempts,
        ),
    ];
    for (name, help, value) in gauges {
        let g: Gauge = Gauge::default();
        g.set(value);
        r.register(name, help, g);
    }
}

/// The whole exposition at this moment.
pub(crate) fn render(state: &AppState, outbox: Option<&OutboxFigures>) -> Result<String, std::fmt::Error> {
    let c = &state.0.counters;
    let mut r = Registry::default();
    register_counters(&mut r, c);
    let rec = &c.recorded;
    r.register(
        "payment_rejected",
        "payment requests refused, by problem type",
        rec.refused.clone(),
    );
    r.register(
        "writer_batch_size",
        "requests per writer batch (one COMMIT)",
        rec.batch_size.clone(),
    );
    r.register(
        "writer_commit_seconds",
        "BEGIN to COMMIT per batch, fsync included",
        rec.commit_seconds.clone(),
    );
    register_gauges(&mut r, state);
    if let Some(f) = outbox {
        register_outbox(&mut r, f);
    }
    let mut text = String::new();
    encode(&mut text, &r)?;
    Ok(text)
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let outbox = match state.0.config.notify {
        // A failed read leaves the gauges out rather than the scrape.
        NotifyMode::Outbox => state.0.readers.read(|c| outbox::figures(c)).await.ok(),
        _ => None,
    };
    match render(&state, outbox.as_ref()) {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
