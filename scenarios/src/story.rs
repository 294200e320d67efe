//! One payment's story, from what the three parts recorded: the client's
//! attempts (its history), the proxy's fault log and the service's event
//! record. Nothing here is scripted: each step is one recorded fact, put in
//! causal order within its attempt (request → fault or service → answer or
//! fault → what the client concluded).
//!
//! The records share one clock (µs since the Unix epoch). The service's
//! events are matched to attempts exactly (by the `X-Request-Id` each
//! attempt sent); a proxy fault, which knows no HTTP, by time: it fired
//! while an attempt that failed was in flight.

use client::classify::{ErrorKind, Outcome};
use client::history::AttemptRecord;
use serde::{Deserialize, Serialize};

/// A fault may be logged this long after the client saw its attempt end
/// (the two are stamped by different tasks), in µs.
const FAULT_SLACK_US: u64 = 2_000;
/// Attempts of one payment drawn at most (an outage can cause hundreds).
pub const ATTEMPTS_SHOWN_MAX: usize = 12;

/// One entry of the service's `GET /events`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct ServiceEvent {
    pub seq: u64,
    pub at_unix_us: u64,
    pub kind: String,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub payment_id: Option<i64>,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub problem: Option<String>,
}

/// One entry of the proxy's fault log (`GET /proxies/{p}/stats`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Fault {
    pub connection: u64,
    pub toxic: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub stream: String,
    #[serde(default)]
    pub at_unix_us: u64,
}

/// Everything recorded about one payment.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// 1-based position of the payment in the lesson.
    pub payment: usize,
    /// Its attempts, oldest first (every run, copies included).
    pub attempts: Vec<AttemptRecord>,
    /// The service's events for those attempts.
    pub service: Vec<ServiceEvent>,
    /// The proxy's whole fault log (matched here by time).
    pub faults: Vec<Fault>,
    /// Payments the ledger holds under the payment's keys: (id, key).
    pub ledger: Vec<(i64, String)>,
    /// Events the service's bounded record had pushed out (it may have forgotten some).
    pub service_dropped: u64,
    /// With a second hop: the receipts of each payment in `ledger` (id, receipts).
    pub receipts: Option<Vec<(i64, u64)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Actor {
    Client,
    Proxy,
    Service,
}

/// One line of the diagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Step {
    /// A new attempt starts (a separator across all columns).
    Attempt { number: u32, text: String },
    /// A message; `lost` when it never arrived (drawn crossed).
    Arrow {
        from: Actor,
        to: Actor,
        label: String,
        lost: bool,
    },
    /// Something one part did or concluded.
    Note { on: Actor, text: String },
    /// What the ledger holds in the end (a closing line across all columns).
    Ledger { text: String },
}

fn arrow(from: Actor, to: Actor, label: impl Into<String>) -> Step {
    Step::Arrow {
        from,
        to,
        label: label.into(),
        lost: false,
    }
}

fn note(on: Actor, text: impl Into<String>) -> Step {
    Step::Note { on, text: text.into() }
}

/// The last key-like piece of a key, so a diagram stays narrow (`…-0000017`).
pub fn short_key(key: &str) -> String {
    match key.rfind('-') {
        Some(at) if key.len() > 16 => format!("…{}", &key[at..]),
        _ => key.to_owned(),
    }
}

/// The steps of the whole story, in order.
pub fn steps(e: &Evidence) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut used = vec![false; e.faults.len()];
    let mut previous: Option<&AttemptRecord> = None;
    for (i, a) in e.attempts.iter().take(ATTEMPTS_SHOWN_MAX).enumerate() {
        // Numbered across runs: a resumed or restarted client starts its own count again.
        steps.push(attempt_header(i as u32 + 1, a, previous));
        attempt_steps(e, a, &mut used, &mut steps);
        previous = Some(a);
    }
    if e.attempts.len() > ATTEMPTS_SHOWN_MAX {
        let more = e.attempts.len() - ATTEMPTS_SHOWN_MAX;
        steps.push(note(Actor::Client, format!("… {more} more attempts not drawn")));
    }
    steps.push(ledger_note(e));
    if let Some(receipts) = &e.receipts {
        steps.push(receipts_note(receipts));
    }
    steps
}

fn attempt_header(number: u32, a: &AttemptRecord, previous: Option<&AttemptRecord>) -> Step {
    let key = match (&a.key, previous.and_then(|p| p.key.as_ref())) {
        (None, _) => "no key".to_owned(),
        (Some(k), Some(before)) if k == before => format!("the same key {}", short_key(k)),
        (Some(k), Some(_)) => format!("a NEW key {}", short_key(k)),
        (Some(k), None) => format!("key {}", short_key(k)),
    };
    let after = match previous {
        // A copy sent at the same time (the duplicates lessons).
        Some(p) if a.at_unix_us < p.at_unix_us + (p.end_us - p.start_us) => ", sent while it was in flight".to_owned(),
        Some(p) => {
            let gap_us = a.at_unix_us - (p.at_unix_us + (p.end_us - p.start_us));
            format!(", {:.1} ms later", gap_us as f64 / 1000.0)
        }
        None => String::new(),
    };
    Step::Attempt {
        number,
        text: format!("attempt {number}, {key}{after}"),
    }
}

/// The service's events for one attempt (matched by its request id).
fn events_of<'a>(e: &'a Evidence, a: &AttemptRecord) -> Vec<&'a ServiceEvent> {
    let Some(id) = &a.request_id else { return Vec::new() };
    e.service.iter().filter(|s| s.request_id.as_ref() == Some(id)).collect()
}

/// The fault that fired on this attempt, if it failed: logged while it was
/// in flight, preferably on the stream the service's record points to
/// (upstream if the service never saw the request, downstream if it did).
/// Matched by time: with concurrent payments it may be a neighbour's fault
/// of the same kind, which the proxy cannot tell apart (it knows no HTTP).
fn fault_of(e: &Evidence, a: &AttemptRecord, reached: bool, used: &mut [bool]) -> Option<usize> {
    a.error?;
    let (from, to) = (a.at_unix_us, a.at_unix_us + (a.end_us - a.start_us) + FAULT_SLACK_US);
    let stream = if reached { "downstream" } else { "upstream" };
    let free = |i: &usize| !used[*i] && (from..=to).contains(&e.faults[*i].at_unix_us);
    let found = (0..e.faults.len())
        .filter(free)
        .find(|&i| e.faults[i].stream == stream)
        .or_else(|| (0..e.faults.len()).find(free))?;
    used[found] = true;
    Some(found)
}

/// `reset_peer ↑` / `reset_peer ↓`: the toxic's type and stream.
fn toxic(f: &Fault) -> String {
    let arrow = if f.stream == "upstream" { "↑" } else { "↓" };
    format!("{} {arrow}", f.ty)
}

fn attempt_steps(e: &Evidence, a: &AttemptRecord, used: &mut [bool], steps: &mut Vec<Step>) {
    let (c, p, s) = (Actor::Client, Actor::Proxy, Actor::Service);
    if a.error == Some(ErrorKind::Connect) {
        steps.push(note(c, "connection refused: nothing was sent"));
        steps.push(note(c, conclusion(a)));
        return;
    }
    steps.push(arrow(c, p, "POST /payments"));
    let events = events_of(e, a);
    let fault = fault_of(e, a, !events.is_empty(), used).map(|i| &e.faults[i]);
    // What the service recorded decides which message the fault took.
    if let Some(f) = fault.filter(|_| events.is_empty()) {
        steps.push(note(p, format!("✕ request dropped ({})", toxic(f))));
        steps.push(lost(p, c, "connection reset"));
        steps.push(note(s, "never saw it"));
        steps.push(note(c, conclusion(a)));
        return;
    }
    service_steps(&events, a, steps);
    match fault {
        Some(f) => {
            steps.push(note(p, format!("✕ answer dropped ({})", toxic(f))));
            steps.push(lost(p, c, client_saw(a)));
        }
        None => steps.push(arrow(p, c, client_saw(a))),
    }
    steps.push(note(c, conclusion(a)));
}

fn lost(from: Actor, to: Actor, label: impl Into<String>) -> Step {
    Step::Arrow {
        from,
        to,
        label: label.into(),
        lost: true,
    }
}

/// Proxy → service, what the service did, service → proxy.
fn service_steps(events: &[&ServiceEvent], a: &AttemptRecord, steps: &mut Vec<Step>) {
    let (p, s) = (Actor::Proxy, Actor::Service);
    if events.is_empty() {
        steps.push(arrow(p, s, "POST /payments"));
        let why = if a.error == Some(ErrorKind::Timeout) {
            "no record: still working?"
        } else {
            "no record (restarted?)"
        };
        steps.push(note(s, why));
        return;
    }
    steps.push(arrow(p, s, "POST /payments"));
    for ev in events.iter().filter(|ev| ev.kind != "received") {
        let id = ev.payment_id.map_or(String::new(), |id| format!(" #{id}"));
        let text = match ev.kind.as_str() {
            "committed" => format!("COMMIT payment{id}"),
            "replayed" => format!("key known: replay{id}"),
            "in_flight" => "key in flight: 409".to_owned(),
            "key_reused" => "other amount: 422".to_owned(),
            "unavailable" => "busy: 503".to_owned(),
            other => format!("{other} {}", ev.problem.as_deref().unwrap_or("")),
        };
        steps.push(note(s, text));
        steps.push(arrow(s, p, answer_label(ev.status, ev.kind == "replayed")));
    }
}

fn answer_label(status: Option<u16>, replayed: bool) -> String {
    match (status, replayed) {
        (Some(s), true) => format!("{s}, Idempotent-Replayed: true"),
        (Some(201), false) => "201 Created".to_owned(),
        (Some(s), false) => s.to_string(),
        (None, _) => "?".to_owned(),
    }
}

/// What reached the client.
fn client_saw(a: &AttemptRecord) -> String {
    match (a.status, a.error) {
        (Some(s), None) => answer_label(Some(s), a.replayed == Some(true)),
        (_, Some(ErrorKind::Reset)) => "connection reset".to_owned(),
        (_, Some(ErrorKind::Timeout)) => "nothing in time (timeout)".to_owned(),
        (_, Some(ErrorKind::Incomplete)) => "connection closed mid-answer".to_owned(),
        (_, Some(kind)) => format!("{kind:?}").to_lowercase(),
        (None, None) => "?".to_owned(),
    }
}

/// What the client concluded from the attempt.
fn conclusion(a: &AttemptRecord) -> String {
    let keyed = a.key.is_some();
    match (a.outcome, a.status) {
        (Outcome::Ok, _) if a.replayed == Some(true) => "ok: the first answer, replayed".to_owned(),
        (Outcome::Ok, _) => "ok: paid".to_owned(),
        (_, Some(409)) => "409: wait, retry, same key".to_owned(),
        (Outcome::Fail, Some(s)) if (400..500).contains(&s) && s != 409 && s != 429 => format!("refused ({s}): stop"),
        (Outcome::Fail, _) => "failed: nothing happened, retry".to_owned(),
        (Outcome::Unknown, _) if keyed => "no answer: paid? retry, same key".to_owned(),
        (Outcome::Unknown, _) => "no answer: paid? no key to ask".to_owned(),
    }
}

fn ledger_note(e: &Evidence) -> Step {
    let ids: Vec<String> = e.ledger.iter().map(|(id, _)| format!("#{id}")).collect();
    let text = match ids.len() {
        0 => "ledger: no payment".to_owned(),
        1 => format!("ledger: ONE payment {}", ids[0]),
        n => format!("ledger: {n} payments {}", ids.join(" ")),
    };
    Step::Ledger { text }
}

/// The second hop's closing line: the receipts each payment got.
fn receipts_note(receipts: &[(i64, u64)]) -> Step {
    let each: Vec<String> = receipts
        .iter()
        .map(|(id, n)| match n {
            0 => format!("NONE for #{id}: paid, not receipted"),
            1 => format!("ONE for #{id}"),
            n => format!("{n} for #{id}: receipted {n} times"),
        })
        .collect();
    let text = match each.is_empty() {
        true => "receipts: no payment, no receipt".to_owned(),
        false => format!("receipts: {}", each.join(", ")),
    };
    Step::Ledger { text }
}

/// Why a payment's story is worth telling, and how much: a lost answer that
/// was then replayed (or paid again) tells the whole lesson.
pub fn interest(attempts: &[&AttemptRecord]) -> (u8, &'static str) {
    let unknown_then = attempts.iter().position(|a| a.outcome == Outcome::Unknown);
    let replayed = attempts.iter().any(|a| a.replayed == Some(true));
    let keys: std::collections::BTreeSet<_> = attempts.iter().map(|a| &a.key).collect();
    let conflict = attempts.iter().any(|a| matches!(a.status, Some(409 | 422)));
    match (unknown_then, replayed) {
        (Some(i), true) if i + 1 < attempts.len() => (5, "no answer, retried, the first answer replayed"),
        (Some(i), false) if i + 1 < attempts.len() && keys.len() > 1 => (4, "no answer, retried with a new key"),
        (Some(i), false) if i + 1 < attempts.len() => (4, "no answer, retried"),
        _ if conflict => (3, "a duplicate was refused (409/422)"),
        (Some(_), _) => (3, "no answer, never retried"),
        _ if keys.len() > 1 => (2, "paid under two keys"),
        _ if attempts.len() > 1 => (2, "more than one attempt"),
        _ => (1, "paid at the first attempt"),
    }
}

/// (score, payment index, why) per payment, from the client's view alone.
fn scored(attempts: &[AttemptRecord]) -> Vec<(u8, usize, &'static str)> {
    let mut by_intent: std::collections::BTreeMap<usize, Vec<&AttemptRecord>> = Default::default();
    for a in attempts {
        by_intent.entry(a.intent).or_default().push(a);
    }
    by_intent
        .iter()
        .map(|(intent, list)| {
            let (score, why) = interest(list);
            (score, *intent, why)
        })
        .collect()
}

/// The first most telling payment, from the client's view: (its 0-based index, why).
pub fn pick(attempts: &[AttemptRecord]) -> Option<(usize, &'static str)> {
    let mut best: Option<(u8, usize, &'static str)> = None;
    for (score, intent, why) in scored(attempts) {
        if best.is_none_or(|(s, _, _)| score > s) {
            best = Some((score, intent, why));
        }
    }
    best.map(|(_, intent, why)| (intent, why))
}

/// The `max` first most telling payments (client's view), most telling first.
pub fn candidates(attempts: &[AttemptRecord], max: usize) -> Vec<usize> {
    let mut all = scored(attempts);
    all.sort_by_key(|(score, intent, _)| (std::cmp::Reverse(*score), *intent));
    all.into_iter().take(max).map(|(_, intent, _)| intent).collect()
}

/// How telling a story is once the service's record is known: an answer
/// lost after a COMMIT, then a replay (exactly once) or a second COMMIT
/// (paid twice), tells the whole lesson.
pub fn told(e: &Evidence) -> (u8, &'static str) {
    if let Some(receipts) = &e.receipts {
        if receipts.iter().any(|&(_, n)| n == 0) {
            return (8, "paid, but never receipted");
        }
        if receipts.iter().any(|&(_, n)| n > 1) {
            return (8, "paid once, receipted more than once");
        }
    }
    let commits = e.service.iter().filter(|s| s.kind == "committed").count();
    let replays = e.service.iter().any(|s| s.kind == "replayed");
    let lost_after_commit = e
        .attempts
        .iter()
        .any(|a| a.outcome == Outcome::Unknown && events_of(e, a).iter().any(|s| s.kind == "committed"));
    match (lost_after_commit, replays, commits) {
        (true, true, _) => (7, "answer lost after the commit, retried, the first answer replayed"),
        (true, _, 2..) => (7, "answer lost after the commit, retried, paid a second time"),
        (true, _, _) => (6, "answer lost after the commit"),
        _ => {
            let refs: Vec<&AttemptRecord> = e.attempts.iter().collect();
            interest(&refs)
        }
    }
}
