//! Did each payment happen exactly once? The client's own record (intents and
//! what each was told) against the service's ledger, checked the Jepsen way:
//!
//! - a payment with an `ok` attempt must appear exactly once;
//! - with only `unknown` attempts it may appear once or not at all;
//! - with only `fail` attempts it must not appear ("failed but landed": the
//!   caller was told it did not happen, so it will pay again);
//! - no payment may carry one of this run's keys without a matching intent.
//!
//! A payment found under an intent's key counts as that intent's only if it
//! is the same payment (src, dest, amount). The business verdict then asks:
//! was every payment made once, and no money moved that should not have?
//! A verdict is given only from a complete reading of the service; otherwise
//! the answer is [`Inconclusive`].
//!
//! Memory: a few bytes per intent (a count of its payments, what it was
//! told), one bit per id of the window, and at most [`ISSUES_LISTED_MAX`]
//! payments kept by key; every page is sorted as it arrives, in the task that
//! read it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::history::AttemptRecord;
use crate::intents::Intents;
use crate::money::format_minor;
use crate::runner::{Outcomes, PaymentOutcome};
use crate::service::{Inconclusive, LOOKUP_KEYS_MAX, PAGE_ROWS_MAX, PAGES_MAX, ServicePayment, ServiceReader};
use crate::strategy::KeyStrategy;

/// Keys per lookup: one fewer than a page, so a chunk whose keys have one
/// payment each fits in one page that is not full (a full page costs one
/// more request to learn that nothing follows).
const LOOKUP_CHUNK_KEYS: usize = if LOOKUP_KEYS_MAX < PAGE_ROWS_MAX {
    LOOKUP_KEYS_MAX
} else {
    PAGE_ROWS_MAX - 1
};
/// Reads of the service in flight at once: twice the service's four reader
/// connections, so the next request waits there while an answer is parsed
/// here (1,000 lookups of 999 keys on a loaded 2-core VM: 3.6 s with 2 in
/// flight, 2.3-2.8 s with 4, 2.3-2.6 s with 8, no better with 16).
const READS_IN_FLIGHT: usize = 8;
/// Problems listed by key in the report; the counts cover all of them.
pub const ISSUES_LISTED_MAX: usize = 20;

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

/// Which run is being judged: it decides what the history can say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// One run from the start: every attempt of every intent is in the
    /// history, and the run's payments have ids above `baseline_id`.
    Fresh { baseline_id: i64 },
    /// Finishing a ledger: the history holds only this run's attempts. What
    /// earlier runs were told is known only from the ledger: `confirmed_before`
    /// (intent indexes) got a 2xx; any other intent may have been sent and
    /// landed. `baseline_id` is the ledger's (before its first run).
    Resume {
        baseline_id: i64,
        confirmed_before: HashSet<usize>,
    },
}

impl Mode {
    pub fn baseline_id(&self) -> i64 {
        match self {
            Mode::Fresh { baseline_id } | Mode::Resume { baseline_id, .. } => *baseline_id,
        }
    }
}

/// What the client was told about its payments.
#[derive(Debug, Clone, Copy)]
pub enum Attempts<'a> {
    /// Every attempt, with the key it sent (small runs, the scenario runner;
    /// several runs' records together, by intent index).
    Records(&'a [AttemptRecord]),
    /// One outcome per payment sent (`client pay`, `client resume`): keys are
    /// the intents' own, or `KEY-aN` for attempt N with `per-attempt`.
    Outcomes(&'a Outcomes),
}

impl<'a> From<&'a [AttemptRecord]> for Attempts<'a> {
    fn from(records: &'a [AttemptRecord]) -> Attempts<'a> {
        Attempts::Records(records)
    }
}

impl<'a, const N: usize> From<&'a [AttemptRecord; N]> for Attempts<'a> {
    fn from(records: &'a [AttemptRecord; N]) -> Attempts<'a> {
        Attempts::Records(records)
    }
}

impl<'a> From<&'a Vec<AttemptRecord>> for Attempts<'a> {
    fn from(records: &'a Vec<AttemptRecord>) -> Attempts<'a> {
        Attempts::Records(records)
    }
}

impl<'a> From<&'a Outcomes> for Attempts<'a> {
    fn from(outcomes: &'a Outcomes) -> Attempts<'a> {
        Attempts::Outcomes(outcomes)
    }
}

/// What the client knows: what it meant to pay and what it was told.
pub struct Evidence<'a> {
    pub intents: &'a Intents,
    pub attempts: Attempts<'a>,
    pub strategy: KeyStrategy,
    pub mode: &'a Mode,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyIssue {
    /// The intent's index; absent for a payment no intent explains.
    pub intent: Option<usize>,
    pub key: String,
    pub payments: u64,
    pub problem: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reconciliation {
    pub intents: u64,
    pub expected: String,
    pub expected_minor: i128,
    pub moved: String,
    pub moved_minor: i128,
    /// Payments the service holds for this run.
    pub payments: u64,
    /// Payments made exactly once.
    pub exactly_once: u64,
    /// Payments that never happened.
    pub lost: u64,
    /// Payments that happened more than once, and the extra payments they made.
    pub duplicated: u64,
    pub extra_payments: u64,
    /// Payments made during the run under this run's keys that no intent
    /// explains (an unknown key, or a key used for a different payment).
    pub orphaned: u64,
    /// Payments made before this run under its keys for a different payment
    /// (the same seed reused with other amounts): not this run's money.
    pub reused_before: u64,
    /// Jepsen violations: an acknowledged payment the service does not have,
    /// and a payment whose attempts all failed definitively but which exists.
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

/// Reads what the service holds for this run and judges it. First the
/// newest id (the window is the ids after the baseline up to it), then every
/// key of the run in chunks of [`LOOKUP_CHUNK_KEYS`] (this run's payments,
/// even those made before the baseline by an earlier run with the same seed),
/// then only the parts of the window the lookups did not account for id by
/// id (payments no intent explains; none at all after a run alone on the
/// service), then any payment made since. Reads run [`READS_IN_FLIGHT`] at a
/// time. Each payment is counted once: lookups count ids up to the window's
/// end, the window only what carries none of the run's keys, the rest after
/// it. Any read that fails within the reader's deadline makes the whole
/// answer inconclusive.
pub async fn reconcile(reader: &Arc<ServiceReader>, evidence: &Evidence<'_>) -> Result<Reconciliation, Inconclusive> {
    let started = std::time::Instant::now();
    let baseline = evidence.mode.baseline_id();
    let guess = baseline.saturating_add(evidence.intents.len() as i64);
    let end = reader.last_id(baseline, guess).await?.max(baseline);
    let span = u64::try_from(end.saturating_sub(baseline)).unwrap_or(0);
    if span.div_ceil(PAGE_ROWS_MAX as u64) > PAGES_MAX as u64 {
        return Err(Inconclusive {
            reason: format!("{span} payment ids after the baseline {baseline}: more than the judge reads"),
        });
    }
    let ctx = Arc::new(Context::new(evidence, end));
    let mut tally = Tally::new(evidence.intents.len(), baseline, span);
    let probed = (reader.requests(), started.elapsed());
    if ctx.strategy != KeyStrategy::None {
        read_all(reader, &ctx, key_reads(&ctx), &mut tally).await?;
    }
    let looked_up = (reader.requests(), started.elapsed());
    let window = tally
        .unaccounted(end)
        .into_iter()
        .map(|(after, last)| Read::Ids { after, last });
    read_all(reader, &ctx, window, &mut tally).await?;
    let windowed = (reader.requests(), started.elapsed());
    read_tail(reader, &ctx, &mut tally).await?;
    tracing::debug!(?probed, ?looked_up, ?windowed, total = ?started.elapsed(), "reconciliation reads (requests, time)");
    Ok(match ctx.strategy {
        KeyStrategy::None => totals_only(evidence.intents, &tally),
        _ => judge(&ctx, &tally),
    })
}

/// Every payment after the window, page by page: made since the reading
/// began (a late retry landing, another client), whatever its key.
async fn read_tail(reader: &ServiceReader, ctx: &Context, tally: &mut Tally) -> Result<(), Inconclusive> {
    let mut after = ctx.end_id;
    for _ in 0..PAGES_MAX {
        let mut seen = Vec::new();
        let next = reader
            .page_after(after, |p| seen.extend(ctx.sort(p, Source::Tail)))
            .await?;
        seen.into_iter().try_for_each(|s| tally.add(s, false))?;
        match next {
            Some(next) => after = next,
            None => return Ok(()),
        }
    }
    Err(Inconclusive {
        reason: format!(
            "the service holds more than {} payments after id {}",
            PAGES_MAX * PAGE_ROWS_MAX,
            ctx.end_id
        ),
    })
}

/// Judges `payments`, read by this run's keys alone ([`keys_sent`]), for a
/// service that can be read by key but not by id (one this project did not
/// start): the same per-key check as [`reconcile`], blind only to payments
/// made under keys the client never sent. Give `evidence.mode` baseline 0:
/// every payment found counts as this run's.
pub fn judge_by_keys(evidence: &Evidence<'_>, payments: &[ServicePayment<'_>]) -> Result<Reconciliation, Inconclusive> {
    let ctx = Context::new(evidence, evidence.mode.baseline_id());
    let mut tally = Tally::new(evidence.intents.len(), ctx.baseline_id, 0);
    for p in payments {
        if let Some(sighting) = ctx.sort(p, Source::Lookup) {
            tally.add(sighting, true)?;
        }
    }
    Ok(judge(&ctx, &tally))
}

/// Every key this run sent, or would send: what a read by key asks for.
pub fn keys_sent(evidence: &Evidence<'_>) -> Vec<String> {
    let ctx = Context::new(evidence, evidence.mode.baseline_id());
    let mut keys: Vec<String> = (0..ctx.intents.len())
        .flat_map(|at| ctx.keys_of(at))
        .chain(ctx.sent_keys.keys().cloned())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The verdict from money alone, for a service that says only how much it
/// moved: `moved_minor` against what the intents meant to move. Equal sums
/// can hide a lost payment and a doubled one; a per-key reading cannot.
pub fn judge_totals(intents: &Intents, moved_minor: i128) -> Reconciliation {
    let mut r = empty(intents, false);
    r.moved_minor = moved_minor;
    r.moved = format_minor(moved_minor);
    r.verdict = verdict(moved_minor < r.expected_minor, moved_minor > r.expected_minor);
    r
}

/// One read of the service: one page.
enum Read {
    /// A page of the payments under `keys` with ids above `after`; `pages`
    /// of this lookup were read before it.
    Keys {
        keys: Arc<[String]>,
        after: i64,
        pages: usize,
    },
    /// The payments with ids in `(after, last]`.
    Ids { after: i64, last: i64 },
}

/// Every key of the run that a lookup must ask for, once each, in chunks.
fn key_reads(ctx: &Arc<Context>) -> impl Iterator<Item = Read> + use<> {
    let per_intent = Arc::clone(ctx);
    let sent: Vec<String> = ctx.sent_keys.keys().cloned().collect();
    let mut keys = (0..ctx.intents.len())
        .flat_map(move |at| per_intent.keys_of(at))
        .chain(sent);
    std::iter::from_fn(move || {
        let chunk: Vec<String> = keys.by_ref().take(LOOKUP_CHUNK_KEYS).collect();
        (!chunk.is_empty()).then(|| Read::Keys {
            keys: chunk.into(),
            after: 0,
            pages: 0,
        })
    })
}

/// What one read found, sorted.
struct Found {
    lookup: bool,
    sightings: Vec<Sighting>,
    /// The next page of the same lookup, if more may follow.
    more: Option<Read>,
}

/// Runs `reads`, a few at a time, handing what they find to `tally`; stops
/// at the first that cannot be read (the others are dropped).
async fn read_all(
    reader: &Arc<ServiceReader>,
    ctx: &Arc<Context>,
    reads: impl Iterator<Item = Read>,
    tally: &mut Tally,
) -> Result<(), Inconclusive> {
    let mut reads = reads.fuse();
    let mut more = Vec::new();
    let mut running = JoinSet::new();
    loop {
        while running.len() < READS_IN_FLIGHT {
            let Some(read) = more.pop().or_else(|| reads.next()) else {
                break;
            };
            running.spawn(perform(Arc::clone(reader), Arc::clone(ctx), read));
        }
        match running.join_next().await {
            None => return Ok(()),
            Some(Ok(found)) => {
                let found = found?;
                let lookup = found.lookup;
                found.sightings.into_iter().try_for_each(|s| tally.add(s, lookup))?;
                more.extend(found.more);
            }
            Some(Err(e)) => {
                return Err(Inconclusive {
                    reason: format!("a read of the service failed: {e}"),
                });
            }
        }
    }
}

/// One read, its payments sorted as they are parsed.
async fn perform(reader: Arc<ServiceReader>, ctx: Arc<Context>, read: Read) -> Result<Found, Inconclusive> {
    let mut sightings = Vec::new();
    match read {
        Read::Ids { after, last } => {
            reader
                .id_range(after, last, |p| sightings.extend(ctx.sort(p, Source::Window)))
                .await?;
            Ok(Found {
                lookup: false,
                sightings,
                more: None,
            })
        }
        Read::Keys { keys, after, pages } => {
            let end = ctx.end_id;
            let next = reader
                .lookup_page(&keys, after, |p| {
                    if p.id <= end {
                        sightings.extend(ctx.sort(p, Source::Lookup));
                    }
                })
                .await?;
            // Ids past the window's end are read after it, whatever their key.
            let more = match next {
                Some(next) if next < end && pages + 1 >= PAGES_MAX => {
                    return Err(Inconclusive {
                        reason: format!(
                            "more than {} payments under {} keys",
                            PAGES_MAX * PAGE_ROWS_MAX,
                            keys.len()
                        ),
                    });
                }
                Some(next) if next < end => Some(Read::Keys {
                    keys,
                    after: next,
                    pages: pages + 1,
                }),
                _ => None,
            };
            Ok(Found {
                lookup: true,
                sightings,
                more,
            })
        }
    }
}

/// Where a payment was read: it decides what it may be counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A lookup of this run's keys, ids up to the window's end.
    Lookup,
    /// The id window: payments under this run's keys were counted by their lookup.
    Window,
    /// After the window's end: made since the reading began.
    Tail,
}

/// What one payment the service holds means for this run.
#[derive(Debug)]
enum Sighting {
    /// The payment of the intent at this position.
    Intent { at: usize, id: i64 },
    /// Under one of this run's keys, seen in the id window: its lookup counts it.
    Owned { id: i64 },
    /// Money under this run's keys that no intent explains, or a key used before.
    Unexplained {
        id: i64,
        key: String,
        amount_minor: i64,
        problem: Unexplained,
    },
    /// Made during a run without keys.
    Keyless { amount_minor: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unexplained {
    /// Made during the run under one of its keys, for no intent.
    Orphaned,
    /// Made during the run under an intent's key, for a different payment.
    Reused,
    /// Made before the run under an intent's key, for a different payment.
    Before,
}

impl Unexplained {
    fn problem(self) -> &'static str {
        match self {
            Unexplained::Orphaned => "orphaned",
            Unexplained::Reused => "key reused for another payment",
            Unexplained::Before => "key used before this run for another payment",
        }
    }
}

/// What the reads need to sort a payment; shared by the reads in flight.
struct Context {
    intents: Intents,
    /// Per intent position: what it was told and how many attempts it made.
    told: Vec<PaymentOutcome>,
    /// Keys in the attempt records that the intents do not name as theirs
    /// (`per-attempt` keys, a restarted client's new keys), to the position
    /// of their intent. Empty with [`Attempts::Outcomes`].
    sent_keys: HashMap<String, usize>,
    /// `per-attempt` from outcomes: key `KEY-aN` is attempt N of KEY's intent.
    attempt_suffixes: bool,
    strategy: KeyStrategy,
    baseline_id: i64,
    /// The window's last id.
    end_id: i64,
    /// `pay-<seed>-`: a key with it that no intent owns is an orphan.
    prefix: String,
}

impl Context {
    fn new(evidence: &Evidence, end_id: i64) -> Context {
        let mut ctx = Context {
            intents: evidence.intents.clone(),
            told: told(evidence),
            sent_keys: HashMap::new(),
            attempt_suffixes: matches!(evidence.attempts, Attempts::Outcomes(_))
                && evidence.strategy == KeyStrategy::PerAttempt,
            strategy: evidence.strategy,
            baseline_id: evidence.mode.baseline_id(),
            end_id,
            prefix: evidence.intents.key_prefix(),
        };
        if let Attempts::Records(records) = evidence.attempts {
            for a in records {
                let (Some(key), Some(at)) = (&a.key, ctx.intents.position_of(a.intent)) else {
                    continue;
                };
                // The last record of a key decides, as with the intents' own keys.
                if ctx.strategy == KeyStrategy::PerPayment && ctx.intents.key(at) == key.as_str() {
                    ctx.sent_keys.remove(key);
                } else {
                    ctx.sent_keys.insert(key.clone(), at);
                }
            }
        }
        ctx
    }

    /// The intent whose own key this is (`per-payment` sends every intent's own key).
    fn own_key(&self, key: &str) -> Option<usize> {
        match self.strategy {
            KeyStrategy::PerPayment => self.intents.position_of_key(key),
            _ => None,
        }
    }

    /// The intent that sent (or would send) this key, if any; among intents
    /// sharing one key, the one whose payment `paid` is.
    fn owner(&self, key: &str, paid: Option<&ServicePayment<'_>>) -> Option<usize> {
        if let Some(&at) = self.sent_keys.get(key) {
            return Some(at);
        }
        let own = match (self.strategy, paid) {
            (KeyStrategy::PerPayment, Some(p)) => {
                self.intents.position_of_key_for(key, &p.src, &p.dest, p.amount_minor)
            }
            _ => self.own_key(key),
        };
        if let Some(at) = own {
            return Some(at);
        }
        if !self.attempt_suffixes {
            return None;
        }
        let (base, attempt) = split_attempt_key(key)?;
        let at = self.intents.position_of_key(base)?;
        (1..=self.told[at].attempts()).contains(&attempt).then_some(at)
    }

    /// The keys of the intent at `at` that the lookups ask for (each key is
    /// asked for once, by the intent that owns it).
    fn keys_of(&self, at: usize) -> Vec<String> {
        let key = self.intents.key(at);
        let candidates: Vec<String> = match self.strategy {
            KeyStrategy::PerPayment => vec![key.into_owned()],
            KeyStrategy::PerAttempt if self.attempt_suffixes => {
                (1..=self.told[at].attempts()).map(|n| format!("{key}-a{n}")).collect()
            }
            _ => Vec::new(),
        };
        candidates
            .into_iter()
            .filter(|k| self.owner(k, None) == Some(at))
            .collect()
    }

    fn sort(&self, p: &ServicePayment<'_>, source: Source) -> Option<Sighting> {
        let during_run = p.id > self.baseline_id;
        let Some(key) = p.idempotency_key.as_deref() else {
            let counted = self.strategy == KeyStrategy::None && during_run && source != Source::Lookup;
            return counted.then_some(Sighting::Keyless {
                amount_minor: p.amount_minor,
            });
        };
        if self.strategy == KeyStrategy::None {
            return None;
        }
        let unexplained = |problem| {
            Some(Sighting::Unexplained {
                id: p.id,
                key: key.to_owned(),
                amount_minor: p.amount_minor,
                problem,
            })
        };
        match self.owner(key, Some(p)) {
            Some(_) if source == Source::Window => Some(Sighting::Owned { id: p.id }),
            Some(at) if self.intents.is_payment(at, &p.src, &p.dest, p.amount_minor) => {
                Some(Sighting::Intent { at, id: p.id })
            }
            Some(_) if during_run => unexplained(Unexplained::Reused),
            Some(_) => unexplained(Unexplained::Before),
            None if during_run && !self.prefix.is_empty() && key.starts_with(&self.prefix) => {
                unexplained(Unexplained::Orphaned)
            }
            None => None,
        }
    }
}

/// `KEY-a3` → (`KEY`, 3), exactly as the runner writes it.
fn split_attempt_key(key: &str) -> Option<(&str, u32)> {
    let (base, n) = key.rsplit_once("-a")?;
    let canonical = !n.is_empty() && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit());
    Some((base, n.parse().ok().filter(|_| canonical)?))
}

/// What each intent was told over every attempt this judgement covers.
fn told(evidence: &Evidence) -> Vec<PaymentOutcome> {
    let intents = evidence.intents;
    let mut told = vec![PaymentOutcome::default(); intents.len()];
    if let Mode::Resume { confirmed_before, .. } = evidence.mode {
        // Earlier runs' attempts are not in the history: a confirmed one
        // was acknowledged; any other may have been sent and landed.
        for (at, t) in told.iter_mut().enumerate() {
            *t = t.with_earlier(confirmed_before.contains(&intents.index(at)));
        }
    }
    match evidence.attempts {
        Attempts::Records(records) => {
            for a in records {
                if let Some(at) = intents.position_of(a.intent) {
                    told[at] = told[at].with_attempt(a.attempt, a.outcome);
                }
            }
        }
        Attempts::Outcomes(outcomes) => {
            for (index, outcome) in outcomes.iter() {
                if let Some(at) = intents.position_of(index) {
                    told[at] = told[at].merge(outcome);
                }
            }
        }
    }
    told
}

/// What the reads found, counted.
struct Tally {
    baseline_id: i64,
    /// One bit per id of the window: set when a lookup returned that id.
    looked_up: Vec<u64>,
    /// Payments found per intent position.
    found: Vec<u32>,
    orphaned: u64,
    orphaned_minor: i128,
    reused_before: u64,
    /// The unexplained payments with the smallest ids, for the report.
    examples: BTreeMap<i64, (String, &'static str)>,
    keyless_payments: u64,
    keyless_minor: i128,
}

impl Tally {
    fn new(intents: usize, baseline_id: i64, span: u64) -> Tally {
        Tally {
            baseline_id,
            looked_up: vec![0; span.div_ceil(64) as usize],
            found: vec![0; intents],
            orphaned: 0,
            orphaned_minor: 0,
            reused_before: 0,
            examples: BTreeMap::new(),
            keyless_payments: 0,
            keyless_minor: 0,
        }
    }

    /// The window bit of `id`, if it is in the window.
    fn bit(&self, id: i64) -> Option<(usize, u64)> {
        let offset = u64::try_from(id.checked_sub(self.baseline_id)?.checked_sub(1)?).ok()?;
        let word = usize::try_from(offset / 64).ok()?;
        (word < self.looked_up.len()).then_some((word, 1 << (offset % 64)))
    }

    fn mark(&mut self, id: i64) {
        if let Some((word, bit)) = self.bit(id) {
            self.looked_up[word] |= bit;
        }
    }

    fn marked(&self, id: i64) -> bool {
        self.bit(id).is_some_and(|(word, bit)| self.looked_up[word] & bit != 0)
    }

    /// The id ranges `(after, last]` of the window (up to `end`) holding an
    /// id no lookup returned: only these need reading id by id.
    fn unaccounted(&self, end: i64) -> Vec<(i64, i64)> {
        let step = PAGE_ROWS_MAX as i64;
        let mut ranges = Vec::new();
        let mut after = self.baseline_id;
        while after < end {
            let last = after.saturating_add(step).min(end);
            if (after + 1..=last).any(|id| !self.marked(id)) {
                ranges.push((after, last));
            }
            after = last;
        }
        ranges
    }

    fn add(&mut self, s: Sighting, lookup: bool) -> Result<(), Inconclusive> {
        match s {
            Sighting::Intent { at, id } => {
                if lookup {
                    self.mark(id);
                }
                self.found[at] = self.found[at].checked_add(1).ok_or_else(|| Inconclusive {
                    reason: format!("more than {} payments under one key", u32::MAX),
                })?;
            }
            Sighting::Owned { id } if !self.marked(id) => {
                return Err(Inconclusive {
                    reason: format!(
                        "payment {id} carries one of this run's keys, but the lookup of that key did not return it: \
                         the service's answers disagree"
                    ),
                });
            }
            Sighting::Owned { .. } => {}
            Sighting::Unexplained {
                id,
                key,
                amount_minor,
                problem,
            } => {
                if lookup {
                    self.mark(id);
                }
                if problem == Unexplained::Before {
                    self.reused_before += 1;
                } else {
                    self.orphaned += 1;
                    self.orphaned_minor += i128::from(amount_minor);
                }
                self.examples.insert(id, (key, problem.problem()));
                if self.examples.len() > ISSUES_LISTED_MAX {
                    self.examples.pop_last();
                }
            }
            Sighting::Keyless { amount_minor } => {
                self.keyless_payments += 1;
                self.keyless_minor += i128::from(amount_minor);
            }
        }
        Ok(())
    }
}

/// The per-key check and the verdict.
fn judge(ctx: &Context, tally: &Tally) -> Reconciliation {
    let intents = &ctx.intents;
    let mut r = empty(intents, true);
    r.orphaned = tally.orphaned;
    r.payments = tally.orphaned;
    r.moved_minor = tally.orphaned_minor;
    r.reused_before = tally.reused_before;
    for (at, (&n, &told)) in tally.found.iter().zip(&ctx.told).enumerate() {
        let n = u64::from(n);
        r.payments += n;
        r.moved_minor += i128::from(n) * i128::from(intents.amount_minor(at));
        count_intent(&mut r, intents, at, told, n);
    }
    for (key, problem) in tally.examples.values() {
        issue(&mut r, None, || key.clone(), 1, problem);
    }
    r.moved = format_minor(r.moved_minor);
    let too_much = r.duplicated > 0 || r.orphaned > 0 || r.failed_but_landed > 0;
    r.verdict = verdict(r.lost > 0, too_much);
    r
}

fn count_intent(r: &mut Reconciliation, intents: &Intents, at: usize, told: PaymentOutcome, n: u64) {
    let index = Some(intents.index(at));
    let key = || intents.key(at).into_owned();
    if n > 0 && told.only_failed() {
        // Told "no" yet money moved: the caller will pay again.
        r.failed_but_landed += 1;
        if n == 1 {
            issue(r, index, key, n, "failed but landed");
        }
    }
    match n {
        0 => {
            r.lost += 1;
            if told.told_ok() {
                r.acknowledged_but_missing += 1;
                issue(r, index, key, 0, "acknowledged but missing");
            } else {
                if told.told_unknown() {
                    r.unknown_not_landed += 1;
                }
                issue(r, index, key, 0, "lost");
            }
        }
        1 => {
            r.exactly_once += 1;
            if !told.told_ok() && told.told_unknown() {
                r.unknown_landed += 1;
            }
        }
        _ => {
            r.duplicated += 1;
            r.extra_payments += n - 1;
            issue(r, index, key, n, "duplicated");
        }
    }
}

/// Lists a problem, while fewer than [`ISSUES_LISTED_MAX`] are (the key is
/// only made then).
fn issue(
    r: &mut Reconciliation,
    intent: Option<usize>,
    key: impl FnOnce() -> String,
    payments: u64,
    problem: &'static str,
) {
    if r.issues.len() < ISSUES_LISTED_MAX {
        r.issues.push(KeyIssue {
            intent,
            key: key(),
            payments,
            problem,
        });
    }
}

fn empty(intents: &Intents, per_key: bool) -> Reconciliation {
    let expected_minor = intents.total_minor();
    Reconciliation {
        intents: intents.len() as u64,
        expected: format_minor(expected_minor),
        expected_minor,
        moved: format_minor(0),
        moved_minor: 0,
        payments: 0,
        exactly_once: 0,
        lost: 0,
        duplicated: 0,
        extra_payments: 0,
        orphaned: 0,
        reused_before: 0,
        acknowledged_but_missing: 0,
        failed_but_landed: 0,
        unknown_landed: 0,
        unknown_not_landed: 0,
        per_key,
        issues: Vec::new(),
        verdict: Verdict::ExactlyOnce,
    }
}

/// Without keys the service cannot tell which payment a row belongs to: compare
/// counts and sums of the keyless payments made during the run.
fn totals_only(intents: &Intents, tally: &Tally) -> Reconciliation {
    let mut r = empty(intents, false);
    let (n, want) = (tally.keyless_payments, intents.len() as u64);
    r.payments = n;
    r.moved_minor = tally.keyless_minor;
    r.moved = format_minor(r.moved_minor);
    r.exactly_once = n.min(want);
    r.lost = want.saturating_sub(n);
    r.extra_payments = n.saturating_sub(want);
    r.verdict = verdict(n < want, n > want);
    r
}

fn verdict(too_little: bool, too_much: bool) -> Verdict {
    match (too_little, too_much) {
        (false, false) => Verdict::ExactlyOnce,
        (true, false) => Verdict::TooLittle,
        (false, true) => Verdict::TooMuch,
        (true, true) => Verdict::Both,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Outcome;
    use crate::runner::key_for;

    fn attempt(intent: usize, key: &str, outcome: Outcome) -> AttemptRecord {
        AttemptRecord {
            intent,
            key: Some(key.to_owned()),
            attempt: 1,
            start_us: 0,
            end_us: 1,
            outcome,
            status: None,
            error: None,
            replayed: None,
            at_unix_us: 0,
            request_id: None,
        }
    }

    fn payment(id: i64, key: &str, amount_minor: i64) -> ServicePayment<'static> {
        ServicePayment {
            id,
            src: "bianca".into(),
            dest: "marc".into(),
            amount_minor,
            idempotency_key: Some(key.to_owned().into()),
        }
    }

    /// Judges `found` (read after the window, so counted whatever their key)
    /// against two intents of 1.00.
    fn judged(mode: &Mode, attempts: &[AttemptRecord], found: Vec<ServicePayment>) -> Reconciliation {
        let intents = Intents::repeat(2, "bianca", "marc", 100, 3);
        let evidence = Evidence {
            intents: &intents,
            attempts: attempts.into(),
            strategy: KeyStrategy::PerPayment,
            mode,
        };
        let ctx = Context::new(&evidence, mode.baseline_id());
        let mut tally = Tally::new(intents.len(), mode.baseline_id(), 0);
        for p in found {
            tally
                .add(ctx.sort(&p, Source::Tail).expect("this run's"), false)
                .expect("counted");
        }
        judge(&ctx, &tally)
    }

    #[test]
    fn failed_but_landed_pays_too_much_and_is_listed() {
        let (k0, k1) = (key_for(3, 0), key_for(3, 1));
        let attempts = [attempt(0, &k0, Outcome::Fail), attempt(1, &k1, Outcome::Ok)];
        let fresh = Mode::Fresh { baseline_id: 10 };
        let r = judged(&fresh, &attempts, vec![payment(5, &k0, 100), payment(11, &k1, 100)]);
        assert_eq!((r.failed_but_landed, r.verdict), (1, Verdict::TooMuch), "{r:?}");
        assert_eq!(
            (r.issues[0].problem, r.issues[0].key.as_str()),
            ("failed but landed", k0.as_str())
        );
        // The same key for another amount is not this intent's payment: lost,
        // and (made before the run) not this run's money either.
        let r = judged(&fresh, &attempts, vec![payment(5, &k0, 200), payment(11, &k1, 100)]);
        assert_eq!((r.failed_but_landed, r.lost, r.reused_before), (0, 1, 1), "{r:?}");
        assert_eq!((r.verdict, r.moved_minor), (Verdict::TooLittle, 100));
        // ... made during the run, it is money no intent explains.
        let r = judged(&fresh, &attempts, vec![payment(12, &k0, 200), payment(11, &k1, 100)]);
        assert_eq!((r.orphaned, r.verdict), (1, Verdict::Both), "{r:?}");
    }

    #[test]
    fn resume_counts_earlier_confirmations_and_unknowns() {
        let (k0, k1) = (key_for(3, 0), key_for(3, 1));
        // Intent 0 confirmed by the crashed run; intent 1 was in flight, and
        // its only attempt now is refused: it may have landed before.
        let resume = Mode::Resume {
            baseline_id: 0,
            confirmed_before: HashSet::from([0]),
        };
        let attempts = [attempt(1, &k1, Outcome::Fail)];
        let r = judged(&resume, &attempts, vec![payment(1, &k0, 100), payment(2, &k1, 100)]);
        assert_eq!(
            (r.verdict, r.failed_but_landed, r.unknown_landed),
            (Verdict::ExactlyOnce, 0, 1),
            "{r:?}"
        );
        let r = judged(&resume, &attempts, vec![payment(2, &k1, 100)]);
        assert_eq!(
            (r.acknowledged_but_missing, r.verdict),
            (1, Verdict::TooLittle),
            "{r:?}"
        );
    }

    /// Two intents; payment 1 (intent 0's) is in the window and under a key.
    fn window_of_one() -> (Context, Tally, ServicePayment<'static>) {
        let intents = Intents::repeat(2, "bianca", "marc", 100, 3);
        let mode = Mode::Fresh { baseline_id: 0 };
        let evidence = Evidence {
            intents: &intents,
            attempts: Attempts::Records(&[]),
            strategy: KeyStrategy::PerPayment,
            mode: &mode,
        };
        (
            Context::new(&evidence, 1),
            Tally::new(2, 0, 1),
            payment(1, &key_for(3, 0), 100),
        )
    }

    #[test]
    fn a_payment_read_by_key_and_by_id_counts_once() {
        let (ctx, mut tally, p) = window_of_one();
        assert_eq!(tally.unaccounted(1), vec![(0, 1)]);
        tally
            .add(ctx.sort(&p, Source::Lookup).expect("ours"), true)
            .expect("counted");
        assert!(
            tally.unaccounted(1).is_empty(),
            "the lookup accounted for the whole window"
        );
        tally
            .add(ctx.sort(&p, Source::Window).expect("seen"), false)
            .expect("known");
        let r = judge(&ctx, &tally);
        assert_eq!(
            (r.exactly_once, r.lost, r.duplicated, r.payments),
            (1, 1, 0, 1),
            "{r:?}"
        );
    }

    #[test]
    fn a_window_payment_its_lookup_missed_is_inconclusive() {
        let (ctx, mut tally, p) = window_of_one();
        let why = tally
            .add(ctx.sort(&p, Source::Window).expect("seen"), false)
            .expect_err("the answers disagree");
        assert!(why.reason.contains("did not return it"), "{why}");
    }

    #[test]
    fn per_attempt_keys_belong_to_the_attempts_made() {
        let intents = Intents::repeat(2, "bianca", "marc", 100, 3);
        let sent = crate::runner::Outcomes::for_tests(&intents, &[(0, 2), (1, 1)]);
        let mode = Mode::Fresh { baseline_id: 0 };
        let evidence = Evidence {
            intents: &intents,
            attempts: (&sent).into(),
            strategy: KeyStrategy::PerAttempt,
            mode: &mode,
        };
        let ctx = Context::new(&evidence, 0);
        let k0 = key_for(3, 0);
        assert_eq!(ctx.keys_of(0), vec![format!("{k0}-a1"), format!("{k0}-a2")]);
        assert_eq!(ctx.owner(&format!("{k0}-a2"), None), Some(0));
        for never_sent in [format!("{k0}-a3"), format!("{k0}-a0"), format!("{k0}-a01"), k0] {
            assert_eq!(ctx.owner(&never_sent, None), None, "{never_sent}");
        }
        // A key of this run's generator that no attempt sent is an orphan.
        let orphan = ctx.sort(&payment(1, &format!("{}-a3", key_for(3, 0)), 100), Source::Tail);
        assert!(
            matches!(
                orphan,
                Some(Sighting::Unexplained {
                    problem: Unexplained::Orphaned,
                    ..
                })
            ),
            "{orphan:?}"
        );
    }

    #[test]
    fn examples_keep_the_smallest_ids() {
        let mut tally = Tally::new(0, 0, 0);
        for id in (1..=ISSUES_LISTED_MAX as i64 + 5).rev() {
            let s = Sighting::Unexplained {
                id,
                key: format!("k{id}"),
                amount_minor: 1,
                problem: Unexplained::Orphaned,
            };
            tally.add(s, false).expect("counted");
        }
        assert_eq!(tally.orphaned, ISSUES_LISTED_MAX as u64 + 5);
        assert_eq!(
            tally.examples.keys().copied().collect::<Vec<_>>(),
            (1..=ISSUES_LISTED_MAX as i64).collect::<Vec<_>>()
        );
    }

    #[test]
    fn by_keys_alone_and_by_totals() {
        let intents = Intents::repeat(2, "bianca", "marc", 100, 3);
        let (k0, k1) = (intents.key(0).into_owned(), intents.key(1).into_owned());
        let attempts = [attempt(0, &k0, Outcome::Ok), attempt(1, &k1, Outcome::Ok)];
        let mode = Mode::Fresh { baseline_id: 0 };
        let evidence = Evidence {
            intents: &intents,
            attempts: (&attempts).into(),
            strategy: KeyStrategy::PerPayment,
            mode: &mode,
        };
        assert_eq!(keys_sent(&evidence), vec![k0.clone(), k1.clone()]);
        let once = [payment(7, &k0, 100), payment(9, &k1, 100)];
        assert_eq!(
            judge_by_keys(&evidence, &once).expect("judged").verdict,
            Verdict::ExactlyOnce
        );
        let twice = [payment(7, &k0, 100), payment(8, &k0, 100), payment(9, &k1, 100)];
        let r = judge_by_keys(&evidence, &twice).expect("judged");
        assert_eq!((r.verdict, r.duplicated, r.extra_payments), (Verdict::TooMuch, 1, 1));
        // A key reused for another amount is money no intent explains.
        let reused = [payment(7, &k0, 100), payment(9, &k1, 100), payment(10, &k1, 200)];
        assert_eq!(judge_by_keys(&evidence, &reused).expect("judged").orphaned, 1);
        assert_eq!(judge_totals(&intents, 200).verdict, Verdict::ExactlyOnce);
        assert_eq!(judge_totals(&intents, 100).verdict, Verdict::TooLittle);
        let r = judge_totals(&intents, 300);
        assert_eq!(
            (r.verdict, r.per_key, r.moved.as_str()),
            (Verdict::TooMuch, false, "3.00")
        );
    }
}
