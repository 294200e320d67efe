//! Plays one scenario: start the pieces, act, judge, stop.
//!
//! Judgement comes only from what a real operator could see: the service's
//! `/stats` and ledger API, the proxy's fault counters, and the client's own
//! history and reconciliation. The runner never opens the database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use client::classify::ErrorKind;
use client::history::{AttemptRecord, HistoryFile};
use client::ledger::Ledger;
use client::reconcile::{self, Reconciliation, Verdict};
use client::runner::{self, Intent, RunReport, Sinks};
use client::strategy::{self, Options};
use serde::Serialize;

use crate::catalog::{Act, ClientSpec, Retries, Scenario};
use crate::parts::{self, Proxy, Service};

pub struct Settings {
    pub payments: usize,
    pub seed: u64,
    /// Keep each scenario's database and client history under this directory.
    pub keep: Option<PathBuf>,
    /// This program, re-run as the service child for crash scenarios.
    pub exe: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub name: String,
    pub title: String,
    pub lesson: String,
    pub expected: Verdict,
    pub verdict: Verdict,
    pub pass: bool,
    /// Why the scenario failed, if it did.
    pub problems: Vec<String>,
    pub payments: usize,
    pub intended: String,
    pub moved: String,
    pub metrics: BTreeMap<String, u64>,
    pub reconciliation: Reconciliation,
    pub elapsed_ms: u64,
}

/// A scenario's own seed: independent of the others, so adding or removing a
/// scenario does not change anyone else's faults.
pub fn scenario_seed(seed: u64, name: &str) -> u64 {
    let fnv = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    client::backoff::splitmix64(seed ^ fnv)
}

fn options(spec: &ClientSpec, seed: u64) -> Options {
    let mut o = Options::new(seed);
    o.key = spec.key;
    o.retries = match spec.retries {
        Retries::Count(n) => strategy::Retries::Limited(n),
        Retries::Word(_) => strategy::Retries::Unlimited,
    };
    o.backoff = spec.backoff;
    o.backoff_base_ms = spec.backoff_base_ms;
    o.backoff_cap_ms = spec.backoff_cap_ms;
    o.attempt_timeout_ms = spec.attempt_timeout_ms;
    o.deadline_ms = 120_000;
    o.concurrency = spec.concurrency;
    o.connection = spec.connection;
    o
}

/// Everything the act produced for judging.
struct Acted {
    runs: Vec<RunReport>,
    /// Attempts that count for the reconciliation (a second, refused pass does not).
    judged: Vec<AttemptRecord>,
}

pub async fn play(s: &Scenario, settings: &Settings) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let seed = scenario_seed(settings.seed, &s.name);
    let payments = settings.payments.min(s.payments_max.unwrap_or(usize::MAX)).max(1);
    let (_tmp, dir) = parts::scratch_dir(settings.keep.as_deref(), &s.name)?;
    let db = dir.join("payments.db");
    let service = match s.act {
        Act::CrashService { crashes } => {
            let p = match crashes {
                Some(n) => (f64::from(n) / payments as f64).min(0.5),
                None => s.service.crash_after_commit,
            };
            Service::supervised(&settings.exe, s, &db, seed, p).await?
        }
        _ => Service::in_process(s, &db).await?,
    };
    let proxy = Proxy::start(s, service.addr, seed).await?;
    let amount_minor = client::money::parse_minor(&s.client.amount).map_err(anyhow::Error::msg)?;
    let intents = runner::repeat(payments, "bianca", "marc", amount_minor, seed);
    let options = options(&s.client, seed);
    let history = Arc::new(HistoryFile::create(&dir.join("history.jsonl")).context("cannot create the history file")?);

    let acted = act(s, &proxy, &intents, &options, &dir, &history).await;
    let judged = match acted {
        Ok(acted) => judge(s, &service, &proxy, &intents, &options, acted, payments, started).await,
        Err(e) => Err(e),
    };
    let stopped_proxy = proxy.stop().await;
    let stopped_service = service.stop().await;
    let outcome = judged.with_context(|| format!("scenario {}", s.name))?;
    stopped_proxy?;
    stopped_service?;
    Ok(outcome)
}

async fn act(
    s: &Scenario,
    proxy: &Proxy,
    intents: &[Intent],
    options: &Options,
    dir: &Path,
    history: &Arc<HistoryFile>,
) -> anyhow::Result<Acted> {
    let sinks = || Sinks {
        history: Some(Arc::clone(history)),
        ..Sinks::default()
    };
    match &s.act {
        Act::Plain | Act::CrashService { .. } => {
            let report = runner::run(&proxy.url, intents.to_vec(), options, sinks()).await?;
            Ok(Acted {
                judged: report.attempts.clone(),
                runs: vec![report],
            })
        }
        Act::Duplicates { copies } => {
            // Copies sit next to each other, so they are in flight together.
            let sent: Vec<Intent> = intents
                .iter()
                .flat_map(|i| std::iter::repeat_n(i.clone(), *copies))
                .collect();
            let report = runner::run(&proxy.url, sent, options, sinks()).await?;
            Ok(Acted {
                judged: report.attempts.clone(),
                runs: vec![report],
            })
        }
        Act::ProxyOutage { after_percent, down_ms } => {
            // The first part of the payments goes through; then the network
            // goes down and the rest start while it is down, so they surely
            // meet refused connections, and retry until it is back.
            let split = (intents.len() * *after_percent as usize / 100).min(intents.len());
            let (before, during) = intents.split_at(split);
            let first = runner::run(&proxy.url, before.to_vec(), options, sinks()).await?;
            proxy.set_enabled(false).await?;
            let back_up = async {
                tokio::time::sleep(Duration::from_millis(*down_ms)).await;
                proxy.set_enabled(true).await
            };
            let (second, back_up) = tokio::join!(runner::run(&proxy.url, during.to_vec(), options, sinks()), back_up);
            back_up?;
            let second = second?;
            let judged = first.attempts.iter().chain(&second.attempts).cloned().collect();
            Ok(Acted {
                runs: vec![first, second],
                judged,
            })
        }
        Act::ClientCrash { after_percent, resume } => {
            let ledger_path = dir.join("ledger.jsonl");
            let ledger = Arc::new(Ledger::create(&ledger_path, intents)?);
            let crash_at = (intents.len() * *after_percent as usize / 100).max(1);
            let first_sinks = Sinks {
                ledger: Some(ledger),
                crash_after_confirmed: Some(crash_at),
                ..sinks()
            };
            let first = runner::run(&proxy.url, intents.to_vec(), options, first_sinks).await?;
            anyhow::ensure!(first.crashed, "the client finished before the planned crash");
            let second = if *resume {
                let (ledger, all, confirmed) = Ledger::open(&ledger_path)?;
                let unfinished: Vec<Intent> = all.into_iter().filter(|i| !confirmed.contains(&i.key)).collect();
                let resumed = Sinks {
                    ledger: Some(Arc::new(ledger)),
                    ..sinks()
                };
                runner::run(&proxy.url, unfinished, options, resumed).await?
            } else {
                // Keys lived in memory only: the restarted client makes new ones.
                let fresh_seed = options.seed ^ 0x00c0_ffee;
                let again: Vec<Intent> = intents
                    .iter()
                    .map(|i| Intent {
                        key: runner::key_for(fresh_seed, i.index),
                        ..i.clone()
                    })
                    .collect();
                runner::run(&proxy.url, again, options, sinks()).await?
            };
            let judged = first.attempts.iter().chain(&second.attempts).cloned().collect();
            Ok(Acted {
                runs: vec![first, second],
                judged,
            })
        }
        Act::ReuseKeys { amount } => {
            let first = runner::run(&proxy.url, intents.to_vec(), options, sinks()).await?;
            let other = client::money::parse_minor(amount).map_err(anyhow::Error::msg)?;
            let changed: Vec<Intent> = intents
                .iter()
                .map(|i| Intent {
                    amount_minor: other,
                    ..i.clone()
                })
                .collect();
            let second = runner::run(&proxy.url, changed, options, sinks()).await?;
            Ok(Acted {
                judged: first.attempts.clone(),
                runs: vec![first, second],
            })
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn judge(
    s: &Scenario,
    service: &Service,
    proxy: &Proxy,
    intents: &[Intent],
    options: &Options,
    acted: Acted,
    payments: usize,
    started: Instant,
) -> anyhow::Result<Outcome> {
    let reconciliation = reconcile::reconcile(&service.url, 0, intents, &acted.judged, options.key).await?;
    let stats = service.stats().await?;
    let (faults_up, faults_down) = proxy.faults().await?;
    let all = || acted.runs.iter().flat_map(|r| r.attempts.iter());
    let count = |f: &dyn Fn(&AttemptRecord) -> bool| all().filter(|a| f(a)).count() as u64;
    let mut metrics = BTreeMap::new();
    metrics.insert("attempts".to_owned(), all().count() as u64);
    metrics.insert("faults_upstream".to_owned(), faults_up);
    metrics.insert("faults_downstream".to_owned(), faults_down);
    metrics.insert("resets".to_owned(), count(&|a| a.error == Some(ErrorKind::Reset)));
    metrics.insert("timeouts".to_owned(), count(&|a| a.error == Some(ErrorKind::Timeout)));
    metrics.insert(
        "connect_errors".to_owned(),
        count(&|a| a.error == Some(ErrorKind::Connect)),
    );
    metrics.insert("replays".to_owned(), count(&|a| a.replayed == Some(true)));
    metrics.insert("conflicts_409".to_owned(), count(&|a| a.status == Some(409)));
    metrics.insert("mismatches_422".to_owned(), count(&|a| a.status == Some(422)));
    metrics.insert(
        "service_restarts".to_owned(),
        service.restarts.load(std::sync::atomic::Ordering::Relaxed),
    );
    metrics.insert(
        "duplicate_keys".to_owned(),
        stats["duplicate_keys"].as_u64().unwrap_or(0),
    );
    metrics.insert("service_payments".to_owned(), stats["payments"].as_u64().unwrap_or(0));

    let mut problems = Vec::new();
    if reconciliation.verdict != s.expect {
        problems.push(format!(
            "verdict {} but the lesson expects {}",
            reconciliation.verdict.headline(),
            s.expect.headline()
        ));
    }
    for (metric, minimum) in &s.checks.at_least {
        let value = metrics.get(metric).copied().unwrap_or(0);
        if value < *minimum {
            problems.push(format!("{metric} is {value}, the lesson needs at least {minimum}"));
        }
    }
    if reconciliation.acknowledged_but_missing > 0 {
        problems.push(format!(
            "{} acknowledged payments are missing from the ledger",
            reconciliation.acknowledged_but_missing
        ));
    }
    for (name, holds) in stats["invariants"].as_object().into_iter().flatten() {
        let must_hold = name != "one_payment_per_key" || s.service.dedup == payment_service::DedupMode::Unique;
        if must_hold && holds != true {
            problems.push(format!("service invariant {name} does not hold"));
        }
    }
    Ok(Outcome {
        name: s.name.clone(),
        title: s.title.clone(),
        lesson: s.lesson.trim().to_owned(),
        expected: s.expect,
        verdict: reconciliation.verdict,
        pass: problems.is_empty(),
        problems,
        payments,
        intended: reconciliation.expected.clone(),
        moved: client::money::format_minor(stats["total_amount_minor"].as_i64().unwrap_or(0)),
        metrics,
        reconciliation,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}
