//! The acts that kill a service. `retry-after-restart`: the service commits,
//! its answers never arrive, it is killed and restarted, and the client
//! retries. Whatever the service knew only in memory is gone; what it
//! committed is not. With `late`, the restart waits until the service's
//! stored answers expired. `kill-replica`: one of several replicas is killed
//! and restarted while the others go on serving.

use std::time::Duration;

use anyhow::Context;
use client::strategy::Retries;
use serde_json::json;

use crate::play::{Acted, Stage};

/// The proxy's toxic that drops every answer during the first pass.
const LOSE_ANSWERS: &str = "lose-every-answer";
/// Waited beyond the answers' retention, so that none is fresh by a hair.
const LATE_MARGIN_MS: u64 = 500;

/// Every payment once, its answer lost; a kill -9 and a restart (after the
/// retention, if `late`); then every payment retried with its key.
pub(crate) async fn retry_after_restart(stage: &Stage<'_>, late: bool) -> anyhow::Result<Acted> {
    let lose = json!({
        "name": LOSE_ANSWERS, "type": "reset_peer", "stream": "downstream",
        "toxicity": 1.0, "attributes": {"timeout": 1},
    });
    stage.proxy.add_toxic(lose).await?;
    let mut once = stage.options.clone();
    once.retries = Retries::Limited(0);
    let first = stage.run_with(stage.intents.clone(), &once, stage.sinks()).await;
    stage.proxy.remove_toxic(LOSE_ANSWERS).await?;
    let first = first?;
    if late {
        tokio::time::sleep(late_wait(stage)).await;
    }
    stage.service.restart().await?;
    let second = stage.run(stage.intents.clone(), stage.sinks()).await?;
    Ok(Acted::both(first, second))
}

/// How long the service keeps stored answers, plus a margin: this project's
/// service says it in its settings, an outside one in its target file.
fn late_wait(stage: &Stage<'_>) -> Duration {
    let retention = match &stage.outside {
        Some(before) => before.outside.answers_expire_after().unwrap_or_default(),
        None => stage.scenario.service.key_retention,
    };
    retention + Duration::from_millis(LATE_MARGIN_MS)
}

/// The first `after_percent` of the payments; then the last replica is
/// killed (kill -9) and restarted while the rest are sent through every
/// replica: attempts on the dead one fail, and their retries go to the next.
pub(crate) async fn kill_replica_midway(stage: &Stage<'_>, after_percent: u32) -> anyhow::Result<Acted> {
    let split = (stage.intents.len() * after_percent as usize / 100).min(stage.intents.len());
    let (before, after) = stage.intents.split_at(split);
    let first = stage.run(before.to_vec(), stage.sinks()).await?;
    let victim = stage.replicas.last().context("a lesson without a replica")?;
    let (second, restarted) = tokio::join!(stage.run(after.to_vec(), stage.sinks()), victim.restart());
    restarted?;
    Ok(Acted::both(first, second?))
}
