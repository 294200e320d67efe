//! Scenario files: `scenarios/catalog/*.toml`, built into the binary, plus any
//! directory given with `--catalog DIR`. A facilitator adds a lesson by
//! writing one file; a malformed file gets an error naming the file, the
//! field and the fix.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use client::batch::BatchKeys;
use client::receipts::ReceiptOutcome;
use client::reconcile::Verdict;
use client::strategy::{Backoff, ConnectionMode, KeyStrategy};
use payment_service::Settings;

pub use crate::second_hop::ReceiptsSpec;
use serde::Deserialize;

/// The built-in catalog, in the binary so the runner works from any directory.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("stable-network.toml", include_str!("../catalog/stable-network.toml")),
    ("at-most-once.toml", include_str!("../catalog/at-most-once.toml")),
    ("at-least-once.toml", include_str!("../catalog/at-least-once.toml")),
    (
        "new-key-per-retry.toml",
        include_str!("../catalog/new-key-per-retry.toml"),
    ),
    ("exactly-once.toml", include_str!("../catalog/exactly-once.toml")),
    (
        "concurrent-check-then-insert.toml",
        include_str!("../catalog/concurrent-check-then-insert.toml"),
    ),
    (
        "concurrent-unique.toml",
        include_str!("../catalog/concurrent-unique.toml"),
    ),
    (
        "crash-after-commit.toml",
        include_str!("../catalog/crash-after-commit.toml"),
    ),
    ("key-reused.toml", include_str!("../catalog/key-reused.toml")),
    ("slow-network.toml", include_str!("../catalog/slow-network.toml")),
    ("proxy-down.toml", include_str!("../catalog/proxy-down.toml")),
    (
        "client-crash-resume.toml",
        include_str!("../catalog/client-crash-resume.toml"),
    ),
    (
        "client-crash-restart.toml",
        include_str!("../catalog/client-crash-restart.toml"),
    ),
    ("keys-ignored.toml", include_str!("../catalog/keys-ignored.toml")),
    ("replicas-memory.toml", include_str!("../catalog/replicas-memory.toml")),
    ("restart-memory.toml", include_str!("../catalog/restart-memory.toml")),
    ("replicas-unique.toml", include_str!("../catalog/replicas-unique.toml")),
    ("dual-write.toml", include_str!("../catalog/dual-write.toml")),
    (
        "redelivery-naive-consumer.toml",
        include_str!("../catalog/redelivery-naive-consumer.toml"),
    ),
    (
        "outbox-idempotent-consumer.toml",
        include_str!("../catalog/outbox-idempotent-consumer.toml"),
    ),
    ("batch-one-key.toml", include_str!("../catalog/batch-one-key.toml")),
    (
        "batch-derived-keys.toml",
        include_str!("../catalog/batch-derived-keys.toml"),
    ),
    (
        "redelivery-storm.toml",
        include_str!("../catalog/redelivery-storm.toml"),
    ),
];

/// Replicas a lesson may start at most: each is a writer on the shared file
/// (and, when one is killed, a process); the lessons need three.
pub const REPLICAS_MAX: usize = 8;

/// Files read from `--catalog DIR` at most, and their size: a bound on what a
/// typo in a path can make the runner read.
const CATALOG_FILES_MAX: usize = 200;
const CATALOG_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Metrics a scenario may require a minimum of in `[checks] at_least`.
pub const METRICS: &[&str] = &[
    "attempts",
    "faults_upstream",
    "faults_downstream",
    "resets",
    "timeouts",
    "connect_errors",
    "replays",
    "conflicts_409",
    "mismatches_422",
    "service_restarts",
    "duplicate_keys",
    "receipts_faults",
    "relay_attempts",
    "outbox_redelivered",
    "duplicates_absorbed",
    "duplicate_receipts",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Must equal the file name without `.toml`.
    pub name: String,
    pub title: String,
    /// Position in the guided tour (`scenarios` without arguments); absent: not in the tour.
    #[serde(default)]
    pub tour: Option<u32>,
    /// A few lines that say what the lesson shows and why.
    pub lesson: String,
    pub expect: Verdict,
    /// This lesson's payment count never exceeds this (slow lessons stay quick).
    #[serde(default)]
    pub payments_max: Option<usize>,
    /// The payment service's flags, by their snake_case names (`dedup`,
    /// `processing_delay_ms`, `key_lease = "2s"`, ...): the service's own
    /// [`payment_service::Settings`], so a new flag is a new catalog field.
    #[serde(default)]
    pub service: Settings,
    /// Replicas of the service on one database file (`--replica`), each
    /// behind its own proxy route; the client spreads its attempts over the
    /// routes (a retry goes to the next one).
    #[serde(default = "one_replica")]
    pub replicas: usize,
    #[serde(default)]
    pub proxy: ProxySpec,
    /// The second hop's verdict this lesson expects; set, the lesson has a
    /// second hop: a receipts service behind its own proxy route, which the
    /// payment service notifies (`service.notify`, the outbox by default).
    #[serde(default)]
    pub expect_receipts: Option<ReceiptOutcome>,
    /// The receipts service's flags (`dedup = "off"`, `processing_delay_ms`).
    #[serde(default)]
    pub receipts: ReceiptsSpec,
    /// Faults on the second hop: between the payment service and the receipts service.
    #[serde(default)]
    pub receipts_proxy: ProxySpec,
    #[serde(default)]
    pub client: ClientSpec,
    #[serde(default)]
    pub act: Act,
    #[serde(default)]
    pub checks: Checks,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySpec {
    pub toxics: Vec<ToxicSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Upstream,
    Downstream,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Connection,
    Request,
}

/// A toxic, in the proxy's (toxiproxy's) terms.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToxicSpec {
    #[serde(rename = "type")]
    pub kind: String,
    pub stream: Stream,
    #[serde(default = "one")]
    pub toxicity: f32,
    #[serde(default)]
    pub attributes: BTreeMap<String, i64>,
    /// Roll the toxicity per connection (toxiproxy) or per request (extension).
    #[serde(default)]
    pub scope: Scope,
}

fn one() -> f32 {
    1.0
}

fn one_replica() -> usize {
    1
}

/// `retries = 3` or `retries = "unlimited"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Retries {
    Count(u32),
    Word(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSpec {
    pub key: KeyStrategy,
    pub retries: Retries,
    pub backoff: Backoff,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    pub attempt_timeout_ms: u64,
    pub concurrency: usize,
    pub connection: ConnectionMode,
    /// Each payment's amount, e.g. "1.00".
    pub amount: String,
    /// Amounts taken in turn, payment after payment (instead of `amount`):
    /// a batch's items then differ, as real ones do.
    pub amounts: Vec<String>,
    /// Payments sent this many at a time under one key (2 to 100).
    pub batch: Option<usize>,
    /// `derived` (one batch request, `KEY:ITEM_ID` per item) or `shared`
    /// (each item on its own under the batch's key: the mistake).
    pub batch_keys: BatchKeys,
}

impl Default for ClientSpec {
    fn default() -> ClientSpec {
        ClientSpec {
            key: KeyStrategy::PerPayment,
            retries: Retries::Word("unlimited".into()),
            backoff: Backoff::FullJitter,
            backoff_base_ms: 1,
            backoff_cap_ms: 50,
            attempt_timeout_ms: 2_000,
            concurrency: 16,
            connection: ConnectionMode::Fresh,
            amount: "1.00".into(),
            amounts: Vec::new(),
            batch: None,
            batch_keys: BatchKeys::Derived,
        }
    }
}

/// What happens besides sending payments.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Act {
    /// Just the payments.
    #[default]
    Plain,
    /// Every payment is sent by `copies` senders at once, with the same key.
    Duplicates { copies: usize },
    /// The service runs as a child process and is restarted on the same
    /// database whenever it dies. It kills itself right after a commit with
    /// probability `crashes / payments` (about `crashes` times a run,
    /// whatever its size), or `service.crash_after_commit` if that is set.
    CrashService {
        #[serde(default)]
        crashes: Option<u32>,
    },
    /// The first `after_percent` of the payments are made; then the proxy is
    /// disabled for `down_ms` while the rest start, then enabled again.
    ProxyOutage { after_percent: u32, down_ms: u64 },
    /// The client crashes once `after_percent` of the payments are confirmed
    /// (before recording the last one as done); with
    /// `resume`, it finishes from its ledger with the same keys, without,
    /// it starts over with new keys.
    ClientCrash { after_percent: u32, resume: bool },
    /// After the payments, every key is sent again with a different amount.
    ReuseKeys { amount: String },
    /// Every payment is sent once and its answer lost on the way back; then
    /// the service is killed (kill -9) and restarted on the same database,
    /// and every payment is retried with its key. With `late`, the restart
    /// waits until the service's stored answers have expired
    /// (`service.key_retention`, at most a minute), so the retry is a late one.
    RetryAfterRestart {
        #[serde(default)]
        late: bool,
    },
    /// The first `after_percent` of the payments are made; then the last
    /// replica is killed (kill -9) and restarted on the same file while the
    /// rest are sent through every replica.
    KillReplica { after_percent: u32 },
    /// After the payments (and their events delivered), every event
    /// delivered within the last `window_ms` is delivered again, as a broker
    /// does after a consumer restarts (`POST /outbox/redeliver`).
    RedeliveryStorm { window_ms: u64 },
}

impl Act {
    /// Whether the lesson kills the service (so needs to be able to restart it).
    pub fn kills_the_service(&self) -> bool {
        matches!(
            self,
            Act::CrashService { .. } | Act::RetryAfterRestart { .. } | Act::KillReplica { .. }
        )
    }
}

/// The longest answer retention a `late` retry waits out: a lesson stays short.
pub const LATE_RETRY_WAIT_MS_MAX: u64 = 60_000;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Checks {
    /// Minimums the run must reach for the lesson to have happened, e.g.
    /// `at_least = { faults_downstream = 1, replays = 1 }`.
    pub at_least: BTreeMap<String, u64>,
}

impl Scenario {
    /// Parses and checks one file's text; errors name the file, the field and the fix.
    pub fn parse(file: &str, text: &str) -> anyhow::Result<Scenario> {
        let mut scenario: Scenario = toml::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "{file}: {}\n  fix: correct the field shown above; scenarios/catalog/README.md lists every field",
                e.to_string().trim_end()
            )
        })?;
        scenario.check(file)?;
        if scenario.replicas > 1 {
            // Several services on one file: each must know it shares it.
            scenario.service.replica = true;
        }
        Ok(scenario)
    }

    fn check(&self, file: &str) -> anyhow::Result<()> {
        let stem = file.rsplit('/').next().unwrap_or(file).trim_end_matches(".toml");
        let checks = [
            self.check_name(stem),
            self.check_client(),
            self.check_service(),
            self.check_proxy(),
            self.check_act(),
            self.check_second_hop(),
            self.check_metrics(),
        ];
        match checks.into_iter().find_map(Result::err) {
            Some(Bad(field, why)) => Err(anyhow::anyhow!("{file}: field `{field}` {why}")),
            None => Ok(()),
        }
    }

    fn check_name(&self, stem: &str) -> Result<(), Bad> {
        if self.name != stem {
            return Err(Bad::new(
                "name",
                format!("is {:?} but the file is {stem}.toml: make them equal", self.name),
            ));
        }
        let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
        if self.name.is_empty() || !self.name.bytes().all(allowed) {
            return Err(Bad::new("name", "must be lowercase letters, digits and '-'"));
        }
        Ok(())
    }

    fn check_client(&self) -> Result<(), Bad> {
        if let Retries::Word(word) = &self.client.retries
            && word != "unlimited"
        {
            return Err(Bad::new(
                "client.retries",
                format!("is {word:?}: use a number (0 = never retry) or \"unlimited\""),
            ));
        }
        if client::money::parse_minor(&self.client.amount).is_err() {
            return Err(Bad::new(
                "client.amount",
                format!("is {:?}: use an amount such as \"1.00\"", self.client.amount),
            ));
        }
        if let Some(bad) = self
            .client
            .amounts
            .iter()
            .find(|a| client::money::parse_minor(a).is_err())
        {
            return Err(Bad::new(
                "client.amounts",
                format!("holds {bad:?}: use amounts such as \"1.00\""),
            ));
        }
        if let Some(size) = self.client.batch
            && !(2..=eo_core::wire::BATCH_ITEMS_MAX).contains(&size)
        {
            return Err(Bad::new(
                "client.batch",
                format!("must be between 2 and {}", eo_core::wire::BATCH_ITEMS_MAX),
            ));
        }
        if !(1..=client::strategy::CONCURRENCY_MAX).contains(&self.client.concurrency) {
            return Err(Bad::new(
                "client.concurrency",
                format!("must be between 1 and {}", client::strategy::CONCURRENCY_MAX),
            ));
        }
        Ok(())
    }

    fn check_service(&self) -> Result<(), Bad> {
        if !(1..=REPLICAS_MAX).contains(&self.replicas) {
            return Err(Bad::new("replicas", format!("must be between 1 and {REPLICAS_MAX}")));
        }
        if !(0.0..=1.0).contains(&self.service.crash_after_commit) {
            return Err(Bad::new(
                "service.crash_after_commit",
                "must be a probability between 0 and 1",
            ));
        }
        if self.service.crash_after_commit > 0.0 && !matches!(self.act, Act::CrashService { .. }) {
            return Err(Bad::new(
                "act.kind",
                "must be \"crash-service\" when service.crash_after_commit is set, so the runner restarts the service",
            ));
        }
        // Everything else the service itself would refuse at start, with
        // the receipts route the runner gives it in a lesson with a second hop.
        let mut service = self.service.clone();
        if self.expect_receipts.is_some() {
            service.receipts_url = Some("http://127.0.0.1:9".into());
        }
        service
            .config("catalog.db")
            .validate()
            .map_err(|why| Bad::new("service", why))
    }

    fn check_proxy(&self) -> Result<(), Bad> {
        match self
            .proxy
            .toxics
            .iter()
            .position(|t| !(0.0..=1.0).contains(&t.toxicity))
        {
            Some(i) => Err(Bad::new(
                &format!("proxy.toxics[{i}].toxicity"),
                "must be between 0 and 1",
            )),
            None => Ok(()),
        }
    }

    fn check_act(&self) -> Result<(), Bad> {
        match &self.act {
            Act::Duplicates { copies } if !(2..=16).contains(copies) => {
                Err(Bad::new("act.copies", "must be between 2 and 16"))
            }
            Act::ProxyOutage { after_percent, down_ms } if *after_percent > 100 || *down_ms > 60_000 => {
                Err(Bad::new("act", "needs after_percent <= 100 and down_ms <= 60000"))
            }
            Act::ClientCrash { after_percent, .. } if !(1..=99).contains(after_percent) => {
                Err(Bad::new("act.after_percent", "must be between 1 and 99"))
            }
            Act::CrashService { crashes } if crashes.is_none() && self.service.crash_after_commit <= 0.0 => {
                Err(Bad::new(
                    "act.crashes",
                    "must be set (e.g. crashes = 8), or service.crash_after_commit",
                ))
            }
            Act::CrashService { crashes: Some(n) } if !(1..=100).contains(n) => {
                Err(Bad::new("act.crashes", "must be between 1 and 100"))
            }
            Act::RetryAfterRestart { late: true }
                if self.service.key_retention.as_millis() > u128::from(LATE_RETRY_WAIT_MS_MAX) =>
            {
                Err(Bad::new(
                    "service.key_retention",
                    format!("must be at most {LATE_RETRY_WAIT_MS_MAX} ms for a late retry, which waits it out"),
                ))
            }
            Act::KillReplica { .. } if self.replicas < 2 => Err(Bad::new(
                "act.kind",
                "\"kill-replica\" needs replicas = 2 or more (the others serve while one is down)",
            )),
            Act::KillReplica { after_percent } if !(1..=99).contains(after_percent) => {
                Err(Bad::new("act.after_percent", "must be between 1 and 99"))
            }
            Act::RedeliveryStorm { window_ms } if !(1..=3_600_000).contains(window_ms) => {
                Err(Bad::new("act.window_ms", "must be between 1 and 3600000 (an hour)"))
            }
            Act::ReuseKeys { amount } if client::money::parse_minor(amount).is_err() => Err(Bad::new(
                "act.amount",
                format!("is {amount:?}: use an amount such as \"2.00\""),
            )),
            _ => Ok(()),
        }
    }

    fn check_second_hop(&self) -> Result<(), Bad> {
        if self.service.receipts_url.is_some() {
            return Err(Bad::new(
                "service.receipts_url",
                "is set by the runner (its own receipts service): set expect_receipts instead",
            ));
        }
        let second_hop = self.expect_receipts.is_some();
        match (second_hop, self.service.notify) {
            (true, Some(payment_service::NotifyMode::None)) => Err(Bad::new(
                "service.notify",
                "is \"none\" but expect_receipts is set: use \"outbox\" or \"after-commit\"",
            )),
            (false, Some(mode)) if mode != payment_service::NotifyMode::None => Err(Bad::new(
                "expect_receipts",
                "must be set when service.notify is: it starts the receipts service the service notifies",
            )),
            (false, _) if !self.receipts_proxy.toxics.is_empty() => Err(Bad::new(
                "receipts_proxy",
                "needs expect_receipts: there is no second hop without it",
            )),
            _ if matches!(self.act, Act::RedeliveryStorm { .. }) && !second_hop => Err(Bad::new(
                "act.kind",
                "\"redelivery-storm\" needs expect_receipts (and the outbox)",
            )),
            _ if self.receipts.processing_delay_ms > receipts::config::PROCESSING_DELAY_MS_MAX => Err(Bad::new(
                "receipts.processing_delay_ms",
                format!("must be at most {}", receipts::config::PROCESSING_DELAY_MS_MAX),
            )),
            _ => Ok(()),
        }
    }

    fn check_metrics(&self) -> Result<(), Bad> {
        match self.checks.at_least.keys().find(|m| !METRICS.contains(&m.as_str())) {
            Some(metric) => Err(Bad::new(
                "checks.at_least",
                format!("names {metric:?}; known metrics: {}", METRICS.join(", ")),
            )),
            None => Ok(()),
        }
    }
}

/// A field of a scenario file that is wrong, and why (with the fix).
struct Bad(String, String);

impl Bad {
    fn new(field: &str, why: impl Into<String>) -> Bad {
        Bad(field.to_owned(), why.into())
    }
}

/// The built-in catalog plus the files of `extra` (which replace built-ins of the same name).
pub fn load(extra: Option<&Path>) -> anyhow::Result<Vec<Scenario>> {
    let mut by_name: BTreeMap<String, Scenario> = BTreeMap::new();
    for (file, text) in BUILT_IN {
        let s = Scenario::parse(&format!("scenarios/catalog/{file}"), text)?;
        by_name.insert(s.name.clone(), s);
    }
    if let Some(dir) = extra {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the catalog directory {}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        if files.len() > CATALOG_FILES_MAX {
            bail!("{} has more than {CATALOG_FILES_MAX} .toml files", dir.display());
        }
        for path in files {
            let size = std::fs::metadata(&path)?.len();
            if size > CATALOG_FILE_BYTES_MAX {
                bail!(
                    "{}: larger than {CATALOG_FILE_BYTES_MAX} bytes; a scenario is a few dozen lines",
                    path.display()
                );
            }
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let s = Scenario::parse(&path.display().to_string(), &text)?;
            by_name.insert(s.name.clone(), s);
        }
    }
    let mut all: Vec<Scenario> = by_name.into_values().collect();
    all.sort_by_key(|s| (s.tour.unwrap_or(u32::MAX), s.name.clone()));
    Ok(all)
}
