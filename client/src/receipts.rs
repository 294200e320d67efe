//! The second hop's judge: did every executed payment get exactly one
//! receipt from the receipts service?
//!
//! [`ReceiptsReader`] reads the receipts service (`receipts` crate) by
//! lookup: `POST /receipts/lookup` with up to [`LOOKUP_KEYS_MAX`] event ids
//! a request, each answered with its number of receipts. Every request is
//! retried with bounded backoff until the reader's deadline, and every
//! answer is checked against the contract (one answer per id asked, in the
//! order asked); what cannot be read completely and correctly is
//! [`Inconclusive`], never a guess.
//!
//! [`judge`] is pure: the executed payments of a run (event id and the
//! propagated key) and the receipt counts read for them give a
//! [`ReceiptVerdict`]: exact (one receipt each), missing (an executed
//! payment without a receipt: too little), duplicated (more than one: too
//! much), both, or inconclusive (a payment whose count was not read).
//! [`check`] reads and judges in one go, chunk by chunk.
//!
//! Receipts for events the run did not execute cannot be seen by a lookup
//! of the run's event ids; the receipts service's `/stats`
//! ([`ReceiptsReader::stats`]) has the totals.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::service::Inconclusive;
use crate::service::{Failure, ServiceReader, inconclusive, parse_json};
pub use eo_core::wire::LOOKUP_KEYS_MAX;

/// Payments named in a verdict per finding (lost, duplicated); the counts
/// are always complete.
pub const FINDINGS_LISTED_MAX: usize = 20;

/// One event id's receipts, as `POST /receipts/lookup` answers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EventReceipts {
    pub event_id: String,
    /// How many receipts the event has (exact).
    pub receipts: u64,
    /// The first of their ids, ascending (at most 16).
    pub receipt_ids: Vec<i64>,
}

#[derive(Deserialize)]
struct LookupAnswer {
    events: Vec<EventReceipts>,
}

/// The part of the receipts service's `/stats` a judge or a report reads;
/// every field required (missing is an unreadable answer, not a zero).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ReceiptsStats {
    pub receipts: u64,
    /// Distinct event ids receipted.
    pub events: u64,
    /// Receipts beyond the first of their event.
    pub duplicate_receipts: u64,
    /// Redeliveries answered from the inbox without a receipt.
    pub duplicates_absorbed: u64,
    pub total_amount_minor: i128,
    /// `inbox` or `off`.
    pub dedup: String,
    /// `one_receipt_per_event`, ...: a judge checks every one it is given.
    pub invariants: BTreeMap<String, bool>,
}

/// Reads the receipts service until a deadline, counting requests: the
/// payment service's reader (its retries, bounds and checks), pointed at
/// the receipts service.
pub struct ReceiptsReader {
    reads: ServiceReader,
}

impl ReceiptsReader {
    /// A reader for `receipts` (`http://host:port`) that gives up `budget` from now.
    pub fn new(receipts: &str, budget: Duration) -> anyhow::Result<ReceiptsReader> {
        Ok(ReceiptsReader {
            reads: ServiceReader::new(receipts, budget)?,
        })
    }

    /// HTTP requests sent so far, retries included.
    pub fn requests(&self) -> u64 {
        self.reads.requests()
    }

    /// `GET /stats` of the receipts service.
    pub async fn stats(&self) -> Result<ReceiptsStats, Inconclusive> {
        self.reads.get_json("/stats").await
    }

    /// The receipts of 1 to [`LOOKUP_KEYS_MAX`] event ids, one answer per id
    /// in the order asked.
    pub async fn lookup(&self, event_ids: &[String]) -> Result<Vec<EventReceipts>, Inconclusive> {
        if event_ids.is_empty() || event_ids.len() > LOOKUP_KEYS_MAX {
            return Err(inconclusive(format!(
                "a lookup holds 1 to {LOOKUP_KEYS_MAX} event ids, not {}",
                event_ids.len()
            )));
        }
        let body = serde_json::to_vec(&serde_json::json!({ "event_ids": event_ids }))
            .map_err(|e| inconclusive(format!("cannot write a lookup: {e}")))?;
        let what = format!("POST /receipts/lookup ({} event ids)", event_ids.len());
        let accept = |bytes: &[u8]| {
            let answer: LookupAnswer = parse_json(bytes)?;
            check_lookup(&answer.events, event_ids).map_err(Failure::Definitive)?;
            Ok(answer.events)
        };
        self.reads.post_json("/receipts/lookup", body, &what, accept).await
    }
}

/// A lookup answer must answer every id asked, in the order asked, with
/// receipt ids that agree with the count. Anything else could make the
/// judge count a receipt for the wrong payment.
fn check_lookup(events: &[EventReceipts], asked: &[String]) -> Result<(), String> {
    let broken = |why: String| Err(format!("the answer breaks the receipts service's contract: {why}"));
    if events.len() != asked.len() {
        return broken(format!("{} answers for {} event ids", events.len(), asked.len()));
    }
    for (answer, id) in events.iter().zip(asked) {
        if answer.event_id != *id {
            return broken(format!("{:?} answered where {id:?} was asked", answer.event_id));
        }
        let listed = answer.receipt_ids.len() as u64;
        if listed > answer.receipts || (answer.receipts > 0 && listed == 0) {
            return broken(format!("{id:?}: {} receipts but {listed} ids", answer.receipts));
        }
        if answer.receipt_ids.windows(2).any(|w| w[0] >= w[1]) {
            return broken(format!("{id:?}: receipt ids out of order"));
        }
    }
    Ok(())
}

/// What the judge concluded about the second hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiptOutcome {
    /// Every executed payment has exactly one receipt.
    Exact,
    /// Some executed payment has none (too little).
    Missing,
    /// Some executed payment has more than one (too much).
    Duplicated,
    /// Both at once.
    Both,
    /// The receipts could not be read completely: no verdict.
    Inconclusive,
}

/// Payments at fault: the first [`FINDINGS_LISTED_MAX`] by name (the
/// propagated key, or the event id for a payment without a key) with their
/// receipt counts, and how many there are in all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Findings {
    pub first: Vec<(String, u64)>,
    pub count: u64,
}

impl Findings {
    fn add(&mut self, label: &str, receipts: u64) {
        self.count += 1;
        if self.first.len() < FINDINGS_LISTED_MAX {
            self.first.push((label.to_owned(), receipts));
        }
    }
}

/// The second hop's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptVerdict {
    pub outcome: ReceiptOutcome,
    /// Executed payments judged.
    pub checked: u64,
    /// Of them, with exactly one receipt.
    pub exact: u64,
    /// With no receipt.
    pub lost: Findings,
    /// With more than one.
    pub duplicated: Findings,
    /// Receipts beyond the first, over every duplicated payment.
    pub extra_receipts: u64,
    /// Why there is no verdict, when there is none.
    pub inconclusive: Option<String>,
}

impl ReceiptVerdict {
    fn inconclusive(why: impl Into<String>, tally: Tally) -> ReceiptVerdict {
        ReceiptVerdict {
            outcome: ReceiptOutcome::Inconclusive,
            inconclusive: Some(why.into()),
            ..tally.verdict()
        }
    }

    /// True for `Exact` only.
    pub fn is_exact(&self) -> bool {
        self.outcome == ReceiptOutcome::Exact
    }
}

/// Counts payments into a verdict, one at a time (nothing kept per payment
/// but the first findings).
#[derive(Debug, Default)]
struct Tally {
    checked: u64,
    exact: u64,
    lost: Findings,
    duplicated: Findings,
    extra_receipts: u64,
}

impl Tally {
    fn add(&mut self, label: &str, receipts: u64) {
        self.checked += 1;
        match receipts {
            0 => self.lost.add(label, 0),
            1 => self.exact += 1,
            n => {
                self.duplicated.add(label, n);
                self.extra_receipts += n - 1;
            }
        }
    }

    /// Looks up `chunk` (1 to [`LOOKUP_KEYS_MAX`] payments: event id,
    /// propagated key) and counts each payment's receipts.
    async fn look_up(
        &mut self,
        reader: &ReceiptsReader,
        chunk: &[(String, Option<String>)],
    ) -> Result<(), Inconclusive> {
        let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
        let answers = reader.lookup(&ids).await?;
        for ((id, key), answer) in chunk.iter().zip(answers) {
            self.add(label(id, key.as_deref()), answer.receipts);
        }
        Ok(())
    }

    fn verdict(self) -> ReceiptVerdict {
        let outcome = match (self.lost.count > 0, self.duplicated.count > 0) {
            (false, false) => ReceiptOutcome::Exact,
            (true, false) => ReceiptOutcome::Missing,
            (false, true) => ReceiptOutcome::Duplicated,
            (true, true) => ReceiptOutcome::Both,
        };
        ReceiptVerdict {
            outcome,
            checked: self.checked,
            exact: self.exact,
            lost: self.lost,
            duplicated: self.duplicated,
            extra_receipts: self.extra_receipts,
            inconclusive: None,
        }
    }
}

/// The name a payment goes by in a verdict: its propagated key, else its event id.
fn label<'a>(event_id: &'a str, key: Option<&'a str>) -> &'a str {
    key.unwrap_or(event_id)
}

/// Judges the executed payments `(event id, propagated key)` against the
/// receipt counts read for them (by event id). A payment whose count is
/// missing, or an event id given twice, makes the verdict inconclusive.
pub fn judge<I, E, K>(payments: I, counts: &HashMap<String, u64>) -> ReceiptVerdict
where
    I: IntoIterator<Item = (E, Option<K>)>,
    E: AsRef<str>,
    K: AsRef<str>,
{
    let mut tally = Tally::default();
    let mut seen = HashSet::new();
    for (event_id, key) in payments {
        let event_id = event_id.as_ref();
        if !seen.insert(event_id.to_owned()) {
            return ReceiptVerdict::inconclusive(format!("event id {event_id:?} was given twice"), tally);
        }
        let Some(&receipts) = counts.get(event_id) else {
            return ReceiptVerdict::inconclusive(format!("no receipt count was read for event {event_id:?}"), tally);
        };
        tally.add(label(event_id, key.as_ref().map(AsRef::as_ref)), receipts);
    }
    tally.verdict()
}

/// Reads the receipt counts of `payments` `(event id, propagated key)` from
/// the receipts service in lookups of [`LOOKUP_KEYS_MAX`] and judges them.
/// A read that fails within the reader's deadline makes it inconclusive.
pub async fn check(reader: &ReceiptsReader, payments: &[(String, Option<String>)]) -> ReceiptVerdict {
    let mut tally = Tally::default();
    let mut seen = HashSet::with_capacity(payments.len());
    if let Some((id, _)) = payments.iter().find(|(id, _)| !seen.insert(id.as_str())) {
        return ReceiptVerdict::inconclusive(format!("event id {id:?} was given twice"), tally);
    }
    for chunk in payments.chunks(LOOKUP_KEYS_MAX) {
        if let Err(e) = tally.look_up(reader, chunk).await {
            return ReceiptVerdict::inconclusive(e.reason, tally);
        }
    }
    tally.verdict()
}

/// What the payment service says about its second hop (`GET /stats`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SecondHop {
    /// Event ids are `<ledger id>:<payment id>`.
    pub ledger_id: String,
    /// `none`, `after-commit` or `outbox`.
    pub notify: String,
    pub outbox: OutboxFigures,
}

/// The payment service's outbox, as `/stats` shows it; every field required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct OutboxFigures {
    pub pending: u64,
    pub delivered: u64,
    /// Refused for good by the receiver (a 4xx): never receipted.
    pub refused: u64,
    pub oldest_pending_age_ms: u64,
    pub delivery_attempts: u64,
    pub redelivered: u64,
}

/// The payment service's second hop as `/stats` shows it now.
pub async fn second_hop(service: &ServiceReader) -> Result<SecondHop, Inconclusive> {
    service.get_json("/stats").await
}

/// How often the outbox is read while waiting for it to drain.
const SETTLE_POLL_MS: u64 = 50;
/// Time kept back for the next read of the outbox: a read cut short by the
/// deadline would say only "no answer", where the last one said how many
/// events were still pending.
const SETTLE_READ_MS_RESERVE: u64 = 1_000;

/// Waits, within the service reader's deadline, until the payment service
/// has no event pending delivery, and returns its second hop's figures.
/// Events still pending at the deadline make the receipts verdict
/// inconclusive: a receipt still on its way is not a missing one.
pub async fn settle(service: &ServiceReader) -> Result<SecondHop, Inconclusive> {
    let poll = Duration::from_millis(SETTLE_POLL_MS);
    loop {
        let hop = second_hop(service).await?;
        if hop.outbox.pending == 0 {
            return Ok(hop);
        }
        if service.time_left() <= poll + Duration::from_millis(SETTLE_READ_MS_RESERVE) {
            return Err(inconclusive(format!(
                "{} events were still pending delivery at the reading deadline (the oldest waited {} ms)",
                hop.outbox.pending, hop.outbox.oldest_pending_age_ms
            )));
        }
        tokio::time::sleep(poll).await;
    }
}

/// The second hop over a window of the ledger: every payment with an id in
/// `(after, last]`, its event id `<ledger id>:<id>`, its receipts counted,
/// one page of the ledger and one lookup at a time (memory: one page). Every
/// payment counts, whoever made it: each executed payment must have exactly
/// one receipt.
pub async fn check_window(
    service: &ServiceReader,
    receipts: &ReceiptsReader,
    ledger_id: &str,
    (after, last): (i64, i64),
) -> ReceiptVerdict {
    let mut tally = Tally::default();
    let mut cursor = after;
    while cursor < last {
        let mut page: Vec<(String, Option<String>)> = Vec::new();
        let read = service.page_after(cursor, |p| {
            if p.id <= last {
                let key = p.idempotency_key.as_deref().map(str::to_owned);
                page.push((eo_core::wire::event_id(ledger_id, p.id), key));
            }
        });
        let next = match read.await {
            Ok(next) => next,
            Err(e) => return ReceiptVerdict::inconclusive(e.reason, tally),
        };
        if !page.is_empty()
            && let Err(e) = tally.look_up(receipts, &page).await
        {
            return ReceiptVerdict::inconclusive(e.reason, tally);
        }
        match next {
            Some(next) if next > cursor => cursor = next,
            _ => break,
        }
    }
    tally.verdict()
}

/// The second hop of a run whose payments have ids above `baseline_id`:
/// the newest payment id, then the outbox drained, then every payment up to
/// that id checked.
pub async fn check_run(service: &str, receipts: &str, baseline_id: i64, budget: Duration) -> ReceiptVerdict {
    let readers = ServiceReader::new(service, budget).and_then(|s| Ok((s, ReceiptsReader::new(receipts, budget)?)));
    let (service, receipts) = match readers {
        Ok(readers) => readers,
        Err(e) => return ReceiptVerdict::inconclusive(format!("{e:#}"), Tally::default()),
    };
    // The newest payment first: once nothing is pending afterwards, every
    // event of a payment up to it has been delivered (or refused).
    let last = match service.last_id(baseline_id, baseline_id).await {
        Ok(last) => last,
        Err(e) => return ReceiptVerdict::inconclusive(e.reason, Tally::default()),
    };
    let hop = match settle(&service).await {
        Ok(hop) if hop.notify == "none" => {
            let why =
                "the payment service notifies no receipts service (notify: none): start it with --receipts-url URL";
            return ReceiptVerdict::inconclusive(why, Tally::default());
        }
        Ok(hop) => hop,
        Err(e) => return ReceiptVerdict::inconclusive(e.reason, Tally::default()),
    };
    check_window(&service, &receipts, &hop.ledger_id, (baseline_id, last)).await
}

impl std::fmt::Display for ReceiptVerdict {
    /// One line: `RECEIPTS EXACT 120/120`, `RECEIPTS MISSING 3 of 120: k-1,
    /// k-2, k-3`, `RECEIPTS DUPLICATED 1 of 120 (2 extra): k-4 ×3`, ...
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let listed = |findings: &Findings, counts: bool| {
            let mut names: Vec<String> = findings
                .first
                .iter()
                .map(|(name, n)| if counts { format!("{name} ×{n}") } else { name.clone() })
                .collect();
            let more = findings.count - findings.first.len() as u64;
            if more > 0 {
                names.push(format!("… and {more} more"));
            }
            names.join(", ")
        };
        let (lost, dup, n) = (self.lost.count, self.duplicated.count, self.checked);
        let extra = self.extra_receipts;
        match self.outcome {
            ReceiptOutcome::Exact => write!(f, "RECEIPTS EXACT {}/{n}", self.exact),
            ReceiptOutcome::Missing => write!(f, "RECEIPTS MISSING {lost} of {n}: {}", listed(&self.lost, false)),
            ReceiptOutcome::Duplicated => write!(
                f,
                "RECEIPTS DUPLICATED {dup} of {n} ({extra} extra): {}",
                listed(&self.duplicated, true)
            ),
            ReceiptOutcome::Both => write!(
                f,
                "RECEIPTS MISSING {lost} AND DUPLICATED {dup} of {n} ({extra} extra): missing {}; duplicated {}",
                listed(&self.lost, false),
                listed(&self.duplicated, true)
            ),
            ReceiptOutcome::Inconclusive => write!(
                f,
                "RECEIPTS INCONCLUSIVE: {}",
                self.inconclusive.as_deref().unwrap_or("no reason given")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payments(n: u64) -> Vec<(String, Option<String>)> {
        (1..=n).map(|i| (format!("L:{i}"), Some(format!("k-{i}")))).collect()
    }

    fn counts(pairs: &[(u64, u64)], n: u64) -> HashMap<String, u64> {
        let mut counts: HashMap<String, u64> = (1..=n).map(|i| (format!("L:{i}"), 1)).collect();
        for (i, c) in pairs {
            counts.insert(format!("L:{i}"), *c);
        }
        counts
    }

    #[test]
    fn one_receipt_each_is_exact() {
        let verdict = judge(payments(120), &counts(&[], 120));
        assert_eq!(
            (verdict.outcome, verdict.checked, verdict.exact),
            (ReceiptOutcome::Exact, 120, 120)
        );
        assert_eq!(verdict.to_string(), "RECEIPTS EXACT 120/120");
        assert!(verdict.is_exact());
        let none: Vec<(String, Option<String>)> = Vec::new();
        assert_eq!(judge(none, &HashMap::new()).to_string(), "RECEIPTS EXACT 0/0");
    }

    #[test]
    fn missing_receipts_are_too_little_and_named_by_key_or_event_id() {
        let mut run = payments(120);
        run[2].1 = None;
        let verdict = judge(run, &counts(&[(1, 0), (2, 0), (3, 0)], 120));
        assert_eq!(verdict.outcome, ReceiptOutcome::Missing);
        assert_eq!((verdict.lost.count, verdict.exact), (3, 117));
        assert_eq!(verdict.to_string(), "RECEIPTS MISSING 3 of 120: k-1, k-2, L:3");
    }

    #[test]
    fn duplicates_are_too_much_with_the_extra_receipts() {
        let verdict = judge(payments(120), &counts(&[(4, 3), (9, 2)], 120));
        assert_eq!(verdict.outcome, ReceiptOutcome::Duplicated);
        assert_eq!((verdict.duplicated.count, verdict.extra_receipts), (2, 3));
        assert_eq!(
            verdict.to_string(),
            "RECEIPTS DUPLICATED 2 of 120 (3 extra): k-4 ×3, k-9 ×2"
        );
    }

    #[test]
    fn both_at_once_and_long_lists_are_cut_with_a_count() {
        let lost: Vec<(u64, u64)> = (1..=25).map(|i| (i, 0)).collect();
        let mut pairs = lost.clone();
        pairs.push((100, 2));
        let verdict = judge(payments(120), &counts(&pairs, 120));
        assert_eq!(verdict.outcome, ReceiptOutcome::Both);
        assert_eq!(
            (verdict.lost.count, verdict.lost.first.len()),
            (25, FINDINGS_LISTED_MAX)
        );
        let text = verdict.to_string();
        assert!(
            text.starts_with("RECEIPTS MISSING 25 AND DUPLICATED 1 of 120 (1 extra): missing k-1, "),
            "{text}"
        );
        assert!(text.contains("k-20, … and 5 more; duplicated k-100 ×2"), "{text}");
    }

    #[test]
    fn a_count_not_read_or_an_event_given_twice_is_inconclusive() {
        let mut partial = counts(&[], 10);
        partial.remove("L:7");
        let verdict = judge(payments(10), &partial);
        assert_eq!(verdict.outcome, ReceiptOutcome::Inconclusive);
        assert_eq!(
            verdict.to_string(),
            "RECEIPTS INCONCLUSIVE: no receipt count was read for event \"L:7\""
        );
        let mut twice = payments(3);
        twice.push(twice[0].clone());
        assert_eq!(judge(twice, &counts(&[], 3)).outcome, ReceiptOutcome::Inconclusive);
    }

    fn answer(id: &str, receipts: u64, ids: &[i64]) -> EventReceipts {
        EventReceipts {
            event_id: id.into(),
            receipts,
            receipt_ids: ids.to_vec(),
        }
    }

    #[test]
    fn lookup_answers_that_break_the_contract_are_refused() {
        let asked = vec!["a".to_owned(), "b".to_owned()];
        assert!(check_lookup(&[answer("a", 1, &[1]), answer("b", 0, &[])], &asked).is_ok());
        assert!(check_lookup(&[answer("a", 40, &[1, 2]), answer("b", 0, &[])], &asked).is_ok());
        for bad in [
            vec![answer("a", 1, &[1])],
            vec![answer("b", 0, &[]), answer("a", 1, &[1])],
            vec![answer("a", 1, &[]), answer("b", 0, &[])],
            vec![answer("a", 1, &[1, 2]), answer("b", 0, &[])],
            vec![answer("a", 2, &[2, 1]), answer("b", 0, &[])],
        ] {
            assert!(check_lookup(&bad, &asked).is_err(), "{bad:?}");
        }
    }
}
