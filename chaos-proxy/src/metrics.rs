//! `GET /metrics` (an extension; toxiproxy has none): Prometheus
//! (OpenMetrics) text written by the official `prometheus-client` crate from
//! the same counters as `/proxies/{p}/stats`, read at each scrape:
//! connections, bytes per direction and faults per toxic and direction,
//! labelled by proxy. `DELETE /proxies/{p}/stats` and `/reset` zero them
//! (Prometheus sees a counter reset).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::stats::StatsView;

/// OpenMetrics text, which Prometheus scrapes natively.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Counter families, one sample per proxy (and direction, toxic).
#[derive(Default)]
struct Families {
    accepted: Family<Labels, Counter>,
    rejected: Family<Labels, Counter>,
    dial_failures: Family<Labels, Counter>,
    active: Family<Labels, Gauge>,
    received: Family<Labels, Counter>,
    sent: Family<Labels, Counter>,
    faults: Family<Labels, Counter>,
}

impl Families {
    fn add(&self, v: &StatsView) {
        let proxy = labels(&[("proxy", &v.proxy)]);
        self.accepted.get_or_create(&proxy).inc_by(v.connections.accepted);
        self.rejected.get_or_create(&proxy).inc_by(v.connections.rejected);
        self.dial_failures
            .get_or_create(&proxy)
            .inc_by(v.connections.upstream_dial_failures);
        self.active
            .get_or_create(&proxy)
            .set(i64::try_from(v.connections.active).unwrap_or(i64::MAX));
        for (direction, received, sent) in [
            ("upstream", v.bytes.upstream_received, v.bytes.upstream_sent),
            ("downstream", v.bytes.downstream_received, v.bytes.downstream_sent),
        ] {
            let l = labels(&[("proxy", &v.proxy), ("direction", direction)]);
            self.received.get_or_create(&l).inc_by(received);
            self.sent.get_or_create(&l).inc_by(sent);
        }
        for f in &v.faults {
            let l = labels(&[
                ("proxy", &v.proxy),
                ("toxic", &f.toxic),
                ("type", f.ty),
                ("direction", f.stream),
            ]);
            self.faults.get_or_create(&l).inc_by(f.count);
        }
    }

    fn register(self, r: &mut Registry) {
        r.register(
            "chaos_proxy_connections_accepted",
            "client connections accepted",
            self.accepted,
        );
        r.register(
            "chaos_proxy_connections_rejected",
            "connections reset at once: cap reached",
            self.rejected,
        );
        r.register(
            "chaos_proxy_upstream_dial_failures",
            "upstream connects that failed",
            self.dial_failures,
        );
        r.register("chaos_proxy_connections_active", "connections open now", self.active);
        r.register(
            "chaos_proxy_bytes_received",
            "bytes read: upstream from clients, downstream from the upstream",
            self.received,
        );
        r.register(
            "chaos_proxy_bytes_sent",
            "bytes written: upstream to the upstream, downstream to clients",
            self.sent,
        );
        r.register(
            "chaos_proxy_faults",
            "faults fired, per toxic and direction",
            self.faults,
        );
    }
}

/// The exposition of every proxy's counters.
pub fn render(views: &[StatsView]) -> Result<String, std::fmt::Error> {
    let families = Families::default();
    for v in views {
        families.add(v);
    }
    let mut registry = Registry::default();
    families.register(&mut registry);
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}
