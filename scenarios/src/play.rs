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
use client::ledger::Meta;
use client::receipts::{ReceiptOutcome, ReceiptVerdict};
use client::reconcile::{Evidence, Mode, Reconciliation, Verdict};
use client::runner::{self, Intent, Intents, RunReport, Sinks};
use client::service::{Inconclusive, ServiceReader, ServiceStats};
use client::strategy::{self, Options};
use serde::Serialize;

use crate::catalog::{Act, ClientSpec, Retries, Scenario};
use crate::logs::{LessonLog, LogSummary};
use crate::observe::{Observer, Parts};
use crate::parts::{self, Proxy, Service};
use crate::second_hop::Receipts;

pub struct Settings {
    pub payments: usize,
    pub seed: u64,
    /// Keep each scenario's database and client history under this directory.
    pub keep: Option<PathBuf>,
    /// This program, re-run as the service child for crash scenarios.
    pub exe: PathBuf,
    /// A service this runner did not write, judged from outside
    /// (`--service-url`); none: each lesson starts this project's own.
    pub outside: Option<Arc<crate::target::Outside>>,
    /// Told when a lesson's parts are up and when it is judged (progress
    /// line, `explain`, the live page).
    pub observer: Option<Observer>,
    /// `--db-url`: a PostgreSQL server's admin URL; each lesson's service
    /// then runs on a fresh database of its own there instead of a file.
    pub db_url: Option<String>,
}

/// The time the judge may spend reading the service and the proxy,
/// retries included; past it the lesson is INCONCLUSIVE.
const JUDGE_DEADLINE_MS: u64 = 60_000;

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub name: String,
    pub title: String,
    pub lesson: String,
    pub expected: Verdict,
    /// None when the judge could not read what it needed (see `inconclusive`).
    pub verdict: Option<Verdict>,
    /// Why there is no verdict, if there is none.
    pub inconclusive: Option<String>,
    pub pass: bool,
    /// Why the scenario failed, if it did.
    pub problems: Vec<String>,
    pub payments: usize,
    pub intended: String,
    pub moved: String,
    pub metrics: BTreeMap<String, u64>,
    pub reconciliation: Option<Reconciliation>,
    pub elapsed_ms: u64,
    /// How an outside service was judged (per key, or totals only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judged: Option<String>,
    /// What the parts logged (None when they log to stderr, `RUST_LOG`).
    pub log: Option<LogSummary>,
    /// A payment whose story shows the lesson (`scenarios explain`).
    pub example: Option<Example>,
    /// The second hop's expected and actual verdicts (lessons with one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_receipts: Option<ReceiptOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipts: Option<ReceiptVerdict>,
}

/// A representative payment of a lesson.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    /// 1-based position in the lesson.
    pub payment: usize,
    pub key: Option<String>,
    pub why: String,
}

impl Example {
    fn pick(acted: &Acted) -> Option<Example> {
        let all: Vec<AttemptRecord> = acted.runs.iter().flat_map(|r| r.attempts.iter().cloned()).collect();
        let (index, why) = crate::story::pick(&all)?;
        Some(Example {
            payment: index + 1,
            key: all.iter().find(|a| a.intent == index).and_then(|a| a.key.clone()),
            why: why.to_owned(),
        })
    }
}

impl Outcome {
    /// `EXACTLY ONCE`, ..., or `INCONCLUSIVE`.
    pub fn headline(&self) -> &'static str {
        self.verdict.map_or("INCONCLUSIVE", Verdict::headline)
    }
}

/// A scenario's own seed: independent of the others, so adding or removing a
/// scenario does not change anyone else's faults.
pub fn scenario_seed(seed: u64, name: &str) -> u64 {
    eo_core::seed::derive(seed, name)
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
    o.batch = batch(spec);
    o
}

/// Everything the act produced for judging.
pub(crate) struct Acted {
    pub(crate) runs: Vec<RunReport>,
    /// Attempts that count for the reconciliation (a second, refused pass does not).
    pub(crate) judged: Vec<AttemptRecord>,
}

impl Acted {
    fn one(report: RunReport) -> Acted {
        Acted {
            judged: report.attempts.clone(),
            runs: vec![report],
        }
    }

    /// Two runs of the same intents, both judged.
    pub(crate) fn both(first: RunReport, second: RunReport) -> Acted {
        Acted {
            judged: first.attempts.iter().chain(&second.attempts).cloned().collect(),
            runs: vec![first, second],
        }
    }
}

/// What a scenario acts on and is judged by.
pub(crate) struct Stage<'a> {
    pub(crate) scenario: &'a Scenario,
    /// The first replica (the only one, in most lessons): read for judging.
    pub(crate) service: &'a Service,
    /// Every replica, the first included.
    pub(crate) replicas: &'a [Service],
    pub(crate) proxy: &'a Proxy,
    /// The second hop's receipts service, if the lesson has one.
    pub(crate) receipts: Option<&'a Receipts>,
    pub(crate) intents: Vec<Intent>,
    pub(crate) options: Options,
    /// The service's last payment id before the act.
    baseline_id: i64,
    dir: PathBuf,
    history: Arc<HistoryFile>,
    /// An outside service, as read before the act.
    pub(crate) outside: Option<crate::target::Before>,
}

impl Stage<'_> {
    pub(crate) fn sinks(&self) -> Sinks {
        Sinks {
            history: Some(Arc::clone(&self.history)),
            ..Sinks::default()
        }
    }

    /// Sends `intents` through the proxy, spread over its routes (one per replica).
    pub(crate) async fn run(&self, intents: impl Into<Intents>, sinks: Sinks) -> anyhow::Result<RunReport> {
        self.run_with(intents, &self.options, sinks).await
    }

    pub(crate) async fn run_with(
        &self,
        intents: impl Into<Intents>,
        options: &Options,
        sinks: Sinks,
    ) -> anyhow::Result<RunReport> {
        runner::run_spread(&self.proxy.urls, intents, options, sinks).await
    }
}

/// The lesson's database: a file in its directory, or with `--db-url` a
/// fresh PostgreSQL database named after the lesson and its seed.
async fn lesson_database(settings: &Settings, dir: &Path, name: &str, seed: u64) -> anyhow::Result<PathBuf> {
    let Some(admin) = settings.db_url.clone() else {
        return Ok(dir.join("payments.db"));
    };
    let name = format!("lesson_{name}_{seed:x}");
    let url = tokio::task::spawn_blocking(move || payment_service::fresh_database(&admin, &name)).await??;
    Ok(PathBuf::from(url))
}

pub async fn play(s: &Scenario, settings: &Settings) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let seed = scenario_seed(settings.seed, &s.name);
    let payments = settings.payments.min(s.payments_max.unwrap_or(usize::MAX)).max(1);
    let (_tmp, dir) = parts::scratch_dir(settings.keep.as_deref(), &s.name)?;
    let log = LessonLog::open(&dir).await;
    let (replicas, proxy, receipts) = start_parts(s, settings, &dir, seed, payments).await?;
    let service = &replicas[0];
    let watched = Parts {
        lesson: s.name.clone(),
        service_url: service.url.clone(),
        replica_urls: replicas.iter().map(|r| r.url.clone()).collect(),
        proxy_api: proxy.api.clone(),
        receipts_url: receipts.as_ref().map(|r| r.url.clone()),
        routes: proxy.names().to_vec(),
        dir: dir.clone(),
        payments,
        intended_minor: intended_minor(s, payments),
    };
    if let Some(observer) = &settings.observer {
        observer.started(watched.clone()).await;
    }
    let outside = settings.outside.clone();
    let parts = (&replicas[..], &proxy, receipts.as_ref(), outside);
    let outcome = stage_and_play(s, parts, dir, payments, seed).await;
    if let (Some(observer), Ok(outcome)) = (&settings.observer, &outcome) {
        observer.judged(watched, outcome).await;
    }
    let stopped_proxy = proxy.stop().await;
    let mut stopped_service = Ok(());
    for replica in replicas {
        stopped_service = stopped_service.and(replica.stop().await);
    }
    if let Some(receipts) = receipts {
        stopped_service = stopped_service.and(receipts.stop().await);
    }
    let log = log.close(settings.keep.is_some()).await;
    let mut outcome = outcome.with_context(|| format!("scenario {}", s.name))?;
    stopped_proxy?;
    stopped_service?;
    outcome.elapsed_ms = started.elapsed().as_millis() as u64;
    outcome.log = log;
    Ok(outcome)
}

/// The lesson's parts: the proxy's API; with a second hop, the receipts
/// service and its route (which the payment service is told to notify);
/// the service's replicas on one file; their routes.
async fn start_parts(
    s: &Scenario,
    settings: &Settings,
    dir: &std::path::Path,
    seed: u64,
    payments: usize,
) -> anyhow::Result<(Vec<Service>, Proxy, Option<Receipts>)> {
    let mut proxy = Proxy::start_api(seed).await?;
    let mut lesson = std::borrow::Cow::Borrowed(s);
    let receipts = match (s.expect_receipts, &settings.outside) {
        (Some(_), None) => {
            let receipts = Receipts::start(&s.receipts, &dir.join("receipts.db")).await?;
            let route = proxy.add_receipts_route(s, receipts.addr).await?;
            lesson.to_mut().service.receipts_url = Some(route);
            Some(receipts)
        }
        _ => None,
    };
    let db = lesson_database(settings, dir, &s.name, seed).await?;
    let mut replicas = Vec::with_capacity(s.replicas);
    for n in 0..s.replicas {
        // Each replica its own crash dice.
        let replica_seed = seed.wrapping_add(n as u64);
        replicas.push(start_service(&lesson, settings, &db, replica_seed, payments).await?);
    }
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr).collect();
    proxy.add_service_routes(s, &addrs).await?;
    Ok((replicas, proxy, receipts))
}

/// Starts one replica of the lesson's service (the only one, in most
/// lessons): an outside one, a supervised child when it must be killed, or
/// in this process.
async fn start_service(
    s: &Scenario,
    settings: &Settings,
    db: &std::path::Path,
    seed: u64,
    payments: usize,
) -> anyhow::Result<Service> {
    Ok(match (&settings.outside, &s.act) {
        (Some(outside), _) => outside.start().await?,
        (None, Act::CrashService { crashes }) => {
            let p = match crashes {
                Some(n) => (f64::from(*n) / payments as f64).min(0.5),
                None => s.service.crash_after_commit,
            };
            Service::supervised(&settings.exe, s, db, seed, p).await?
        }
        // A process of its own: killed and restarted, or running the
        // exercise's code, which may keep what it knows in statics.
        (None, act) if act.kills_the_service() || s.service.dedup == payment_service::DedupMode::Exercise => {
            Service::supervised(&settings.exe, s, db, seed, s.service.crash_after_commit).await?
        }
        (None, _) => Service::in_process(s, db).await?,
    })
}

/// The money a lesson means to move: the sum of its payments' amounts.
fn intended_minor(s: &Scenario, payments: usize) -> i128 {
    (0..payments).map(|i| i128::from(amount_of(&s.client, i))).sum()
}

/// Payment `i`'s amount: `amounts` in turn, else `amount` (checked when
/// the scenario was read; 0 if it were not an amount).
fn amount_of(spec: &ClientSpec, i: usize) -> i64 {
    let text = match spec.amounts.is_empty() {
        true => &spec.amount,
        false => &spec.amounts[i % spec.amounts.len()],
    };
    client::money::parse_minor(text).unwrap_or(0)
}

/// The lesson's payments, keyed for batches when it sends them.
fn lesson_intents(s: &Scenario, payments: usize, seed: u64) -> Vec<Intent> {
    let mut built = client::intents::IntentsBuilder::with_capacity(payments);
    for i in 0..payments {
        built.push(i, &runner::key_for(seed, i), "bianca", "marc", amount_of(&s.client, i));
    }
    let intents = built.finish();
    match batch(&s.client) {
        Some(batch) => client::batch::rekey(&intents, batch).iter().collect(),
        None => intents.iter().collect(),
    }
}

fn batch(spec: &ClientSpec) -> Option<client::batch::Batch> {
    spec.batch.map(|size| client::batch::Batch {
        size,
        keys: spec.batch_keys,
    })
}

async fn stage_and_play(
    s: &Scenario,
    (replicas, proxy, receipts, outside): (
        &[Service],
        &Proxy,
        Option<&Receipts>,
        Option<Arc<crate::target::Outside>>,
    ),
    dir: PathBuf,
    payments: usize,
    seed: u64,
) -> anyhow::Result<Outcome> {
    let history_path = dir.join("history.jsonl");
    let history = tokio::task::spawn_blocking(move || HistoryFile::create(&history_path))
        .await?
        .context("cannot create the history file")?;
    let mut options = options(&s.client, seed);
    let service = &replicas[0];
    let (baseline_id, outside) = match outside {
        Some(outside) => {
            options.request = outside.shape.clone();
            (0, Some(crate::target::Before::read(outside, s.client.key).await?))
        }
        None => (client::flow::baseline(&service.url).await?, None),
    };
    let stage = Stage {
        scenario: s,
        service,
        replicas,
        proxy,
        receipts,
        intents: lesson_intents(s, payments, seed),
        options,
        baseline_id,
        dir,
        history: Arc::new(history),
        outside,
    };
    let acted = act(&stage).await?;
    judge(&stage, acted).await
}

async fn act(stage: &Stage<'_>) -> anyhow::Result<Acted> {
    let intents = &stage.intents;
    match &stage.scenario.act {
        // An outside service cannot kill itself after a commit: lose the
        // answers and kill it instead (the client sees the same).
        Act::CrashService { .. } if stage.outside.is_some() => crate::restart::retry_after_restart(stage, false).await,
        Act::RetryAfterRestart { late } => crate::restart::retry_after_restart(stage, *late).await,
        Act::Plain | Act::CrashService { .. } => Ok(Acted::one(stage.run(intents.clone(), stage.sinks()).await?)),
        Act::Duplicates { copies } => {
            // Copies sit next to each other, so they are in flight together.
            let sent: Vec<Intent> = intents
                .iter()
                .flat_map(|i| std::iter::repeat_n(i.clone(), *copies))
                .collect();
            Ok(Acted::one(stage.run(sent, stage.sinks()).await?))
        }
        Act::ProxyOutage { after_percent, down_ms } => proxy_outage(stage, *after_percent, *down_ms).await,
        Act::KillReplica { after_percent } => crate::restart::kill_replica_midway(stage, *after_percent).await,
        Act::RedeliveryStorm { window_ms } => {
            let run = stage.run(intents.clone(), stage.sinks()).await?;
            let deadline = Duration::from_millis(JUDGE_DEADLINE_MS);
            let again = crate::second_hop::storm(&stage.service.url, *window_ms, deadline).await?;
            tracing::debug!(again, "redelivery storm: events made pending again");
            Ok(Acted::one(run))
        }
        Act::ClientCrash { after_percent, resume } => client_crash(stage, *after_percent, *resume).await,
        Act::ReuseKeys { amount } => {
            let first = stage.run(intents.clone(), stage.sinks()).await?;
            let other = client::money::parse_minor(amount).map_err(anyhow::Error::msg)?;
            let changed: Vec<Intent> = intents
                .iter()
                .map(|i| Intent {
                    amount_minor: other,
                    ..i.clone()
                })
                .collect();
            let second = stage.run(changed, stage.sinks()).await?;
            Ok(Acted {
                judged: first.attempts.clone(),
                runs: vec![first, second],
            })
        }
    }
}

/// The first part of the payments goes through; then the network goes down
/// and the rest start while it is down, so they surely meet refused
/// connections, and retry until it is back.
async fn proxy_outage(stage: &Stage<'_>, after_percent: u32, down_ms: u64) -> anyhow::Result<Acted> {
    let intents = &stage.intents;
    let split = (intents.len() * after_percent as usize / 100).min(intents.len());
    let (before, during) = intents.split_at(split);
    let first = stage.run(before.to_vec(), stage.sinks()).await?;
    stage.proxy.set_enabled(false).await?;
    let back_up = async {
        tokio::time::sleep(Duration::from_millis(down_ms)).await;
        stage.proxy.set_enabled(true).await
    };
    let (second, back_up) = tokio::join!(stage.run(during.to_vec(), stage.sinks()), back_up);
    back_up?;
    Ok(Acted::both(first, second?))
}

/// The client crashes after a share of its payments are confirmed; then it
/// resumes from its ledger (the library's resume), or restarts with keys it
/// held in memory only, so new ones.
async fn client_crash(stage: &Stage<'_>, after_percent: u32, resume: bool) -> anyhow::Result<Acted> {
    let intents = &stage.intents;
    let ledger_path = stage.dir.join("ledger.jsonl");
    let meta = Meta {
        baseline_id: stage.baseline_id,
        seed: stage.options.seed,
    };
    let (ledger, _) = client::flow::create_ledger(&ledger_path, intents.clone(), meta).await?;
    let first_sinks = Sinks {
        ledger: Some(Arc::new(ledger)),
        crash_after_confirmed: Some((intents.len() * after_percent as usize / 100).max(1)),
        ..stage.sinks()
    };
    let first = stage.run(intents.clone(), first_sinks).await?;
    anyhow::ensure!(first.crashed, "the client finished before the planned crash");
    let second = if resume {
        let opened = client::flow::open_ledger(&ledger_path).await?;
        let unfinished = opened.unfinished();
        let resumed = Sinks {
            ledger: Some(Arc::new(opened.ledger)),
            ..stage.sinks()
        };
        stage.run(unfinished, resumed).await?
    } else {
        // Keys lived in memory only: the restarted client makes new ones.
        let fresh_seed = stage.options.seed ^ 0x00c0_ffee;
        let again: Vec<Intent> = intents
            .iter()
            .map(|i| Intent {
                key: runner::key_for(fresh_seed, i.index),
                ..i.clone()
            })
            .collect();
        stage.run(again, stage.sinks()).await?
    };
    // In process, the crashed run's attempts are known too: a fresh run's
    // complete history judges both.
    Ok(Acted::both(first, second))
}

/// Judges from the client's complete history and what the service and the
/// proxy say; a service that cannot be read makes the lesson INCONCLUSIVE.
async fn judge(stage: &Stage<'_>, acted: Acted) -> anyhow::Result<Outcome> {
    let deadline = Duration::from_millis(JUDGE_DEADLINE_MS);
    if let Some(before) = &stage.outside {
        return crate::target::judge(stage, &acted, before, deadline).await;
    }
    let mode = Mode::Fresh {
        baseline_id: stage.baseline_id,
    };
    let intents = Intents::from(&stage.intents);
    let evidence = Evidence {
        intents: &intents,
        attempts: (&acted.judged).into(),
        strategy: stage.options.key,
        mode: &mode,
    };
    let (judgement, _) = client::flow::judge(&stage.service.url, deadline, &evidence).await;
    let second = match stage.receipts {
        Some(receipts) => Some(second_hop_read(stage, receipts, deadline).await),
        None => None,
    };
    // The full proof, recomputed from every payment: the lessons' ledgers are
    // small, and a lesson must not pass on figures the service maintained
    // wrongly.
    let stats = ServiceReader::new(&stage.service.url, deadline)?.audit().await;
    let faults = stage.proxy.faults().await?;
    let mut metrics = metrics(stage, &acted, faults, stats.as_ref().ok());
    if let Some((_, figures)) = &second {
        metrics.extend(figures.clone());
    }
    let mut outcome = assess(stage.scenario, &stage.intents, judgement, stats, metrics);
    if let (Some((verdict, _)), Some(expected)) = (second, stage.scenario.expect_receipts) {
        outcome.judge_receipts(expected, verdict);
    }
    outcome.example = Example::pick(&acted);
    Ok(outcome)
}

/// The second hop after the act: the receipts verdict, and its figures
/// (with the faults on its route) as metrics.
async fn second_hop_read(
    stage: &Stage<'_>,
    receipts: &Receipts,
    deadline: Duration,
) -> (ReceiptVerdict, BTreeMap<String, u64>) {
    let (verdict, mut figures) =
        crate::second_hop::judge(&stage.service.url, &receipts.url, stage.baseline_id, deadline).await;
    if let Ok(Some(faults)) = stage.proxy.receipts_faults().await {
        figures.insert("receipts_faults".to_owned(), faults);
    }
    (verdict, figures)
}

impl Outcome {
    /// Adds the second hop's verdict: another one than expected, or none
    /// (inconclusive), fails the lesson.
    pub fn judge_receipts(&mut self, expected: ReceiptOutcome, verdict: ReceiptVerdict) {
        if verdict.outcome == ReceiptOutcome::Inconclusive {
            self.problems.push(format!("INCONCLUSIVE second hop: {verdict}"));
        } else if verdict.outcome != expected {
            self.problems.push(format!(
                "{verdict}, but the lesson expects receipts {}",
                receipt_headline(expected)
            ));
        }
        self.pass = self.problems.is_empty();
        self.expected_receipts = Some(expected);
        self.receipts = Some(verdict);
    }
}

/// `EXACT`, `MISSING`, ...: how a receipts verdict reads in a table.
pub fn receipt_headline(outcome: ReceiptOutcome) -> &'static str {
    match outcome {
        ReceiptOutcome::Exact => "EXACT",
        ReceiptOutcome::Missing => "MISSING",
        ReceiptOutcome::Duplicated => "DUPLICATED",
        ReceiptOutcome::Both => "MISSING+DUPLICATED",
        ReceiptOutcome::Inconclusive => "INCONCLUSIVE",
    }
}

/// The lesson's outcome from what the judge read: a verdict and what is
/// wrong with it, or INCONCLUSIVE (a failed lesson) when the reconciliation
/// or `/stats` could not be read. `elapsed_ms` is left to the caller.
pub fn assess(
    s: &Scenario,
    intents: &[Intent],
    judgement: Result<Reconciliation, Inconclusive>,
    stats: Result<ServiceStats, Inconclusive>,
    metrics: BTreeMap<String, u64>,
) -> Outcome {
    let read = stats.map(|stats| (stats.total_amount_minor, stats.invariants));
    assess_read(s, intents, judgement, read, metrics)
}

/// [`assess`] from what any service offers: the money it moved and the
/// invariants it proves (none, for a service this project did not write).
pub(crate) fn assess_read(
    s: &Scenario,
    intents: &[Intent],
    judgement: Result<Reconciliation, Inconclusive>,
    read: Result<(i128, BTreeMap<String, bool>), Inconclusive>,
    metrics: BTreeMap<String, u64>,
) -> Outcome {
    let mut outcome = Outcome {
        name: s.name.clone(),
        title: s.title.clone(),
        lesson: s.lesson.trim().to_owned(),
        expected: s.expect,
        verdict: None,
        inconclusive: None,
        pass: false,
        problems: Vec::new(),
        payments: intents.len(),
        intended: client::money::format_minor(client::money::sum_minor(intents.iter().map(|i| i.amount_minor))),
        moved: "?".to_owned(),
        metrics,
        reconciliation: None,
        elapsed_ms: 0,
        judged: None,
        log: None,
        example: None,
        expected_receipts: None,
        receipts: None,
    };
    match judgement.and_then(|r| read.map(|read| (r, read))) {
        Ok((r, (moved_minor, invariants))) => {
            outcome.problems = problems(s, &r, &invariants, &outcome.metrics);
            outcome.pass = outcome.problems.is_empty();
            outcome.verdict = Some(r.verdict);
            outcome.moved = client::money::format_minor(moved_minor);
            outcome.reconciliation = Some(r);
        }
        Err(Inconclusive { reason }) => {
            outcome.problems = vec![format!("INCONCLUSIVE: {reason}")];
            outcome.inconclusive = Some(reason);
        }
    }
    outcome
}

pub(crate) fn metrics(
    stage: &Stage<'_>,
    acted: &Acted,
    faults: (u64, u64),
    stats: Option<&ServiceStats>,
) -> BTreeMap<String, u64> {
    let all = || acted.runs.iter().flat_map(|r| r.attempts.iter());
    let count = |f: &dyn Fn(&AttemptRecord) -> bool| all().filter(|a| f(a)).count() as u64;
    let mut metrics = BTreeMap::new();
    let mut put = |name: &str, value: u64| metrics.insert(name.to_owned(), value);
    put("attempts", all().count() as u64);
    put("faults_upstream", faults.0);
    put("faults_downstream", faults.1);
    put("resets", count(&|a| a.error == Some(ErrorKind::Reset)));
    put("timeouts", count(&|a| a.error == Some(ErrorKind::Timeout)));
    put("connect_errors", count(&|a| a.error == Some(ErrorKind::Connect)));
    put("replays", count(&|a| a.replayed == Some(true)));
    put("conflicts_409", count(&|a| a.status == Some(409)));
    put("mismatches_422", count(&|a| a.status == Some(422)));
    // Payments the client never got a yes for, among those judged.
    let confirmed: std::collections::HashSet<usize> = acted
        .judged
        .iter()
        .filter(|a| a.outcome == client::classify::Outcome::Ok)
        .map(|a| a.intent)
        .collect();
    put(
        "unconfirmed",
        stage.intents.len().saturating_sub(confirmed.len()) as u64,
    );
    let restarts = stage
        .replicas
        .iter()
        .map(|r| r.restarts.load(std::sync::atomic::Ordering::Relaxed));
    put("service_restarts", restarts.sum());
    // Only when /stats was read: a missing figure is not a zero.
    if let Some(stats) = stats {
        put("duplicate_keys", stats.duplicate_keys);
        put("service_payments", stats.payments);
    }
    metrics
}

/// Everything that makes the lesson fail: another verdict, a check below its
/// minimum, a Jepsen violation, a broken service invariant.
fn problems(
    s: &Scenario,
    r: &Reconciliation,
    invariants: &BTreeMap<String, bool>,
    metrics: &BTreeMap<String, u64>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if r.verdict != s.expect {
        problems.push(format!(
            "verdict {} but the lesson expects {}",
            r.verdict.headline(),
            s.expect.headline()
        ));
    }
    for (metric, minimum) in &s.checks.at_least {
        match metrics.get(metric) {
            Some(value) if value >= minimum => {}
            Some(value) => problems.push(format!("{metric} is {value}, the lesson needs at least {minimum}")),
            None => problems.push(format!(
                "{metric} was not measured; the lesson needs at least {minimum}"
            )),
        }
    }
    if r.acknowledged_but_missing > 0 {
        problems.push(format!(
            "{} acknowledged payments are missing from the ledger",
            r.acknowledged_but_missing
        ));
    }
    if r.failed_but_landed > 0 {
        let keys: Vec<&str> = r
            .issues
            .iter()
            .filter(|i| i.problem == "failed but landed")
            .map(|i| i.key.as_str())
            .collect();
        problems.push(format!(
            "{} payments were refused on every attempt yet landed (the caller will pay them again): {}",
            r.failed_but_landed,
            keys.join(", ")
        ));
    }
    for (name, holds) in invariants {
        let must_hold = name != "one_payment_per_key" || s.service.dedup == payment_service::DedupMode::Unique;
        if must_hold && !holds {
            problems.push(format!("service invariant {name} does not hold"));
        }
    }
    problems
}
