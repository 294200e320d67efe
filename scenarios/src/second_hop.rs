//! The second hop of a lesson: a receipts service in this process, a chaos
//! proxy route in front of it (the payment service's relay, or its call after
//! the commit, goes through it), a redelivery storm, and the receipts
//! verdict: every payment of the lesson has exactly one receipt.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use client::receipts::{self, ReceiptVerdict, ReceiptsReader};
use client::service::ServiceReader;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::parts::{STEP_TIMEOUT_MS, http};

/// The chaos proxy's route to the receipts service.
pub const RECEIPTS_ROUTE: &str = "receipts";

/// The receipts service's settings in a scenario file (`[receipts]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiptsSpec {
    /// `inbox` (deduplicates by event id) or `off` (a naive consumer).
    pub dedup: ::receipts::DedupMode,
    /// Work before a delivery is written: a slow consumer.
    pub processing_delay_ms: u64,
}

/// A lesson's receipts service, running in this process on its own file.
pub struct Receipts {
    pub url: String,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Receipts {
    pub async fn start(spec: &ReceiptsSpec, db: &Path) -> anyhow::Result<Receipts> {
        let mut config = ::receipts::Config::new(db);
        config.dedup = spec.dedup;
        config.processing_delay = Duration::from_millis(spec.processing_delay_ms);
        config.validate().map_err(anyhow::Error::msg)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(::receipts::run(listener, config, async move {
            let _ = stopped.await;
        }));
        Ok(Receipts {
            url: format!("http://{addr}"),
            addr,
            stop: Some(stop),
            task,
        })
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_millis(STEP_TIMEOUT_MS), self.task)
            .await
            .context("the receipts service did not stop in time")?
            .context("the receipts service's task failed")?
    }
}

/// The storm: waits (within `deadline`) for every event to be delivered,
/// then asks the payment service to deliver again every event delivered
/// within the last `window_ms`; returns how many were made pending again.
pub async fn storm(service: &str, window_ms: u64, deadline: Duration) -> anyhow::Result<u64> {
    let reader = ServiceReader::new(service, deadline)?;
    receipts::settle(&reader)
        .await
        .map_err(|e| anyhow::anyhow!("before the storm: {e}"))?;
    let response = http()?
        .post(format!("{service}/outbox/redeliver"))
        .json(&serde_json::json!({ "window_ms": window_ms }))
        .send()
        .await
        .context("POST /outbox/redeliver")?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("POST /outbox/redeliver answered {status}: {body}");
    }
    body["redelivered"]
        .as_u64()
        .with_context(|| format!("POST /outbox/redeliver answered without a count: {body}"))
}

/// The second hop's verdict for the payments with ids above `baseline_id`
/// (the outbox drained first), and its figures as lesson metrics.
pub async fn judge(
    service: &str,
    receipts_url: &str,
    baseline_id: i64,
    deadline: Duration,
) -> (ReceiptVerdict, BTreeMap<String, u64>) {
    let verdict = receipts::check_run(service, receipts_url, baseline_id, deadline).await;
    let mut metrics = BTreeMap::new();
    // Only figures that were read: a missing one is not a zero.
    if let Ok(reader) = ReceiptsReader::new(receipts_url, deadline)
        && let Ok(stats) = reader.stats().await
    {
        metrics.insert("duplicates_absorbed".to_owned(), stats.duplicates_absorbed);
        metrics.insert("duplicate_receipts".to_owned(), stats.duplicate_receipts);
    }
    if let Ok(reader) = ServiceReader::new(service, deadline)
        && let Ok(hop) = receipts::second_hop(&reader).await
    {
        metrics.insert("relay_attempts".to_owned(), hop.outbox.delivery_attempts);
        metrics.insert("outbox_redelivered".to_owned(), hop.outbox.redelivered);
    }
    (verdict, metrics)
}
