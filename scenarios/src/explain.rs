//! `scenarios explain [LESSON]`: plays a lesson as the tour does (same
//! seed, same payments, so the same faults), then, while its parts are still
//! up, asks them what they recorded about one payment (the client's
//! history, the proxy's fault log, the service's `/events` and ledger) and
//! draws that payment's story.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use client::history::AttemptRecord;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::catalog::Scenario;
use crate::observe::{Event, Observer, Parts};
use crate::parts::{self, PROXY_NAME};
use crate::play::{self, Outcome, Settings};
use crate::story::{self, ATTEMPTS_SHOWN_MAX, Evidence, Fault, ServiceEvent};

/// Which payment to explain.
#[derive(Debug, Clone)]
pub enum Choice {
    /// The first most telling one (see [`story::pick`]).
    Telling,
    /// By 1-based position in the lesson.
    Payment(usize),
    /// The payment that sent this key.
    Key(String),
}

/// Plays `s` and returns its outcome and what was recorded about the chosen payment.
pub async fn play_and_collect(
    s: &Scenario,
    mut settings: Settings,
    choice: Choice,
) -> anyhow::Result<(Outcome, Evidence)> {
    let (observer, events) = Observer::channel();
    settings.observer = Some(observer);
    let collect = tokio::spawn(collect_when_judged(events, choice));
    let outcome = play::play(s, &settings).await;
    drop(settings);
    let evidence = collect.await.context("the collecting task failed")?;
    let outcome = outcome?;
    Ok((outcome, evidence?))
}

async fn collect_when_judged(mut events: mpsc::Receiver<Event>, choice: Choice) -> anyhow::Result<Evidence> {
    while let Some(event) = events.recv().await {
        if let Event::Judged {
            parts,
            outcome,
            release,
        } = event
        {
            let evidence = collect(&parts, &choice, &second_hop_keys(&outcome)).await;
            let _ = release.send(());
            return evidence;
        }
    }
    bail!("the lesson ended before it was judged")
}

/// Reads the client's history from the lesson's directory (blocking, on the pool).
async fn history(dir: &Path) -> anyhow::Result<Vec<AttemptRecord>> {
    let path = dir.join("history.jsonl");
    let text = tokio::task::spawn_blocking(move || std::fs::read_to_string(&path))
        .await?
        .context("cannot read the client's history")?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).context("a history line is not an attempt record"))
        .collect()
}

fn chosen_index(all: &[AttemptRecord], choice: &Choice) -> anyhow::Result<usize> {
    match choice {
        Choice::Telling => story::pick(all).map(|(i, _)| i).context("the lesson made no attempt"),
        Choice::Payment(n) => {
            let index = n.checked_sub(1).context("payments are numbered from 1")?;
            if !all.iter().any(|a| a.intent == index) {
                bail!("payment {n} made no attempt in this lesson (is --payments the tour's?)");
            }
            Ok(index)
        }
        Choice::Key(key) => all
            .iter()
            .find(|a| a.key.as_deref() == Some(key.as_str()))
            .map(|a| a.intent)
            .with_context(|| format!("no attempt sent the key {key:?} (same --seed and --payments as the tour?)")),
    }
}

/// Payments whose records are read when looking for the most telling story.
const CANDIDATES_MAX: usize = 8;

/// The keys of payments the second hop's judge found without a receipt
/// or with several: in a lesson about the second hop, their story tells it.
fn second_hop_keys(outcome: &Outcome) -> Vec<String> {
    let Some(receipts) = &outcome.receipts else {
        return Vec::new();
    };
    let at_fault = receipts.lost.first.iter().chain(&receipts.duplicated.first);
    at_fault.map(|(key, _)| key.clone()).take(CANDIDATES_MAX).collect()
}

/// Everything the parts recorded about the chosen payment; `at_fault`:
/// keys of payments whose story is worth telling first (the second hop's).
pub async fn collect(parts: &Parts, choice: &Choice, at_fault: &[String]) -> anyhow::Result<Evidence> {
    let all = history(&parts.dir).await?;
    let candidates = match choice {
        Choice::Telling => {
            let of_key = |key: &String| all.iter().find(|a| a.key.as_ref() == Some(key)).map(|a| a.intent);
            let mut first: Vec<usize> = at_fault.iter().filter_map(of_key).collect();
            first.extend(story::candidates(&all, CANDIDATES_MAX));
            first
        }
        other => vec![chosen_index(&all, other)?],
    };
    let mut best: Option<(u8, Evidence)> = None;
    for index in candidates {
        let mut attempts: Vec<AttemptRecord> = all.iter().filter(|a| a.intent == index).cloned().collect();
        attempts.sort_by_key(|a| a.at_unix_us);
        let proxy = (parts.proxy_api.as_str(), parts.routes.as_slice());
        let mut e = evidence_from(&parts.replica_urls, proxy, index + 1, attempts).await?;
        if let Some(receipts) = &parts.receipts_url {
            e.receipts = Some(receipts_of(&parts.service_url, receipts, &e.ledger).await?);
        }
        let score = story::told(&e).0;
        if best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((score, e));
        }
    }
    best.map(|(_, e)| e).context("the lesson made no attempt")
}

/// `value` percent-encoded for a query string (keys may hold any printable ASCII).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn get_json(http: &reqwest::Client, url: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
    let pairs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    let url = if pairs.is_empty() {
        url.to_owned()
    } else {
        format!("{url}?{}", pairs.join("&"))
    };
    let response = http.get(&url).send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("GET {url} answered {status}");
    }
    response.json().await.with_context(|| format!("GET {url}: not JSON"))
}

/// Asks the service and the proxy about `attempts` (one payment's, oldest first).
pub async fn evidence(
    service: &str,
    proxy_api: &str,
    payment: usize,
    attempts: Vec<AttemptRecord>,
) -> anyhow::Result<Evidence> {
    let routes = [PROXY_NAME.to_owned()];
    evidence_from(&[service.to_owned()], (proxy_api, &routes), payment, attempts).await
}

/// [`evidence`] from every replica of the service (each attempt's request
/// id is in the record of the one it reached) and every proxy route (the
/// fault logs merged by time). The ledger is read from the first replica.
pub async fn evidence_from(
    replicas: &[String],
    (proxy_api, routes): (&str, &[String]),
    payment: usize,
    attempts: Vec<AttemptRecord>,
) -> anyhow::Result<Evidence> {
    let service = replicas.first().context("no service to ask")?;
    let http = parts::http()?;
    let mut e = Evidence {
        payment,
        ..Evidence::default()
    };
    for id in attempts
        .iter()
        .take(ATTEMPTS_SHOWN_MAX)
        .filter_map(|a| a.request_id.as_ref())
    {
        for replica in replicas {
            let found = get_json(&http, &format!("{replica}/events"), &[("request_id", id)]).await?;
            let events: Vec<ServiceEvent> = serde_json::from_value(found["events"].clone())?;
            e.service_dropped = e
                .service_dropped
                .max(found["dropped_since_start"].as_u64().unwrap_or(0));
            e.service.extend(events);
        }
    }
    for route in routes {
        let stats = get_json(&http, &format!("{proxy_api}/proxies/{route}/stats"), &[]).await?;
        e.faults
            .extend(serde_json::from_value::<Vec<Fault>>(stats["fault_log"].clone())?);
    }
    e.faults.sort_by_key(|f| f.at_unix_us);
    e.ledger = ledger(&http, service, &attempts, &e.service).await?;
    e.attempts = attempts;
    Ok(e)
}

/// The receipts of each of `ledger`'s payments, by event id (`<ledger
/// id>:<payment id>`), read after the judge waited for the outbox to drain.
async fn receipts_of(service: &str, receipts: &str, ledger: &[(i64, String)]) -> anyhow::Result<Vec<(i64, u64)>> {
    if ledger.is_empty() {
        return Ok(Vec::new());
    }
    let deadline = std::time::Duration::from_millis(parts::STEP_TIMEOUT_MS);
    let hop = client::receipts::second_hop(&client::service::ServiceReader::new(service, deadline)?).await?;
    let ids: Vec<String> = ledger
        .iter()
        .map(|(id, _)| eo_core::wire::event_id(&hop.ledger_id, *id))
        .collect();
    // The judge's reader: retried, and every answer checked (each id asked, in order).
    let answers = client::receipts::ReceiptsReader::new(receipts, deadline)?
        .lookup(&ids)
        .await?;
    Ok(ledger
        .iter()
        .zip(answers)
        .map(|((id, _), a)| (*id, a.receipts))
        .collect())
}

/// The payments the ledger holds for this payment: under its keys, or (no
/// key) the ones the service said it committed for its attempts.
async fn ledger(
    http: &reqwest::Client,
    service: &str,
    attempts: &[AttemptRecord],
    events: &[ServiceEvent],
) -> anyhow::Result<Vec<(i64, String)>> {
    let mut keys: Vec<&String> = attempts.iter().filter_map(|a| a.key.as_ref()).collect();
    keys.dedup();
    let mut found = Vec::new();
    for key in keys {
        let page = get_json(http, &format!("{service}/payments"), &[("key", key)]).await?;
        for p in page["payments"].as_array().into_iter().flatten() {
            found.push((p["id"].as_i64().context("a payment without id")?, key.clone()));
        }
    }
    if attempts.iter().all(|a| a.key.is_none()) {
        let committed = events.iter().filter(|e| e.kind == "committed");
        found.extend(committed.filter_map(|e| e.payment_id).map(|id| (id, String::new())));
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// The diagram's title line.
pub fn title(lesson: &str, e: &Evidence, seed: u64) -> String {
    let (_, why) = story::told(e);
    format!("{lesson}, payment {} (seed {seed}): {why}", e.payment)
}

/// Prints the diagram; with `step`, waits for Enter before each step.
pub async fn show(rows: Vec<Vec<String>>, step: bool) {
    for (i, group) in rows.into_iter().enumerate() {
        if step && i > 2 {
            let _ = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)
            })
            .await;
        }
        let mut out = std::io::stdout().lock();
        for line in group {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}

/// What `scenarios explain` was asked.
pub struct Ask {
    pub lesson: Scenario,
    pub payments: usize,
    pub seed: u64,
    pub choice: Choice,
    /// Wait for Enter between steps.
    pub step: bool,
    /// Print Mermaid text instead of the terminal drawing.
    pub mermaid: bool,
}

/// Plays the lesson, draws the chosen payment's story; true if the lesson
/// behaved as it says.
pub async fn run(ask: Ask) -> anyhow::Result<bool> {
    let settings = Settings {
        payments: ask.payments,
        seed: ask.seed,
        keep: None,
        exe: std::env::current_exe()?,
        observer: None,
        outside: None,
        db_url: None,
    };
    let (outcome, evidence) = play_and_collect(&ask.lesson, settings, ask.choice).await?;
    let steps = story::steps(&evidence);
    let title = title(&ask.lesson.name, &evidence, ask.seed);
    if ask.mermaid {
        print!("{}", crate::diagram::mermaid(&steps, &title));
        return Ok(outcome.pass);
    }
    show(crate::diagram::terminal(&steps, &title), ask.step).await;
    if evidence.service_dropped > 0 {
        println!(
            "\n(the service's event record is bounded: {} older events were pushed out)",
            evidence.service_dropped
        );
    }
    let result = if outcome.pass { "PASS" } else { "FAIL" };
    println!(
        "\nthe lesson: {} of {} payments, {} (expected {}) {result}",
        ask.lesson.name,
        outcome.payments,
        outcome.headline(),
        outcome.expected.headline()
    );
    Ok(outcome.pass)
}
