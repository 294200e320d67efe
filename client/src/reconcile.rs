//! Did each payment happen exactly once? The client's own record (intents and
//! attempt history) against the service's ledger, checked the Jepsen way:
//!
//! - a payment with an `ok` attempt must appear exactly once;
//! - with only `unknown` attempts it may appear once or not at all;
//! - with only `fail` attempts it must not appear;
//! - no payment may carry one of this run's keys without an intent.
//!
//! The business verdict then asks only: was every payment made once?

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::classify::Outcome;
use crate::history::AttemptRecord;
use crate::money::format_minor;
use crate::runner::Intent;
use crate::strategy::KeyStrategy;

/// Page size when reading the service's ledger (the service's maximum).
const PAGE_LIMIT: usize = 1000;
/// Pages read at most: 10 million payments.
const PAGES_MAX: usize = 10_000;
/// Keys looked up one by one at most, for payments not found in the window.
const KEY_LOOKUPS_MAX: usize = 10_000;
/// Each request to the service during reconciliation must answer within this.
const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Problems listed by key in the report; the counts cover all of them.
const ISSUES_LISTED_MAX: usize = 20;

#[derive(Debug, Clone, Deserialize)]
pub struct ServicePayment {
    pub id: i64,
    pub amount_minor: i64,
    pub idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct Page {
    payments: Vec<ServicePayment>,
    next_after_id: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    ExactlyOnce,
    TooLittle,
    TooMuch,
    /// Some payments lost and others duplicated: the sum can hide both.
    Both,
}

impl Verdict {
    pub fn headline(self) -> &'static str {
        match self {
            Verdict::ExactlyOnce => "EXACTLY ONCE",
            Verdict::TooLittle => "PAID TOO LITTLE",
            Verdict::TooMuch => "PAID TOO MUCH",
            Verdict::Both => "PAID TOO LITTLE AND TOO MUCH",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyIssue {
    pub intent: usize,
    pub key: String,
    pub payments: u64,
    pub problem: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reconciliation {
    pub intents: u64,
    pub expected: String,
    pub expected_minor: i64,
    pub moved: String,
    pub moved_minor: i64,
    /// Payments the service holds for this run.
    pub payments: u64,
    /// Payments made exactly once.
    pub exactly_once: u64,
    /// Payments that never happened.
    pub lost: u64,
    /// Payments that happened more than once, and the extra payments they made.
    pub duplicated: u64,
    pub extra_payments: u64,
    /// Payments carrying this run's keys that no intent explains.
    pub orphaned: u64,
    /// Jepsen violations: an acknowledged payment the service does not have,
    /// and a payment whose attempts all failed but which exists anyway.
    pub acknowledged_but_missing: u64,
    pub failed_but_landed: u64,
    /// Payments whose every answer was lost: how many landed anyway.
    pub unknown_landed: u64,
    pub unknown_not_landed: u64,
    /// False with `--key none`: without keys only totals can be compared.
    pub per_key: bool,
    pub issues: Vec<KeyIssue>,
    pub verdict: Verdict,
}

fn service_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .retry(reqwest::retry::never())
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .build()
        .context("cannot build the HTTP client")
}

async fn get_json<T: serde::de::DeserializeOwned>(client: &reqwest::Client, url: &str) -> anyhow::Result<T> {
    let response = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url} failed (is the service running?)"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("GET {url} answered {status}");
    }
    response
        .json()
        .await
        .with_context(|| format!("GET {url} did not answer the expected JSON"))
}

/// The service's highest payment id now: what comes after it is this run's.
pub async fn baseline(service: &str) -> anyhow::Result<i64> {
    #[derive(Deserialize)]
    struct Stats {
        last_payment_id: i64,
    }
    let stats: Stats = get_json(&service_client()?, &format!("{}/stats", service.trim_end_matches('/'))).await?;
    Ok(stats.last_payment_id)
}

async fn payments_after(client: &reqwest::Client, service: &str, after_id: i64) -> anyhow::Result<Vec<ServicePayment>> {
    let mut all = Vec::new();
    let mut after = after_id;
    for _ in 0..PAGES_MAX {
        let page: Page = get_json(
            client,
            &format!("{service}/payments?after_id={after}&limit={PAGE_LIMIT}"),
        )
        .await?;
        all.extend(page.payments);
        match page.next_after_id {
            Some(next) => after = next,
            None => return Ok(all),
        }
    }
    bail!(
        "the service holds more than {} payments after id {after_id}",
        PAGES_MAX * PAGE_LIMIT
    )
}

/// Reconciles `intents` (and their attempts) with the service's payments
/// after `after_id`.
pub async fn reconcile(
    service: &str,
    after_id: i64,
    intents: &[Intent],
    attempts: &[AttemptRecord],
    strategy: KeyStrategy,
) -> anyhow::Result<Reconciliation> {
    let service = service.trim_end_matches('/');
    let client = service_client()?;
    let window = payments_after(&client, service, after_id).await?;
    let expected_minor: i64 = intents.iter().map(|i| i.amount_minor).sum();
    if strategy == KeyStrategy::None {
        return Ok(totals_only(intents, &window, expected_minor));
    }

    // Which intent each key belongs to.
    let mut owner: HashMap<&str, usize> = HashMap::new();
    if strategy == KeyStrategy::PerPayment {
        owner.extend(intents.iter().map(|i| (i.key.as_str(), i.index)));
    }
    for a in attempts {
        if let Some(key) = &a.key {
            owner.insert(key.as_str(), a.intent);
        }
    }
    let prefix = intents.first().map(|i| key_prefix(&i.key)).unwrap_or_default();

    let mut found: HashMap<usize, Vec<ServicePayment>> = HashMap::new();
    let mut orphans = Vec::new();
    for p in window {
        let Some(key) = p.idempotency_key.as_deref() else {
            continue;
        };
        match owner.get(key) {
            Some(intent) => found.entry(*intent).or_default().push(p),
            None if !prefix.is_empty() && key.starts_with(&prefix) => orphans.push(p),
            None => {}
        }
    }
    // A key missing from the window may have been paid before it (a re-run
    // with the same seed, or a resumed ledger): ask for those keys one by one.
    // Keys per intent, built once: scanning `owner` per missing intent would
    // be quadratic on a re-run where every key is outside the window.
    let mut keys_of: HashMap<usize, Vec<&str>> = HashMap::new();
    for (key, intent) in &owner {
        keys_of.entry(*intent).or_default().push(key);
    }
    let missing: Vec<&Intent> = intents.iter().filter(|i| !found.contains_key(&i.index)).collect();
    for intent in missing.into_iter().take(KEY_LOOKUPS_MAX) {
        for key in keys_of.get(&intent.index).into_iter().flatten() {
            let url = format!("{service}/payments?key={}", encode(key));
            let page: Page = get_json(&client, &url).await?;
            if !page.payments.is_empty() {
                found.entry(intent.index).or_default().extend(page.payments);
            }
        }
    }

    let mut outcomes: HashMap<usize, (bool, bool, u32)> = HashMap::new(); // (ok, unknown, attempts)
    for a in attempts {
        let e = outcomes.entry(a.intent).or_default();
        e.0 |= a.outcome == Outcome::Ok;
        e.1 |= a.outcome == Outcome::Unknown;
        e.2 += 1;
    }
    let mut r = Reconciliation {
        intents: intents.len() as u64,
        expected: format_minor(expected_minor),
        expected_minor,
        moved: String::new(),
        moved_minor: 0,
        payments: 0,
        exactly_once: 0,
        lost: 0,
        duplicated: 0,
        extra_payments: 0,
        orphaned: orphans.len() as u64,
        acknowledged_but_missing: 0,
        failed_but_landed: 0,
        unknown_landed: 0,
        unknown_not_landed: 0,
        per_key: true,
        issues: Vec::new(),
        verdict: Verdict::ExactlyOnce,
    };
    let issue = |r: &mut Reconciliation, intent: &Intent, payments: u64, problem: &'static str| {
        if r.issues.len() < ISSUES_LISTED_MAX {
            r.issues.push(KeyIssue {
                intent: intent.index,
                key: intent.key.clone(),
                payments,
                problem,
            });
        }
    };
    for intent in intents {
        let payments = found.get(&intent.index).map_or(&[][..], Vec::as_slice);
        let n = payments.len() as u64;
        r.payments += n;
        r.moved_minor += payments.iter().map(|p| p.amount_minor).sum::<i64>();
        let (ok, unknown, tried) = outcomes.get(&intent.index).copied().unwrap_or_default();
        match n {
            0 => {
                r.lost += 1;
                if ok {
                    r.acknowledged_but_missing += 1;
                    issue(&mut r, intent, 0, "acknowledged but missing");
                } else {
                    if unknown {
                        r.unknown_not_landed += 1;
                    }
                    issue(&mut r, intent, 0, "lost");
                }
            }
            1 => {
                r.exactly_once += 1;
                if !ok && unknown {
                    r.unknown_landed += 1;
                } else if !ok && tried > 0 {
                    r.failed_but_landed += 1;
                    issue(&mut r, intent, 1, "failed but landed");
                }
            }
            _ => {
                r.duplicated += 1;
                r.extra_payments += n - 1;
                issue(&mut r, intent, n, "duplicated");
            }
        }
    }
    for p in &orphans {
        r.payments += 1;
        r.moved_minor += p.amount_minor;
        if r.issues.len() < ISSUES_LISTED_MAX {
            let key = p.idempotency_key.clone().unwrap_or_default();
            r.issues.push(KeyIssue {
                intent: usize::MAX,
                key,
                payments: 1,
                problem: "orphaned",
            });
        }
    }
    r.moved = format_minor(r.moved_minor);
    r.verdict = verdict(r.lost > 0, r.duplicated > 0 || r.orphaned > 0);
    Ok(r)
}

/// Without keys the service cannot tell which payment a row belongs to: compare
/// counts and sums of the keyless payments made during the run.
fn totals_only(intents: &[Intent], window: &[ServicePayment], expected_minor: i64) -> Reconciliation {
    let keyless: Vec<&ServicePayment> = window.iter().filter(|p| p.idempotency_key.is_none()).collect();
    let n = keyless.len() as u64;
    let want = intents.len() as u64;
    let moved_minor = keyless.iter().map(|p| p.amount_minor).sum();
    Reconciliation {
        intents: want,
        expected: format_minor(expected_minor),
        expected_minor,
        moved: format_minor(moved_minor),
        moved_minor,
        payments: n,
        exactly_once: n.min(want),
        lost: want.saturating_sub(n),
        duplicated: 0,
        extra_payments: n.saturating_sub(want),
        orphaned: 0,
        acknowledged_but_missing: 0,
        failed_but_landed: 0,
        unknown_landed: 0,
        unknown_not_landed: 0,
        per_key: false,
        issues: Vec::new(),
        verdict: verdict(n < want, n > want),
    }
}

fn verdict(too_little: bool, too_much: bool) -> Verdict {
    match (too_little, too_much) {
        (false, false) => Verdict::ExactlyOnce,
        (true, false) => Verdict::TooLittle,
        (false, true) => Verdict::TooMuch,
        (true, true) => Verdict::Both,
    }
}

/// `pay-0123456789abcdef-0000042` → `pay-0123456789abcdef-`.
fn key_prefix(key: &str) -> String {
    key.rfind('-').map(|at| key[..=at].to_owned()).unwrap_or_default()
}

/// Percent-encodes a key for a query string.
fn encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_encoding() {
        assert_eq!(key_prefix("pay-00ff-0000042"), "pay-00ff-");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
        assert_eq!(verdict(true, true), Verdict::Both);
    }
}
