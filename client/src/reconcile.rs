//! Did each payment happen exactly once? The client's own record (intents and
//! attempt history) against the service's ledger, checked the Jepsen way:
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::classify::Outcome;
use crate::history::AttemptRecord;
use crate::money::format_minor;
use crate::runner::Intent;
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
/// Reads of the service in flight at once: the service answers reads from
/// four connections, so more would only queue there.
const READS_IN_FLIGHT: usize = 4;
/// Problems listed by key in the report; the counts cover all of them.
const ISSUES_LISTED_MAX: usize = 20;
/// Payments of this run the judge holds in memory at most (about 50 bytes
/// each): ten per intent of the largest run.
const PAYMENTS_HELD_MAX: usize = 10_000_000;

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
    fn baseline_id(&self) -> i64 {
        match self {
            Mode::Fresh { baseline_id } | Mode::Resume { baseline_id, .. } => *baseline_id,
        }
    }
}

/// What the client knows: what it meant to pay and what it was told.
pub struct Evidence<'a> {
    pub intents: &'a [Intent],
    pub attempts: &'a [AttemptRecord],
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

/// Reads what the service holds for this run and judges it: the payments by
/// id after the baseline (orphans, keyless totals), by key in chunks of
/// [`LOOKUP_CHUNK_KEYS`] (this run's payments, even those made before the
/// baseline by an earlier run with the same seed), then any made since the
/// reading began. Reads run [`READS_IN_FLIGHT`] at a time. Any read that
/// fails within the reader's deadline makes the whole answer inconclusive.
pub async fn reconcile(reader: &Arc<ServiceReader>, evidence: &Evidence<'_>) -> Result<Reconciliation, Inconclusive> {
    let mut collector = Collector::new(evidence);
    let baseline = evidence.mode.baseline_id();
    let end = reader.stats().await?.last_payment_id;
    let span = u64::try_from(end.saturating_sub(baseline)).unwrap_or(0);
    let ranges = span.div_ceil(PAGE_ROWS_MAX as u64);
    if ranges > PAGES_MAX as u64 {
        return Err(Inconclusive {
            reason: format!("{span} payment ids after the baseline {baseline}: more than the judge reads"),
        });
    }
    let range_start = |k: u64| baseline + (k * PAGE_ROWS_MAX as u64) as i64;
    let window = (0..ranges).map(|k| Read::Ids(range_start(k)));
    read_all(reader, window, &mut collector).await?;
    if evidence.strategy != KeyStrategy::None {
        let keys: Vec<&str> = collector.owner.keys().copied().collect();
        let lookups = keys
            .chunks(LOOKUP_CHUNK_KEYS)
            .map(|chunk| Read::Keys(chunk.iter().map(|k| (*k).to_owned()).collect()));
        read_all(reader, lookups, &mut collector).await?;
    }
    reader
        .payments_after(range_start(ranges), |p| collector.accept(p))
        .await?;
    Ok(match evidence.strategy {
        KeyStrategy::None => totals_only(evidence.intents, &collector),
        _ => judge(evidence, &collector),
    })
}

/// One read of the service.
enum Read {
    /// The payments with ids in `(after, after + PAGE_ROWS_MAX]`.
    Ids(i64),
    /// The payments under these keys.
    Keys(Vec<String>),
}

/// Runs `reads`, a few at a time, handing what they find to `collector`;
/// stops at the first that cannot be read (the others are dropped).
async fn read_all(
    reader: &Arc<ServiceReader>,
    reads: impl Iterator<Item = Read>,
    collector: &mut Collector<'_>,
) -> Result<(), Inconclusive> {
    let mut reads = reads.fuse();
    let mut running = JoinSet::new();
    loop {
        while running.len() < READS_IN_FLIGHT {
            let Some(read) = reads.next() else { break };
            let reader = Arc::clone(reader);
            running.spawn(async move {
                match read {
                    Read::Ids(after) => reader.id_range(after).await,
                    Read::Keys(keys) => reader.lookup(&keys).await,
                }
            });
        }
        match running.join_next().await {
            None => return Ok(()),
            Some(Ok(found)) => found?.into_iter().try_for_each(|p| collector.accept(p))?,
            Some(Err(e)) => {
                return Err(Inconclusive {
                    reason: format!("a read of the service failed: {e}"),
                });
            }
        }
    }
}

/// What one payment the service holds means for this run.
enum Found {
    /// The payment of the intent at this position.
    Intent { at: usize, amount_minor: i64 },
    /// Made during the run under one of its keys, but no intent explains it.
    Orphan {
        key: String,
        amount_minor: i64,
        reused: bool,
    },
    /// Made before the run under one of its keys, for a different payment.
    Before { key: String },
}

/// Sorts the payments read into what they mean, once each (by id).
struct Collector<'a> {
    intents: &'a [Intent],
    /// Each key this run sent (or would send), to its intent's position.
    owner: HashMap<&'a str, usize>,
    /// An intent's index to its position in `intents`.
    position: HashMap<usize, usize>,
    /// `pay-<seed>-`: a key with it that no intent owns is an orphan.
    prefix: String,
    baseline_id: i64,
    keyless: bool,
    /// By id: a payment read twice (window and lookup) counts once; in id
    /// order, so the issues listed are the same on every run.
    found: BTreeMap<i64, Found>,
    keyless_payments: u64,
    keyless_minor: i128,
}

impl<'a> Collector<'a> {
    fn new(evidence: &Evidence<'a>) -> Collector<'a> {
        let position: HashMap<usize, usize> = evidence
            .intents
            .iter()
            .enumerate()
            .map(|(at, i)| (i.index, at))
            .collect();
        let mut owner = HashMap::new();
        if evidence.strategy == KeyStrategy::PerPayment {
            owner.extend(evidence.intents.iter().enumerate().map(|(at, i)| (i.key.as_str(), at)));
        }
        for a in evidence.attempts {
            if let (Some(key), Some(&at)) = (&a.key, position.get(&a.intent)) {
                owner.insert(key.as_str(), at);
            }
        }
        Collector {
            intents: evidence.intents,
            owner,
            position,
            prefix: evidence.intents.first().map(|i| key_prefix(&i.key)).unwrap_or_default(),
            baseline_id: evidence.mode.baseline_id(),
            keyless: evidence.strategy == KeyStrategy::None,
            found: BTreeMap::new(),
            keyless_payments: 0,
            keyless_minor: 0,
        }
    }

    fn accept(&mut self, p: ServicePayment) -> Result<(), Inconclusive> {
        let during_run = p.id > self.baseline_id;
        let Some(key) = p.idempotency_key else {
            if self.keyless && during_run {
                self.keyless_payments += 1;
                self.keyless_minor += i128::from(p.amount_minor);
            }
            return Ok(());
        };
        if self.keyless || self.found.contains_key(&p.id) {
            return Ok(());
        }
        let found = match self.owner.get(key.as_str()) {
            Some(&at) if same_payment(&self.intents[at], &p.src, &p.dest, p.amount_minor) => Found::Intent {
                at,
                amount_minor: p.amount_minor,
            },
            Some(_) if during_run => Found::Orphan {
                key,
                amount_minor: p.amount_minor,
                reused: true,
            },
            Some(_) => Found::Before { key },
            None if during_run && !self.prefix.is_empty() && key.starts_with(&self.prefix) => Found::Orphan {
                key,
                amount_minor: p.amount_minor,
                reused: false,
            },
            None => return Ok(()),
        };
        if self.found.len() >= PAYMENTS_HELD_MAX {
            return Err(Inconclusive {
                reason: format!("more than {PAYMENTS_HELD_MAX} payments carry this run's keys"),
            });
        }
        self.found.insert(p.id, found);
        Ok(())
    }
}

fn same_payment(intent: &Intent, src: &str, dest: &str, amount_minor: i64) -> bool {
    intent.src == src && intent.dest == dest && intent.amount_minor == amount_minor
}

/// What the caller was told about one intent, over all its attempts.
#[derive(Debug, Clone, Copy, Default)]
struct Told {
    ok: bool,
    unknown: bool,
    failed: bool,
}

impl Told {
    /// Every attempt failed definitively: the caller was told "it did not happen".
    fn only_failed(self) -> bool {
        self.failed && !self.ok && !self.unknown
    }
}

fn told(evidence: &Evidence, position: &HashMap<usize, usize>) -> Vec<Told> {
    let mut told = vec![Told::default(); evidence.intents.len()];
    if let Mode::Resume { confirmed_before, .. } = evidence.mode {
        for (t, intent) in told.iter_mut().zip(evidence.intents) {
            // Earlier runs' attempts are not in the history: a confirmed one
            // was acknowledged; any other may have been sent and landed.
            if confirmed_before.contains(&intent.index) {
                t.ok = true;
            } else {
                t.unknown = true;
            }
        }
    }
    for a in evidence.attempts {
        if let Some(&at) = position.get(&a.intent) {
            let t = &mut told[at];
            match a.outcome {
                Outcome::Ok => t.ok = true,
                Outcome::Unknown => t.unknown = true,
                Outcome::Fail => t.failed = true,
            }
        }
    }
    told
}

/// The per-key check and the verdict.
fn judge(evidence: &Evidence, collected: &Collector) -> Reconciliation {
    let intents = evidence.intents;
    let mut payments = vec![(0u64, 0i128); intents.len()];
    let mut r = empty(intents, true);
    let mut unexplained = Vec::new();
    for found in collected.found.values() {
        match found {
            Found::Intent { at, amount_minor } => {
                payments[*at].0 += 1;
                payments[*at].1 += i128::from(*amount_minor);
            }
            Found::Orphan {
                key,
                amount_minor,
                reused,
            } => {
                r.orphaned += 1;
                r.payments += 1;
                r.moved_minor += i128::from(*amount_minor);
                unexplained.push((
                    key,
                    if *reused {
                        "key reused for another payment"
                    } else {
                        "orphaned"
                    },
                ));
            }
            Found::Before { key } => {
                r.reused_before += 1;
                unexplained.push((key, "key used before this run for another payment"));
            }
        }
    }
    for ((intent, told), (n, moved)) in intents.iter().zip(told(evidence, &collected.position)).zip(payments) {
        r.payments += n;
        r.moved_minor += moved;
        count_intent(&mut r, intent, told, n);
    }
    for (key, problem) in unexplained {
        issue(&mut r, None, key, 1, problem);
    }
    r.moved = format_minor(r.moved_minor);
    let too_much = r.duplicated > 0 || r.orphaned > 0 || r.failed_but_landed > 0;
    r.verdict = verdict(r.lost > 0, too_much);
    r
}

fn count_intent(r: &mut Reconciliation, intent: &Intent, told: Told, n: u64) {
    if n > 0 && told.only_failed() {
        // Told "no" yet money moved: the caller will pay again.
        r.failed_but_landed += 1;
        if n == 1 {
            issue(r, Some(intent.index), &intent.key, n, "failed but landed");
        }
    }
    match n {
        0 => {
            r.lost += 1;
            if told.ok {
                r.acknowledged_but_missing += 1;
                issue(r, Some(intent.index), &intent.key, 0, "acknowledged but missing");
            } else {
                if told.unknown {
                    r.unknown_not_landed += 1;
                }
                issue(r, Some(intent.index), &intent.key, 0, "lost");
            }
        }
        1 => {
            r.exactly_once += 1;
            if !told.ok && told.unknown {
                r.unknown_landed += 1;
            }
        }
        _ => {
            r.duplicated += 1;
            r.extra_payments += n - 1;
            issue(r, Some(intent.index), &intent.key, n, "duplicated");
        }
    }
}

fn issue(r: &mut Reconciliation, intent: Option<usize>, key: &str, payments: u64, problem: &'static str) {
    if r.issues.len() < ISSUES_LISTED_MAX {
        r.issues.push(KeyIssue {
            intent,
            key: key.to_owned(),
            payments,
            problem,
        });
    }
}

fn empty(intents: &[Intent], per_key: bool) -> Reconciliation {
    let expected_minor: i128 = intents.iter().map(|i| i128::from(i.amount_minor)).sum();
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
fn totals_only(intents: &[Intent], collected: &Collector) -> Reconciliation {
    let mut r = empty(intents, false);
    let (n, want) = (collected.keyless_payments, intents.len() as u64);
    r.payments = n;
    r.moved_minor = collected.keyless_minor;
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

/// `pay-0123456789abcdef-0000042` → `pay-0123456789abcdef-`.
fn key_prefix(key: &str) -> String {
    key.rfind('-').map(|at| key[..=at].to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Outcome;

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

    fn payment(id: i64, key: &str, amount_minor: i64) -> ServicePayment {
        ServicePayment {
            id,
            src: "bianca".into(),
            dest: "marc".into(),
            amount_minor,
            idempotency_key: Some(key.to_owned()),
        }
    }

    /// Judges `found` (already read) against two intents of 1.00.
    fn judged(mode: &Mode, attempts: &[AttemptRecord], found: Vec<ServicePayment>) -> Reconciliation {
        let intents = crate::runner::repeat(2, "bianca", "marc", 100, 3);
        let evidence = Evidence {
            intents: &intents,
            attempts,
            strategy: KeyStrategy::PerPayment,
            mode,
        };
        let mut c = Collector::new(&evidence);
        for p in found {
            c.accept(p).expect("held");
        }
        judge(&evidence, &c)
    }

    #[test]
    fn failed_but_landed_pays_too_much_and_is_listed() {
        let (k0, k1) = (crate::runner::key_for(3, 0), crate::runner::key_for(3, 1));
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
        let (k0, k1) = (crate::runner::key_for(3, 0), crate::runner::key_for(3, 1));
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

    #[test]
    fn a_payment_read_twice_counts_once() {
        let k0 = crate::runner::key_for(3, 0);
        let attempts = [attempt(0, &k0, Outcome::Ok)];
        let r = judged(
            &Mode::Fresh { baseline_id: 0 },
            &attempts,
            vec![payment(1, &k0, 100), payment(1, &k0, 100)],
        );
        assert_eq!((r.exactly_once, r.lost, r.duplicated), (1, 1, 0), "{r:?}");
    }

    #[test]
    fn prefix_and_wide_money() {
        assert_eq!(key_prefix("pay-00ff-0000042"), "pay-00ff-");
        assert_eq!(verdict(true, true), Verdict::Both);
    }
}
