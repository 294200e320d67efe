//! Run-time settings of the service. [`Settings`] declares every behaviour
//! flag once: the binary's flags, the scenario catalog's `[service]` table, the
//! scenario runner's child process and [`Config`] are all made from it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use eo_core::serve::Limits;
use serde::{Deserialize, Deserializer};

/// How the service treats idempotency keys: the lesson knob.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DedupMode {
    /// A unique key on every payment: correct under any concurrency.
    #[default]
    Unique,
    /// Look the key up, then insert in a separate step: right for sequential
    /// retries, wrong for concurrent duplicates.
    CheckThenInsert,
    /// Keys are stored for audit only; every request pays.
    Off,
    /// The workshop's exercise: the attendee's code in `src/exercise.rs`
    /// decides what a keyed request does (`scenarios exercise` checks it).
    Exercise,
    /// Keys remembered in a map of this process only (the lesson: a retry
    /// that reaches another replica, or this one after a restart, pays again).
    Memory,
}

impl DedupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DedupMode::Unique => "unique",
            DedupMode::CheckThenInsert => "check-then-insert",
            DedupMode::Off => "off",
            DedupMode::Exercise => "exercise",
            DedupMode::Memory => "memory",
        }
    }
}

/// How committed payments reach the receipts service (the second hop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyMode {
    /// No downstream.
    None,
    /// The lesson's mistake (a dual write): after the COMMIT, one call per
    /// payment before the answer, nothing kept; a crash in between loses it.
    AfterCommit,
    /// The transactional outbox: the event commits with the payment, a relay
    /// delivers it at least once.
    Outbox,
}

impl NotifyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyMode::None => "none",
            NotifyMode::AfterCommit => "after-commit",
            NotifyMode::Outbox => "outbox",
        }
    }
}

/// SQLite's `synchronous` setting in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Synchronous {
    /// fsync the WAL at every commit: an acknowledged payment survives power loss.
    Full,
    /// No fsync at commit: survives a process crash, may lose recent commits on power loss.
    Normal,
}

impl Synchronous {
    pub fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }

    fn as_flag(self) -> &'static str {
        match self {
            Synchronous::Full => "full",
            Synchronous::Normal => "normal",
        }
    }
}

/// How the service behaves: every flag but where it listens and stores. In
/// TOML (the scenario catalog) the fields keep their snake_case names and
/// durations are written as on the command line (`"10s"`).
#[derive(Debug, Clone, PartialEq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// How keys deduplicate: unique (correct), check-then-insert (racy), off (keys ignored), exercise (src/exercise.rs decides), memory (a map in this process only)
    #[arg(long, value_enum, default_value_t = DedupMode::Unique)]
    pub dedup: DedupMode,
    /// Refuse payments without an idempotency key (400) instead of executing them undeduplicated
    #[arg(long)]
    pub require_key: bool,
    /// Simulated work in ms between claiming a key and committing the payment (widens races)
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub processing_delay_ms: u64,
    /// SQLite synchronous mode: full fsyncs every commit (survives power loss), normal does not
    #[arg(long, value_enum, default_value_t = Synchronous::Full)]
    pub synchronous: Synchronous,
    /// How long stored responses are kept (e.g. 24h, 30m, 0); keys stay on payments forever
    #[arg(long, default_value = "24h", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(deserialize_with = "duration_text")]
    pub key_retention: Duration,
    /// How long an in-flight key is reserved for its worker before a retry may take it over
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(deserialize_with = "duration_text")]
    pub key_lease: Duration,
    /// Probability (0..1) that the process kills itself (SIGKILL) right after committing a payment, before answering
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub crash_after_commit: f64,
    /// Probability (0..1) that the process kills itself (SIGKILL) right before committing a payment
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub crash_before_commit: f64,
    /// Base URL of the receipts service (http://host:port); events go to its /receipts
    #[arg(long, value_name = "URL")]
    pub receipts_url: Option<String>,
    /// How payments reach the receipts service: none, after-commit (a call after the commit: the lesson's mistake), outbox (default with --receipts-url)
    #[arg(long, value_enum, value_name = "MODE")]
    pub notify: Option<NotifyMode>,
    /// Probability (0..1) that the process kills itself (SIGKILL) after the receipts service acknowledged an event, before it is marked delivered
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub crash_relay_after_send: f64,
    /// Seed of the crash-injection dice, so a crashing run can be replayed
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// With --dedup exercise: run reference solution N instead of src/exercise.rs (0 is the starting state)
    #[arg(long, hide = true, value_name = "N")]
    pub exercise_solution: Option<u8>,
    /// Share the database file with other services started with --replica (one machine; default: this service alone)
    #[arg(long)]
    pub replica: bool,
}

/// The defaults are clap's: one source for the flags' defaults and this.
impl Default for Settings {
    fn default() -> Settings {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            settings: Settings,
        }
        Defaults::parse_from(["payment-service"]).settings
    }
}

impl Settings {
    /// The configuration these settings give for the database `db` (a
    /// SQLite file, or a `postgres://` URL).
    pub fn config(&self, db: impl Into<PathBuf>) -> Config {
        Config {
            db: db.into(),
            dedup: self.dedup,
            require_key: self.require_key,
            processing_delay: Duration::from_millis(self.processing_delay_ms),
            synchronous: self.synchronous,
            key_retention: self.key_retention,
            key_lease: self.key_lease,
            crash_after_commit: self.crash_after_commit,
            crash_before_commit: self.crash_before_commit,
            seed: self.seed,
            exercise_solution: self.exercise_solution,
            replica: self.replica,
            receipts_url: self.receipts_url.clone(),
            notify: self.notify.unwrap_or(match self.receipts_url {
                Some(_) => NotifyMode::Outbox,
                None => NotifyMode::None,
            }),
            crash_relay_after_send: self.crash_relay_after_send,
            relay: RelayLimits::DEFAULT,
            queue_depth_max: QUEUE_DEPTH_MAX_DEFAULT,
            write_wait: Duration::from_millis(WRITE_WAIT_MS_MAX_DEFAULT),
            server_limits: SERVER_LIMITS,
        }
    }

    /// The command-line flags that give these settings back (for a child process).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--dedup={}", self.dedup.as_str()),
            format!("--processing-delay-ms={}", self.processing_delay_ms),
            format!("--synchronous={}", self.synchronous.as_flag()),
            format!("--key-retention={}ms", self.key_retention.as_millis()),
            format!("--key-lease={}ms", self.key_lease.as_millis()),
            format!("--crash-after-commit={}", self.crash_after_commit),
            format!("--crash-before-commit={}", self.crash_before_commit),
            format!("--seed={}", self.seed),
        ];
        if self.require_key {
            args.push("--require-key".to_owned());
        }
        if let Some(n) = self.exercise_solution {
            args.push(format!("--exercise-solution={n}"));
        }
        if self.replica {
            args.push("--replica".to_owned());
        }
        if let Some(url) = &self.receipts_url {
            args.push(format!("--receipts-url={url}"));
        }
        if let Some(mode) = self.notify {
            args.push(format!("--notify={}", mode.as_str()));
        }
        if self.crash_relay_after_send != 0.0 {
            args.push(format!("--crash-relay-after-send={}", self.crash_relay_after_send));
        }
        args
    }
}

fn duration_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// What the error says when `--db postgres://...` cannot be reached (the
/// binary exits 2 then, with the fix).
pub const POSTGRES_UNREACHABLE: &str = "is the server running? try .ci/postgres.sh start";

/// The PostgreSQL URL if `--db` is one (`postgres://` or
/// `postgresql://`); anything else is the path of a SQLite file.
pub fn postgres_url(db: &std::path::Path) -> Option<&str> {
    let text = db.to_str()?;
    (text.starts_with("postgres://") || text.starts_with("postgresql://")).then_some(text)
}

#[derive(Debug, Clone)]
pub struct Config {
    pub db: PathBuf,
    pub dedup: DedupMode,
    pub require_key: bool,
    /// Simulated work between claiming a key and committing the payment.
    pub processing_delay: Duration,
    pub synchronous: Synchronous,
    /// How long stored responses are kept; the key stays on the payment forever.
    pub key_retention: Duration,
    /// How long an in-flight key is held for its worker before another
    /// request may take it over. Must exceed the processing delay.
    pub key_lease: Duration,
    /// Probability in [0, 1] that the process kills itself right after a commit, before the answer.
    pub crash_after_commit: f64,
    /// Probability in [0, 1] that the process kills itself right before a commit.
    pub crash_before_commit: f64,
    pub seed: u64,
    /// `--dedup exercise` runs this reference solution instead of the attendee's file.
    pub exercise_solution: Option<u8>,
    /// Several services share the database file (`--replica`); else this one owns it.
    pub replica: bool,
    /// Base URL of the receipts service (`--receipts-url`).
    pub receipts_url: Option<String>,
    /// How payments reach it (resolved: `outbox` when a URL is given and no mode).
    pub notify: NotifyMode,
    /// Probability in [0, 1] that the process kills itself after a delivery, before marking it.
    pub crash_relay_after_send: f64,
    /// The relay's bounds and backoff.
    pub relay: RelayLimits,
    /// Writes waiting for the writer thread; beyond it requests get 503.
    pub queue_depth_max: usize,
    /// How long a request waits for the writer's answer before answering 503
    /// ("may or may not have taken effect"; the payment may still commit).
    pub write_wait: Duration,
    /// Connections, and the deadlines that keep slow clients from holding them.
    pub server_limits: Limits,
}

/// The HTTP server's bounds. A request head or body is at most 16 KiB, which
/// any real client sends in one go: 10 s to read either is generous on a bad
/// network and makes a slow-client attack cost the attacker a reconnection
/// every 10 s. 8192 connections is ten times the 800 slow connections that
/// made the old server unreachable, at a few KiB each. An idle connection
/// lives longer than the 30 s a request may wait for the writer. On shutdown
/// open requests get 10 s.
pub const SERVER_LIMITS: Limits = Limits {
    connections_max: 8192,
    header_read_ms_max: 10_000,
    body_read_ms_max: 10_000,
    idle_ms_max: 120_000,
    drain_ms_max: 10_000,
};

/// The outbox relay's bounds and retry timing (not flags: tests shorten them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Pending events read per round: bounds a round's memory and the writer op that marks them.
    pub batch_events_max: usize,
    /// Deliveries in flight at once: bounds connections to the receiver.
    pub in_flight_max: usize,
    /// One delivery attempt's deadline (connect, send, answer), in ms.
    pub attempt_ms_max: u64,
    /// Connecting to the receiver, in ms: a refused or unreachable receiver shows quickly.
    pub connect_ms_max: u64,
    /// Full-jitter backoff of a failed event: base and cap, in ms.
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    /// Longest sleep of an idle relay before it looks again, in ms (new
    /// events wake it at once; this only bounds a missed wake-up).
    pub idle_poll_ms_max: u64,
}

impl RelayLimits {
    pub const DEFAULT: RelayLimits = RelayLimits {
        batch_events_max: 256,
        in_flight_max: 32,
        attempt_ms_max: 5_000,
        connect_ms_max: 1_000,
        backoff_base_ms: 10,
        backoff_cap_ms: 2_000,
        idle_poll_ms_max: 1_000,
    };
}

impl Config {
    /// A configuration with the documented defaults (those of [`Settings`])
    /// for the given database file.
    pub fn new(db: impl Into<PathBuf>) -> Config {
        Settings::default().config(db)
    }

    /// Checks relations between settings that flags alone cannot express.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("--crash-after-commit", self.crash_after_commit),
            ("--crash-before-commit", self.crash_before_commit),
            ("--crash-relay-after-send", self.crash_relay_after_send),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be a probability between 0 and 1, got {p}"));
            }
        }
        if self.key_lease <= self.processing_delay {
            return Err(format!(
                "--key-lease ({} ms) must be longer than --processing-delay-ms ({} ms), or healthy requests lose their key to retries",
                self.key_lease.as_millis(),
                self.processing_delay.as_millis()
            ));
        }
        if let Some(n) = self.exercise_solution {
            crate::exercise_kit::check_solution(n, self.dedup)?;
        }
        self.validate_notify()?;
        if self.queue_depth_max == 0 {
            return Err("the write queue depth must be at least 1".into());
        }
        Ok(())
    }
}

impl Config {
    /// `--notify` against `--receipts-url`: a mode that calls out needs a
    /// URL, an `http://host[:port]` base without a path.
    fn validate_notify(&self) -> Result<(), String> {
        let mode = self.notify.as_str();
        let Some(url) = &self.receipts_url else {
            return match self.notify {
                NotifyMode::None => Ok(()),
                _ => Err(format!(
                    "--notify {mode} needs --receipts-url URL (the receipts service, e.g. --receipts-url http://127.0.0.1:8090), or use --notify none"
                )),
            };
        };
        receipts_endpoint(url).map(drop)
    }
}

/// Where events are posted: `--receipts-url` + [`eo_core::wire::RECEIPTS_PATH`].
pub fn receipts_endpoint(base: &str) -> Result<String, String> {
    let trimmed = base.trim_end_matches('/');
    let rest = trimmed.strip_prefix("http://").ok_or_else(|| {
        format!("--receipts-url {base:?} must start with http:// (for example http://127.0.0.1:8090)")
    })?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(format!(
            "--receipts-url {base:?} must be http://host[:port] without a path; events go to its {}",
            eo_core::wire::RECEIPTS_PATH
        ));
    }
    Ok(format!("{trimmed}{}", eo_core::wire::RECEIPTS_PATH))
}

/// Default write-queue depth: deep enough to absorb a burst from 1000
/// concurrent clients, shallow enough that a stuck disk shows up as 503s within
/// a second rather than as minutes of queued work.
pub const QUEUE_DEPTH_MAX_DEFAULT: usize = 4096;

/// Default wait for the writer's answer. A commit normally takes well under a
/// millisecond; this only trips when the disk stalls.
pub const WRITE_WAIT_MS_MAX_DEFAULT: u64 = 30_000;

/// Parses a duration such as `24h`, `30m`, `10s`, `250ms` or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().map_err(|_| {
        format!("{text:?} is not a duration: use a whole number and a unit, such as 24h, 30m, 10s or 250ms")
    })?;
    let ms_per_unit = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?} has no known unit: use ms, s, m, h or d")),
    };
    value
        .checked_mul(ms_per_unit)
        .filter(|ms| *ms <= 365 * 86_400_000)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is longer than a year"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_through_flags() {
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            settings: Settings,
        }
        let odd = Settings {
            dedup: DedupMode::Exercise,
            require_key: true,
            processing_delay_ms: 250,
            synchronous: Synchronous::Normal,
            key_retention: Duration::from_millis(1500),
            key_lease: Duration::from_secs(3),
            crash_after_commit: 0.25,
            crash_before_commit: 0.125,
            seed: 99,
            exercise_solution: Some(3),
            replica: true,
            receipts_url: Some("http://127.0.0.1:9".into()),
            notify: Some(NotifyMode::AfterCommit),
            crash_relay_after_send: 0.5,
        };
        let args = std::iter::once("x".to_owned()).chain(odd.to_args());
        assert_eq!(Flags::parse_from(args).settings, odd);
        let defaults = std::iter::once("x".to_owned()).chain(Settings::default().to_args());
        assert_eq!(Flags::parse_from(defaults).settings, Settings::default());
    }

    #[test]
    fn settings_read_from_toml_like_flags() {
        let settings: Settings = toml_like(r#"{"dedup": "off", "key_lease": "2s"}"#);
        assert_eq!(settings.dedup, DedupMode::Off);
        assert_eq!(settings.key_lease, Duration::from_secs(2));
        assert_eq!(settings.key_retention, Settings::default().key_retention);
        assert!(serde_json::from_str::<Settings>(r#"{"dedupe": "off"}"#).is_err());
    }

    fn toml_like(json: &str) -> Settings {
        serde_json::from_str(json).expect("valid settings")
    }

    #[test]
    fn notify_defaults_to_the_outbox_with_a_url_and_refuses_a_mode_without_one() {
        let with = |url: Option<&str>, notify| Settings {
            receipts_url: url.map(str::to_owned),
            notify,
            ..Settings::default()
        };
        assert_eq!(with(None, None).config("x").notify, NotifyMode::None);
        assert_eq!(with(Some("http://h:1"), None).config("x").notify, NotifyMode::Outbox);
        let none = with(Some("http://h:1"), Some(NotifyMode::None)).config("x");
        assert_eq!(none.notify, NotifyMode::None);
        for mode in [NotifyMode::AfterCommit, NotifyMode::Outbox] {
            let error = with(None, Some(mode)).config("x").validate().unwrap_err();
            assert!(error.contains("needs --receipts-url"), "{error}");
        }
        for bad in ["127.0.0.1:8090", "https://h", "http://h/receipts", "http://"] {
            assert!(with(Some(bad), None).config("x").validate().is_err(), "{bad}");
        }
        assert_eq!(receipts_endpoint("http://h:1/"), Ok("http://h:1/receipts".into()));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "h", "10", "1.5h", "-1s", "10 parsecs", "99999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
