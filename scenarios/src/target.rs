//! Lessons against a service this runner did not start (`--service-url`):
//! only the proxy and the client run here. The request's shape comes from a
//! small TOML "target" file; the service is judged per key when it offers
//! this project's read API (`POST /payments/lookup` or `GET /payments?key=`),
//! and by the money it moved otherwise, read from a stats URL and a field of
//! its answer (the original workshop's `/stats` is a bare number). Lessons
//! that kill the service need `--service-cmd`: the runner then starts,
//! kills and restarts it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context, bail};
use client::reconcile::{self, Evidence, Mode};
use client::runner::Intents;
use client::service::{Inconclusive, LOOKUP_KEYS_MAX, ServicePayment, ServiceReader};
use client::strategy::{AmountStyle, KeyStrategy, RequestShape};
use payment_service::DedupMode;
use serde::Deserialize;

use crate::catalog::{Act, Scenario};
use crate::parts::{self, Service};
use crate::play::{self, Acted, Outcome, Stage};

/// The largest target file read: a bound on what a wrong path makes us read.
const TARGET_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Pages of `GET /payments?key=` read per key at most.
const KEY_PAGES_MAX: usize = 100;
/// Tries of one read of the outside service before it is inconclusive.
const READ_TRIES_MAX: u32 = 3;
/// Checks of this project's own service behaviour (its replay header, its
/// 409s, its `/stats`), dropped against a service that need not have them.
const OWN_SERVICE_CHECKS: &[&str] = &["replays", "conflicts_409", "duplicate_keys"];

/// The target file: how to talk to the service and how to read its money.
/// Every field is optional; the defaults are this project's service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TargetFile {
    /// Where payments are posted, e.g. `/payments/`.
    path: String,
    /// The header carrying the idempotency key.
    key_header: String,
    /// `string` (`"1.00"`) or `number` (`1.00`).
    amount: AmountStyle,
    /// The money moved: a path on the service or a full `http://` URL.
    stats_url: String,
    /// A JSON pointer into the stats answer (`/total_amount`); `""` when the
    /// answer is the number itself.
    stats_field: String,
    /// Whether that number is in major units (`12.50`) or minor (`1250`).
    stats_unit: Unit,
    /// `auto` (per key if the service can be read by key), `per-key`, `totals`.
    judge: JudgeMode,
    /// How long the service keeps stored answers (`"2s"`): the late-retry
    /// lessons wait it out; they are skipped without it.
    answers_expire_after: Option<String>,
}

impl Default for TargetFile {
    fn default() -> TargetFile {
        let shape = RequestShape::default();
        TargetFile {
            path: shape.path,
            key_header: shape.key_header,
            amount: shape.amount,
            stats_url: "/stats".into(),
            stats_field: "/total_amount".into(),
            stats_unit: Unit::Major,
            judge: JudgeMode::Auto,
            answers_expire_after: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Unit {
    Major,
    Minor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum JudgeMode {
    Auto,
    PerKey,
    Totals,
}

/// How a lesson's outside service is read for the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Judging {
    /// `POST /payments/lookup` (this project's batch read by key).
    Lookup,
    /// `GET /payments?key=K`, one key at a time.
    ByKey,
    /// Only the money moved, from the stats URL before and after.
    Totals,
}

/// A service judged from outside, and how to talk to it.
#[derive(Debug)]
pub struct Outside {
    /// `http://host:port`, as given.
    pub url: String,
    pub addr: SocketAddr,
    pub shape: RequestShape,
    stats_url: String,
    stats_field: String,
    stats_unit: Unit,
    judge: JudgeMode,
    answers_expire_after: Option<Duration>,
    service_cmd: Option<String>,
    /// The flags this came from, for `reproduce with`.
    flags: Vec<String>,
}

impl Outside {
    /// The command-line flags that reach this service again.
    pub fn flags(&self) -> &[String] {
        &self.flags
    }

    /// From `--service-url`, `--target-file` and `--service-cmd`; every
    /// error names what to fix.
    pub async fn new(url: &str, target_file: Option<&Path>, service_cmd: Option<String>) -> anyhow::Result<Outside> {
        let url = client::service::parse_http_url(url).map_err(|why| anyhow::anyhow!("--service-url {why}"))?;
        let parsed = reqwest::Url::parse(&url)?;
        if parsed.path() != "/" && !parsed.path().is_empty() {
            bail!("--service-url {url}: give only http://host:port; the payments' path goes in the target file");
        }
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("--service-url {url}: cannot resolve {host}"))?
            .next()
            .with_context(|| format!("--service-url {url}: {host} has no address"))?;
        let file = match target_file {
            Some(path) => read_target_file(path).await?,
            None => TargetFile::default(),
        };
        let mut flags = vec!["--service-url".to_owned(), url.clone()];
        if let Some(path) = target_file {
            flags.extend(["--target-file".to_owned(), path.display().to_string()]);
        }
        if let Some(cmd) = &service_cmd {
            flags.extend(["--service-cmd".to_owned(), cmd.clone()]);
        }
        let mut outside = Outside::from_file(url, addr, file, service_cmd)?;
        outside.flags = flags;
        Ok(outside)
    }

    fn from_file(url: String, addr: SocketAddr, f: TargetFile, service_cmd: Option<String>) -> anyhow::Result<Outside> {
        let shape = RequestShape {
            path: f.path,
            key_header: f.key_header,
            amount: f.amount,
        };
        shape.validate().map_err(|why| anyhow::anyhow!("target file: {why}"))?;
        let stats_url = if f.stats_url.starts_with("http://") {
            client::service::parse_http_url(&f.stats_url)
                .map_err(|why| anyhow::anyhow!("target file: stats_url {why}"))?
        } else if f.stats_url.starts_with('/') {
            format!("{url}{}", f.stats_url)
        } else {
            bail!(
                "target file: stats_url {:?} must be a path (/stats) or an http:// URL",
                f.stats_url
            );
        };
        if !f.stats_field.is_empty() && !f.stats_field.starts_with('/') {
            bail!(
                "target file: stats_field {:?} is a JSON pointer: \"/total_amount\", or \"\" for a bare number",
                f.stats_field
            );
        }
        let answers_expire_after = match &f.answers_expire_after {
            Some(text) => Some(
                payment_service::config::parse_duration(text)
                    .map_err(|why| anyhow::anyhow!("target file: answers_expire_after {why}"))?,
            ),
            None => None,
        };
        if answers_expire_after.is_some_and(|d| d.as_millis() > u128::from(crate::catalog::LATE_RETRY_WAIT_MS_MAX)) {
            bail!("target file: answers_expire_after must be at most a minute: the late-retry lesson waits it out");
        }
        Ok(Outside {
            url,
            addr,
            shape,
            stats_url,
            stats_field: f.stats_field,
            stats_unit: f.stats_unit,
            judge: f.judge,
            answers_expire_after,
            service_cmd,
            flags: Vec::new(),
        })
    }

    /// How long the service keeps stored answers, if the target file says.
    pub(crate) fn answers_expire_after(&self) -> Option<Duration> {
        self.answers_expire_after
    }

    /// The lesson as this service plays it ([`Outside::adapt`]), or why it
    /// cannot be played against it ([`Outside::skip_reason`]).
    pub fn playable(&self, s: &Scenario) -> Result<Scenario, String> {
        match self.skip_reason(s) {
            Some(why) => Err(why),
            None => Ok(self.adapt(s)),
        }
    }

    /// Why this lesson cannot be played against this service, if it cannot.
    pub fn skip_reason(&self, s: &Scenario) -> Option<String> {
        if s.act.kills_the_service() && self.service_cmd.is_none() {
            return Some(
                "kills and restarts the service: give --service-cmd \"...\" so the runner can start, kill and restart it"
                    .into(),
            );
        }
        if s.replicas > 1 {
            return Some("runs several replicas of this project's service on one database file".into());
        }
        if s.expect_receipts.is_some() {
            return Some("needs this project's outbox and receipts service (the second hop)".into());
        }
        if s.client.batch.is_some() {
            return Some("sends batches (POST /payments/batch), which the original workshop's contract has not".into());
        }
        if matches!(s.act, Act::RetryAfterRestart { late: true }) && self.answers_expire_after.is_none() {
            return Some(
                "retries after the service's stored answers expired: say when with answers_expire_after in the --target-file"
                    .into(),
            );
        }
        match s.service.dedup {
            DedupMode::Unique | DedupMode::Exercise => None,
            other => Some(format!(
                "shows this project's service with --dedup {}, a setting an outside service does not have",
                other.as_str()
            )),
        }
    }

    /// The lesson as it applies to an outside service: checks that only this
    /// project's service can meet (its replay header, its 409s, its
    /// `/stats` figures) are dropped; the verdict and the network's checks stay.
    pub fn adapt(&self, s: &Scenario) -> Scenario {
        let mut s = s.clone();
        s.checks
            .at_least
            .retain(|metric, _| !OWN_SERVICE_CHECKS.contains(&metric.as_str()));
        s
    }

    /// The service for one lesson: the one running at the URL, or, with
    /// `--service-cmd`, one the runner starts (and kills and restarts).
    pub(crate) async fn start(&self) -> anyhow::Result<Service> {
        match &self.service_cmd {
            Some(cmd) => crate::command::supervise(cmd, &self.url, self.addr).await,
            None => Ok(Service {
                url: self.url.clone(),
                addr: self.addr,
                restarts: Arc::new(AtomicU64::new(0)),
                restart: None,
                stop: None,
                task: tokio::spawn(async { Ok(()) }),
            }),
        }
    }
}

async fn read_target_file(path: &Path) -> anyhow::Result<TargetFile> {
    let owned = path.to_owned();
    let text = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let size = std::fs::metadata(&owned)?.len();
        if size > TARGET_FILE_BYTES_MAX {
            bail!("larger than {TARGET_FILE_BYTES_MAX} bytes");
        }
        Ok(std::fs::read_to_string(&owned)?)
    })
    .await?
    .with_context(|| format!("cannot read the target file {}", path.display()))?;
    parse_target(&path.display().to_string(), &text)
}

fn parse_target(name: &str, text: &str) -> anyhow::Result<TargetFile> {
    toml::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "{name}: {}\n  fields: path, key_header, amount, stats_url, stats_field, stats_unit, judge, answers_expire_after (see the README)",
            e.to_string().trim_end()
        )
    })
}

/// An outside service as one lesson finds it before its act.
pub(crate) struct Before {
    pub(crate) outside: Arc<Outside>,
    pub(crate) judging: Judging,
    /// The money moved before the act, when the verdict needs totals.
    total_minor: Option<Result<i128, Inconclusive>>,
}

impl Before {
    /// Finds out how the service can be judged and, when by totals (or the
    /// lesson's client sends no keys), reads the money moved so far.
    pub(crate) async fn read(outside: Arc<Outside>, key: KeyStrategy) -> anyhow::Result<Before> {
        let http = parts::http()?;
        let judging = match outside.judge {
            JudgeMode::Totals => Judging::Totals,
            JudgeMode::Auto | JudgeMode::PerKey => probe(&http, &outside.url).await,
        };
        if outside.judge == JudgeMode::PerKey && judging == Judging::Totals {
            bail!(
                "judge = \"per-key\", but {} answers neither POST /payments/lookup nor GET /payments?key= with a page of payments",
                outside.url
            );
        }
        let total_minor = if judging == Judging::Totals || key == KeyStrategy::None {
            Some(read_total(&http, &outside).await)
        } else {
            None
        };
        Ok(Before {
            outside,
            judging,
            total_minor,
        })
    }
}

/// Which read by key the service offers, if any: an answer 200 with a JSON
/// object holding a `payments` array counts.
async fn probe(http: &reqwest::Client, url: &str) -> Judging {
    let is_page = |v: &serde_json::Value| v.get("payments").is_some_and(serde_json::Value::is_array);
    let probe_key = "scenarios-probe";
    let lookup = http
        .post(format!("{url}/payments/lookup"))
        .json(&serde_json::json!({ "keys": [probe_key] }))
        .send()
        .await;
    if let Ok(r) = lookup
        && r.status() == 200
        && r.json::<serde_json::Value>().await.is_ok_and(|v| is_page(&v))
    {
        return Judging::Lookup;
    }
    let by_key = http.get(format!("{url}/payments?key={probe_key}")).send().await;
    if let Ok(r) = by_key
        && r.status() == 200
        && r.json::<serde_json::Value>().await.is_ok_and(|v| is_page(&v))
    {
        return Judging::ByKey;
    }
    Judging::Totals
}

/// The money the service says it moved, in minor units.
async fn read_total(http: &reqwest::Client, outside: &Outside) -> Result<i128, Inconclusive> {
    let what = format!("GET {}", outside.stats_url);
    let text = with_tries(&what, || async {
        let r = http.get(&outside.stats_url).send().await.map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("answered {}", r.status()));
        }
        r.text().await.map_err(|e| e.to_string())
    })
    .await?;
    total_from(&text, &outside.stats_field, outside.stats_unit).map_err(|why| inconclusive(format!("{what}: {why}")))
}

/// The number at `field` (a JSON pointer, `""` for the whole answer) in
/// minor units. The number's text is read as decimal digits, never as a float.
fn total_from(text: &str, field: &str, unit: Unit) -> Result<i128, String> {
    let number = if field.is_empty() {
        let t = text.trim();
        t.strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(t)
            .to_owned()
    } else {
        let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
        match doc.pointer(field) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(other) => return Err(format!("{field} is {other}, not a number")),
            None => return Err(format!("no field {field} in the answer")),
        }
    };
    match unit {
        Unit::Major => major_to_minor(&number),
        Unit::Minor => number
            .parse()
            .map_err(|_| format!("{number:?} is not a whole number of minor units")),
    }
}

/// A decimal number of major units (`1000.0`, `"12.50"`, `1.0E3` as a Java
/// double prints it) in minor units, to the nearest one: a service that sums
/// in floating point can be a hair off.
pub(crate) fn major_to_minor(text: &str) -> Result<i128, String> {
    /// Digits at most: far beyond any sum, far within an `i128`.
    const DIGITS_MAX: usize = 30;
    let bad = || format!("{text:?} is not a decimal number");
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], text[at + 1..].parse::<i32>().map_err(|_| bad())?),
        None => (text, 0),
    };
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    if digits.is_empty() || digits.len() > DIGITS_MAX || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let value: i128 = digits.parse().map_err(|_| bad())?;
    let scale = i64::from(exponent) + 2 - frac.len() as i64;
    let minor = if scale >= 0 {
        u32::try_from(scale)
            .ok()
            .and_then(|s| 10i128.checked_pow(s))
            .and_then(|f| value.checked_mul(f))
            .ok_or_else(|| format!("{text:?} is too large"))?
    } else {
        match u32::try_from(-scale).ok().and_then(|s| 10i128.checked_pow(s)) {
            Some(divisor) => (value + divisor / 2) / divisor,
            None => 0,
        }
    };
    Ok(if negative { -minor } else { minor })
}

fn inconclusive(reason: String) -> Inconclusive {
    Inconclusive { reason }
}

/// Tries `read` up to [`READ_TRIES_MAX`] times, a little apart.
async fn with_tries<T, F, Fut>(what: &str, read: F) -> Result<T, Inconclusive>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut why = String::new();
    for attempt in 1..=READ_TRIES_MAX {
        match read().await {
            Ok(value) => return Ok(value),
            Err(e) => why = e,
        }
        if attempt < READ_TRIES_MAX {
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
        }
    }
    Err(inconclusive(format!("{what}: {why} (tried {READ_TRIES_MAX} times)")))
}

/// Judges a lesson played against an outside service.
pub(crate) async fn judge(
    stage: &Stage<'_>,
    acted: &Acted,
    before: &Before,
    deadline: Duration,
) -> anyhow::Result<Outcome> {
    let mode = Mode::Fresh { baseline_id: 0 };
    let intents: Intents = stage.intents.clone().into();
    let evidence = Evidence {
        intents: &intents,
        attempts: (&acted.judged).into(),
        strategy: stage.options.key,
        mode: &mode,
    };
    let outside = &before.outside;
    let by_key = before.judging != Judging::Totals && stage.options.key != KeyStrategy::None;
    let (judgement, judged) = if by_key {
        let keys = reconcile::keys_sent(&evidence);
        let read = read_by_keys(outside, before.judging, &keys, deadline).await;
        let how = match before.judging {
            Judging::Lookup => "POST /payments/lookup",
            _ => "GET /payments?key=",
        };
        let judged = format!("per key: the {} keys of this run read with {how}", keys.len());
        (
            read.and_then(|payments| reconcile::judge_by_keys(&evidence, &payments)),
            judged,
        )
    } else {
        let http = parts::http()?;
        let after = read_total(&http, outside).await;
        let moved = match &before.total_minor {
            Some(Ok(total)) => after.map(|a| a - total),
            Some(Err(e)) => Err(e.clone()),
            None => Err(inconclusive("the total before the lesson was not read".into())),
        };
        let why = if stage.options.key == KeyStrategy::None {
            "the client sends no keys"
        } else {
            "the service offers no read by key"
        };
        let judged = format!(
            "totals only ({why}): {} {:?} before and after",
            outside.stats_url, outside.stats_field
        );
        (moved.map(|m| reconcile::judge_totals(&intents, m)), judged)
    };
    let read = judgement
        .as_ref()
        .map(|r| (r.moved_minor, BTreeMap::new()))
        .map_err(Clone::clone);
    let faults = stage.proxy.faults().await?;
    let metrics = play::metrics(stage, acted, faults, None);
    let mut outcome = play::assess_read(stage.scenario, &stage.intents, judgement, read, metrics);
    outcome.judged = Some(judged);
    Ok(outcome)
}

/// Every payment under `keys`, read by key: in batches where the service
/// has `POST /payments/lookup`, else one `GET /payments?key=` per key.
async fn read_by_keys(
    outside: &Outside,
    judging: Judging,
    keys: &[String],
    deadline: Duration,
) -> Result<Vec<ServicePayment<'static>>, Inconclusive> {
    let reader = ServiceReader::new(&outside.url, deadline).map_err(|e| inconclusive(format!("{e:#}")))?;
    let mut found = Vec::new();
    if judging == Judging::Lookup {
        for chunk in keys.chunks(LOOKUP_KEYS_MAX - 1) {
            read_pages(&reader, ByKey::Lookup(chunk), &mut found).await?;
        }
    } else {
        for key in keys {
            read_pages(&reader, ByKey::One(key), &mut found).await?;
        }
    }
    Ok(found)
}

/// How one read by key asks the service.
#[derive(Clone, Copy)]
enum ByKey<'k> {
    /// `POST /payments/lookup` with these keys.
    Lookup(&'k [String]),
    /// `GET /payments?key=`.
    One(&'k str),
}

/// Reads the pages of one read by key until one says no more follow, at
/// most [`KEY_PAGES_MAX`] of them, adding every payment to `found`.
async fn read_pages(
    reader: &ServiceReader,
    by: ByKey<'_>,
    found: &mut Vec<ServicePayment<'static>>,
) -> Result<(), Inconclusive> {
    let mut after = 0;
    for _ in 0..KEY_PAGES_MAX {
        let keep = |p: &ServicePayment<'_>| found.push(p.to_owned_payment());
        let next = match by {
            ByKey::Lookup(keys) => reader.lookup_page(keys, after, keep).await?,
            ByKey::One(key) => reader.key_page(key, after, keep).await?,
        };
        match next {
            Some(next) if next > after => after = next,
            Some(_) => {
                return Err(inconclusive(
                    "a read by key: next_after_id does not move forward".into(),
                ));
            }
            None => return Ok(()),
        }
    }
    let what = match by {
        ByKey::Lookup(keys) => format!("a lookup of {} keys", keys.len()),
        ByKey::One(key) => format!("key {key}"),
    };
    Err(inconclusive(format!("more than {KEY_PAGES_MAX} pages for {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_read_as_decimal_digits() {
        for (text, minor) in [
            ("1000.0", 100_000),
            ("12.5", 1250),
            ("0", 0),
            ("1.0E3", 100_000),
            ("1.0e-2", 1),
            ("-3.25", -325),
            ("1000.0000000000002", 100_000),
            ("0.30000000000000004", 30),
        ] {
            assert_eq!(major_to_minor(text), Ok(minor), "{text}");
        }
        for bad in ["", "abc", "1.2.3", "1e", "--1", "1e99999999999"] {
            assert!(major_to_minor(bad).is_err(), "{bad}");
        }
        assert_eq!(total_from("1000.0\n", "", Unit::Major), Ok(100_000));
        assert_eq!(
            total_from(r#"{"total_amount":"12.50"}"#, "/total_amount", Unit::Major),
            Ok(1250)
        );
        assert_eq!(total_from(r#"{"a":{"minor":1250}}"#, "/a/minor", Unit::Minor), Ok(1250));
        assert!(
            total_from(r#"{"x":1}"#, "/total", Unit::Major)
                .expect_err("missing")
                .contains("no field")
        );
        assert!(total_from("[]", "", Unit::Major).is_err());
    }

    #[test]
    fn the_workshop_target_file_parses_and_bad_ones_say_why() {
        let text = include_str!("../targets/original-workshop.toml");
        let f = parse_target("original-workshop.toml", text).expect("parses");
        let addr: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let o = Outside::from_file("http://127.0.0.1:8080".into(), addr, f, None).expect("valid");
        assert_eq!(o.shape.path, "/payments/");
        assert_eq!(o.shape.key_header, "Payment-Idempotence-Key");
        assert_eq!(
            (o.stats_url.as_str(), o.stats_field.as_str()),
            ("http://127.0.0.1:8080/stats", "")
        );
        assert!(
            parse_target("t", "pathh = \"/p\"")
                .expect_err("unknown")
                .to_string()
                .contains("fields:")
        );
        let bad_field = parse_target("t", "stats_field = \"total\"").expect("parses");
        let error = Outside::from_file("http://h".into(), addr, bad_field, None).expect_err("not a pointer");
        assert!(error.to_string().contains("JSON pointer"), "{error}");
    }
}
