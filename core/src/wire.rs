//! The parts of the payment service's HTTP contract that more than one crate
//! needs: header names, bounds, the `/stats` fields a judge reads and the
//! audit report. A reader that meets a document without a field it needs gets
//! an error, never a default: a judge must not turn a missing number into 0.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The IETF draft's header (`Idempotency-Key: "abc"` or a bare token).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The original workshop's header name.
pub const PAYMENT_IDEMPOTENCE_KEY: &str = "payment-idempotence-key";
/// `true` on an answer replayed from a stored one, `false` on a first answer.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// The header that names one attempt (a de-facto standard): the client sends
/// one per attempt, the service records what it did under it (`GET /events`).
pub const REQUEST_ID: &str = "x-request-id";
/// The longest key accepted, in bytes (Stripe's limit): room for a UUID plus
/// an item id, small enough that the index of keys stays small.
pub const KEY_BYTES_MAX: usize = 255;
/// Keys in one `POST /payments/lookup`: a page of keys per request keeps a
/// 1,000,000-payment reconciliation at about 1,000 requests.
pub const LOOKUP_KEYS_MAX: usize = 1000;
/// Rows in one page of `GET /payments` or `POST /payments/lookup`: bounds the
/// answer (about 200 KB) and the time a reader connection is held.
pub const PAGE_ROWS_MAX: usize = 1000;

/// The fields of `GET /stats` a judge reads, each required. The service sends
/// more (key counts, request counters); a judge needs only these, so a
/// service that adds or renames the others is still judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerStats {
    pub payments: u64,
    pub last_payment_id: i64,
    /// May exceed what an `i64` of minor units holds.
    pub total_amount_minor: i128,
    pub duplicate_keys: u64,
    /// What the database proves, by name (`one_payment_per_key`,
    /// `balances_conserved`, ...): a judge checks every one it is given.
    pub invariants: BTreeMap<String, bool>,
}

/// The invariants the service proves, as it renders them (`/stats` maintains
/// them, `/audit` recomputes them). A judge reads them by name instead
/// ([`LedgerStats::invariants`]), so it checks whatever a service proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invariants {
    /// No idempotency key has more than one payment.
    pub one_payment_per_key: bool,
    /// Money only moves between accounts: all balances sum to zero.
    pub balances_conserved: bool,
    /// Every balance equals its credits minus debits in the payments table.
    pub balances_match_ledger: bool,
}

/// A ledger's figures, as `GET /audit` reports them twice: recomputed from the
/// payments, and as the service maintains them (what `GET /stats` shows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerFigures {
    pub payments: i64,
    pub last_payment_id: i64,
    /// May exceed `i64::MAX`: a plain JSON integer.
    pub total_amount_minor: i128,
    pub keyed_payments: i64,
    /// Keys with at least one payment, and keys with more than one.
    pub distinct_keys: i64,
    pub duplicate_keys: i64,
    pub accounts: i64,
    /// The sum of all balances: 0 when money only moved between accounts.
    pub balance_sum_minor: i128,
    pub stored_responses: i64,
    pub keys_in_flight: i64,
}

/// What an audit concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditVerdict {
    /// Every maintained figure equals its recomputation and every balance
    /// equals the account's credits minus debits.
    Agree,
    /// At least one figure or balance differs (`findings` says which).
    Disagree,
    /// The audit could not see everything (`findings` says why): no verdict.
    Inconclusive,
}

/// `GET /audit` and `payment-service audit --db FILE`: the ledger recomputed
/// from its payments in one bounded-memory pass, next to the maintained figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    pub verdict: AuditVerdict,
    /// Each difference, or why there is no verdict; empty when they agree.
    pub findings: Vec<String>,
    pub recomputed: LedgerFigures,
    /// None for a database written by a version that did not maintain figures.
    pub maintained: Option<LedgerFigures>,
    /// Accounts whose balance is not their credits minus debits; None when
    /// the balances could not be checked.
    pub accounts_off_ledger: Option<i64>,
    /// The invariants, recomputed: not what `/stats` maintains.
    pub invariants: Invariants,
    /// Payments read, the highest id when the audit started, and how many
    /// rows arrived while it ran (read in its final snapshot).
    pub payments_read: i64,
    pub last_id_at_start: i64,
    pub rows_after_start: i64,
    pub elapsed_ms: u64,
}

/// Items in one `POST /payments/batch`: one transaction holds them all, so
/// a batch stays a request, not a bulk import.
pub const BATCH_ITEMS_MAX: usize = 100;

/// A batch item's effective key: the request's key, `:`, the item's id
/// (the way the documents this project started from derive per-item keys).
pub fn item_key(batch_key: &str, item_id: &str) -> String {
    format!("{batch_key}:{item_id}")
}

/// The second hop: where the payment service delivers its events.
pub const RECEIPTS_PATH: &str = "/receipts";

/// The longest event id accepted, in bytes: a ledger id and a payment id
/// (`<ledger>:<payment id>`) with room to spare; bounds the inbox's index.
pub const EVENT_ID_BYTES_MAX: usize = 128;

/// The event id of payment `payment_id` of ledger `ledger_id`:
/// `<ledger id>:<payment id>` (see [`PaymentEvent::event_id`]).
pub fn event_id(ledger_id: &str, payment_id: i64) -> String {
    format!("{ledger_id}:{payment_id}")
}

/// One executed payment, as the payment service's outbox delivers it (at
/// least once) to the receipts service, which must issue exactly one receipt
/// per `event_id`. An event exists if and only if its payment does: both
/// commit in one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentEvent {
    /// Unique across ledgers, `<ledger id>:<payment id>`: payment ids start
    /// again at 1 in a fresh ledger (`DELETE /payments`), event ids do not.
    /// The receipts inbox's unique key.
    pub event_id: String,
    pub payment_id: i64,
    /// The idempotency key the payment was made under, propagated (for a
    /// batch item, `KEY:ITEM_ID`); `None` for a payment sent without one.
    pub key: Option<String>,
    pub src: String,
    pub dest: String,
    /// Integer minor units, at most `money::AMOUNT_MINOR_MAX`.
    pub amount_minor: i64,
    /// When the payment committed, in ms since the Unix epoch.
    pub paid_at_ms: i64,
}

/// Now, in µs since the Unix epoch (0 if the clock is before it): the one
/// clock the client's history, the service's events and the proxy's fault
/// log share, so one attempt's story lines up across the three.
pub fn unix_us_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_field_is_an_error_not_zero() {
        let partial = r#"{"payments": 3, "last_payment_id": 3}"#;
        assert!(serde_json::from_str::<LedgerStats>(partial).is_err());
    }

    #[test]
    fn a_payment_event_round_trips_and_refuses_unknown_fields() {
        let event = PaymentEvent {
            event_id: "9f2c:7".into(),
            payment_id: 7,
            key: Some("order-1:item-2".into()),
            src: "alice".into(),
            dest: "bob".into(),
            amount_minor: 1250,
            paid_at_ms: 1_700_000_000_000,
        };
        let text = serde_json::to_string(&event).expect("serialises");
        assert_eq!(serde_json::from_str::<PaymentEvent>(&text).expect("parses"), event);
        let extra = text.replacen('{', r#"{"surprise":1,"#, 1);
        assert!(serde_json::from_str::<PaymentEvent>(&extra).is_err());
    }

    #[test]
    fn totals_past_i64_round_trip() {
        let doc = serde_json::json!({
            "payments": 1, "last_payment_id": 1, "total_amount": "100000000000000000.00",
            "total_amount_minor": 10_000_000_000_000_000_000u128, "keyed_payments": 1,
            "keyless_payments": 0, "distinct_keys": 1, "duplicate_keys": 0, "dedup": "unique",
            "received": 9,
            "invariants": {"one_payment_per_key": true, "balances_conserved": true, "balances_match_ledger": true}
        });
        let stats: LedgerStats = serde_json::from_value(doc).expect("valid stats");
        assert_eq!(stats.total_amount_minor, 10_000_000_000_000_000_000);
    }

    #[test]
    fn audit_reports_round_trip_with_totals_past_i64() {
        let figures = LedgerFigures {
            total_amount_minor: 10_000_000_000_000_000_000,
            ..LedgerFigures::default()
        };
        let report = AuditReport {
            verdict: AuditVerdict::Disagree,
            findings: vec!["payments: maintained 1, recomputed 0".into()],
            recomputed: figures,
            maintained: Some(LedgerFigures { payments: 1, ..figures }),
            accounts_off_ledger: Some(0),
            invariants: Invariants {
                one_payment_per_key: true,
                balances_conserved: true,
                balances_match_ledger: true,
            },
            payments_read: 0,
            last_id_at_start: 0,
            rows_after_start: 0,
            elapsed_ms: 1,
        };
        let text = serde_json::to_string(&report).expect("serialises");
        assert!(text.contains(r#""verdict":"disagree""#), "{text}");
        assert_eq!(serde_json::from_str::<AuditReport>(&text).expect("parses"), report);
    }
}
