//! `POST /payments/batch`: several payments under one `Idempotency-Key`, all
//! or nothing.
//!
//! Each item's effective key is `KEY:ITEM_ID` (the request's key, a colon,
//! the item's id): it is the item's payment's key in the ledger (so `GET
//! /payments?key=KEY:ITEM_ID` and lookups find it, and a single `POST
//! /payments` under it replays the item) and the key its event carries
//! downstream. Item ids are printable ASCII without `:` (so `KEY:ITEM_ID`
//! names one item of one batch) and unique in the batch.
//!
//! Under `--dedup unique` the batch is exact: one writer op inserts every
//! item's payment (each with its UNIQUE item key) and stores the whole answer
//! under the batch's key, in the batch's transaction; if an item is refused,
//! the op's savepoint is rolled back and nothing of the batch is stored. A
//! retry replays the stored answer byte for byte (after the retention,
//! rebuilt from the item payments); the same key with another batch is 422;
//! with a processing delay, a retry meanwhile is 409 (claim, then complete,
//! like a single payment). Under `--dedup off` every batch pays (keys stored,
//! never checked: the lesson's mistake). Other modes refuse batches (422
//! `batch-unsupported`): check-then-insert and the exercise decide per key
//! and have no all-or-nothing for several.

use std::borrow::Cow;
use std::sync::Arc;

use crate::db::{Connection, Savepoint};
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api::AppState;
use crate::config::DedupMode;
use crate::create::{respond, submit};
use crate::db_error::DbResult;
use crate::error::{ApiError, Problem};
use crate::events::RequestId;
use crate::extract::{Body, IdempotencyKey, JsonBody};
use crate::key::KEY_BYTES_MAX;
use crate::ops::Clock;
use crate::payment::{Payment, PaymentRequest};
use crate::store::{self, Decision, KeyBefore, Keyed, Lease, Outcome};
use crate::totals::Delta;
use crate::writer::Op;

/// Items in one batch: a batch is one op of the writer's transaction, so
/// this bounds the time it holds the writer (a few ms) and the answer.
pub(crate) const BATCH_ITEMS_MAX: usize = 100;

/// The largest batch body: 100 items of a few hundred bytes each.
pub(crate) const BATCH_BODY_BYTES_MAX: usize = 64 * 1024;

/// One item: its id in the batch and its payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    pub item_id: String,
    pub request: PaymentRequest,
}

/// A validated batch and the key it was sent under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    pub key: String,
    pub items: Vec<Item>,
}

/// The parsed body, before the key is known.
pub(crate) struct BatchBody(Vec<Item>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawItem<'a> {
    #[serde(borrow, default)]
    item_id: Option<&'a RawValue>,
}

fn invalid(detail: String) -> ApiError {
    ApiError::new(Problem::InvalidBatch, detail)
}

impl JsonBody for BatchBody {
    const BYTES_MAX: usize = BATCH_BODY_BYTES_MAX;
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let raw: RawBatch<'_> =
            serde_json::from_slice(body).map_err(|e| invalid(format!("the body must be {{\"items\": [...]}}: {e}")))?;
        if raw.items.is_empty() || raw.items.len() > BATCH_ITEMS_MAX {
            return Err(invalid(format!(
                "a batch has 1 to {BATCH_ITEMS_MAX} items, got {}",
                raw.items.len()
            ))
            .with_field("items"));
        }
        let mut items = Vec::with_capacity(raw.items.len());
        for (i, raw) in raw.items.into_iter().enumerate() {
            items.push(parse_item(i, raw)?);
        }
        Ok(BatchBody(items))
    }
}

/// One item: its id, then the payment's own parser (which ignores `item_id`);
/// a refusal keeps its problem type and names the item.
fn parse_item(i: usize, raw: &RawValue) -> Result<Item, ApiError> {
    let named = |mut e: ApiError| {
        e.detail = format!("items[{i}]: {}", e.detail);
        e
    };
    let request = PaymentRequest::from_json(raw.get().as_bytes()).map_err(named)?;
    let id: Option<RawItem<'_>> = serde_json::from_str(raw.get()).ok();
    let item_id = id
        .and_then(|r| r.item_id)
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
        .ok_or_else(|| {
            invalid(format!("items[{i}]: item_id is required and must be a string")).with_field("item_id")
        })?;
    if item_id.is_empty() || !item_id.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b':') {
        return Err(invalid(format!(
            "items[{i}]: item_id {item_id:?} must be printable ASCII without spaces or ':'"
        ))
        .with_field("item_id"));
    }
    Ok(Item { item_id, request })
}

impl Batch {
    /// The batch under `key`: item ids unique, every `KEY:ITEM_ID` a valid key.
    pub(crate) fn new(key: String, BatchBody(items): BatchBody) -> Result<Batch, ApiError> {
        let mut seen = std::collections::HashSet::with_capacity(items.len());
        for item in &items {
            if !seen.insert(item.item_id.as_str()) {
                return Err(
                    invalid(format!("item_id {:?} appears twice in the batch", item.item_id)).with_field("item_id"),
                );
            }
            let joined = key.len() + 1 + item.item_id.len();
            if joined > KEY_BYTES_MAX {
                return Err(invalid(format!(
                    "the item key {key:?}:{:?} is {joined} bytes; keys are at most {KEY_BYTES_MAX}",
                    item.item_id
                ))
                .with_field("item_id"));
            }
        }
        Ok(Batch { key, items })
    }

    pub(crate) fn item_key(&self, item: &Item) -> String {
        format!("{}:{}", self.key, item.item_id)
    }

    /// The answer: every item with its payment, in the batch's order. Field
    /// order is fixed, so a rebuilt answer is byte-identical.
    pub(crate) fn render(&self, payments: &[Payment]) -> String {
        let items: Vec<String> = self
            .items
            .iter()
            .zip(payments)
            .map(|(item, payment)| {
                let id = serde_json::to_string(&item.item_id).unwrap_or_default();
                format!("{{\"item_id\":{id},\"payment\":{}}}", payment.to_json())
            })
            .collect();
        format!("{{\"items\":[{}]}}", items.join(","))
    }
}

impl Keyed for Batch {
    /// Every item's id and request, in order, marked as a batch's (a single
    /// payment's fingerprint never starts with it).
    fn fingerprint(&self) -> Cow<'_, str> {
        let mut text = String::from("batch");
        for item in &self.items {
            text.push('\u{1d}');
            text.push_str(&item.item_id);
            text.push('\u{1e}');
            text.push_str(item.request.fingerprint());
        }
        Cow::Owned(text)
    }

    /// A retry after the stored answer is gone: every item paid as asked →
    /// the answer rebuilt; none paid → None; anything else → a mismatch.
    fn in_ledger(&self, conn: &Connection, _key: &str) -> DbResult<Option<Outcome>> {
        let mut found = Vec::with_capacity(self.items.len());
        for item in &self.items {
            found.push(store::first_payment_with_key(conn, &self.item_key(item))?);
        }
        if found.iter().all(Option::is_none) {
            return Ok(None);
        }
        let paid: Vec<Payment> = found.into_iter().flatten().collect();
        let all_match =
            paid.len() == self.items.len() && self.items.iter().zip(&paid).all(|(i, p)| p.matches(&i.request));
        Ok(Some(match all_match {
            true => Outcome::Replayed {
                status: 201,
                body: self.render(&paid),
                payment_id: None,
                from_ledger: true,
            },
            false => Outcome::Mismatch,
        }))
    }
}

/// Which step of a batch the writer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// `unique`, no delay: decide and execute in one op.
    Whole,
    /// `unique` with a delay: lease the batch's key (to this replica and request).
    Claim(Lease),
    /// Then execute, if the lease is still ours.
    Complete(Lease),
    /// `off`: pay every item, keys unchecked, no stored answer.
    Unchecked,
}

/// The writer's side (in its transaction).
pub(crate) fn run(conn: &Connection, batch: &Batch, step: Step, t: Clock, totals: &mut Delta) -> DbResult<Outcome> {
    let key = batch.key.as_str();
    match step {
        Step::Whole => match store::decide(conn, batch, key, t.now_ms, t.retention_ms)? {
            Decision::Done(outcome) => Ok(outcome),
            Decision::Proceed { before } => execute(conn, batch, (t, before), true, totals),
        },
        Step::Claim(lease) => store::claim(
            conn,
            batch,
            (key, lease),
            (t.now_ms, t.lease_ms, t.retention_ms),
            totals,
        ),
        Step::Complete(lease) => {
            if !store::owns_lease(conn, key, lease)? {
                return Ok(Outcome::LostLease);
            }
            let outcome = execute(conn, batch, (t, KeyBefore::InFlight), true, totals)?;
            if matches!(outcome, Outcome::Refused(_)) {
                store::free_lease(conn, (key, lease), totals)?;
            }
            Ok(outcome)
        }
        Step::Unchecked => execute(conn, batch, (t, KeyBefore::Absent), false, totals),
    }
}

/// Every item's payment (with its event, under `--notify outbox`) and, when
/// `unique`, the answer under the batch's key; all inside a savepoint, so a
/// refused item leaves nothing of the batch behind.
fn execute(
    conn: &Connection,
    batch: &Batch,
    (t, before): (Clock, KeyBefore),
    unique: bool,
    totals: &mut Delta,
) -> DbResult<Outcome> {
    let savepoint = conn.savepoint(Savepoint::Batch)?;
    let mut delta = Delta::default();
    let mut payments = Vec::with_capacity(batch.items.len());
    let inserted: DbResult<()> = batch.items.iter().try_for_each(|item| {
        let key = batch.item_key(item);
        let (payment, d) = store::insert_payment(conn, &item.request, (Some(&key), None), unique, t.book())?;
        delta += d;
        payments.push(payment);
        Ok(())
    });
    if let Err(e) = inserted {
        savepoint.roll_back()?;
        savepoint.release()?;
        return match e.is_permanent() {
            true => Ok(Outcome::Refused(e)),
            false => Err(e),
        };
    }
    let body = batch.render(&payments);
    if unique {
        store::store_answer(
            conn,
            (&batch.key, &*batch.fingerprint()),
            (None, &body),
            (t.now_ms, before),
        )?;
        delta += before.delta_to(false);
    }
    savepoint.release()?;
    *totals += delta;
    Ok(Outcome::ExecutedBatch {
        payments,
        body,
        takeover: before == KeyBefore::InFlight,
    })
}

/// `POST /payments/batch`.
pub(crate) async fn create_batch(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Body<BatchBody>, ApiError>,
) -> Response {
    let worker = state.clone();
    let work = |Body(items), key| async move { create(&worker, items, key).await };
    crate::create::traced(&state, request_id, (key, body), work).await
}

async fn create(state: &AppState, items: BatchBody, key: Option<String>) -> Result<Response, ApiError> {
    let Some(key) = key else {
        return Err(ApiError::new(
            Problem::IdempotencyKeyMissing,
            "a batch needs an Idempotency-Key: each item's key is KEY:ITEM_ID",
        ));
    };
    let batch = Arc::new(Batch::new(key.clone(), items)?);
    let config = &state.0.config;
    let outcome = match config.dedup {
        DedupMode::Unique if config.processing_delay.is_zero() => writer_step(state, &batch, Step::Whole).await?,
        DedupMode::Unique => claim_then_complete(state, &batch).await?,
        DedupMode::Off => writer_step(state, &batch, Step::Unchecked).await?,
        other => {
            return Err(ApiError::new(
                Problem::BatchUnsupported,
                format!("--dedup {} has no batch semantics; nothing was stored", other.as_str()),
            ));
        }
    };
    match outcome {
        Outcome::Mismatch => Err(ApiError::new(
            Problem::IdempotencyKeyReused,
            format!(
                "key {key:?} was already used for a different batch (or its item keys for other payments); nothing was stored"
            ),
        )),
        Outcome::ExecutedBatch {
            payments,
            body,
            takeover,
        } => {
            crate::notify::after_commit(state, &payments).await;
            respond(
                Outcome::ExecutedBatch {
                    payments,
                    body,
                    takeover,
                },
                Some(&key),
            )
        }
        other => respond(other, Some(&key)),
    }
}

async fn writer_step(state: &AppState, batch: &Arc<Batch>, step: Step) -> Result<Outcome, ApiError> {
    let batch = Arc::clone(batch);
    submit(state, &state.0.writer, |reply| Op::Batch { batch, step, reply }).await
}

/// `unique` with a processing delay: lease the batch's key, work, complete.
async fn claim_then_complete(state: &AppState, batch: &Arc<Batch>) -> Result<Outcome, ApiError> {
    let lease = state.new_lease();
    let claimed = writer_step(state, batch, Step::Claim(lease)).await?;
    if !matches!(claimed, Outcome::Claimed { .. }) {
        return Ok(claimed);
    }
    tokio::time::sleep(state.0.config.processing_delay).await;
    writer_step(state, batch, Step::Complete(lease)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Result<BatchBody, Problem> {
        BatchBody::parse(json.as_bytes()).map_err(|e| e.problem)
    }

    const ITEM: &str = r#""src": "a", "dest": "b", "amount": "1""#;

    #[test]
    fn items_are_parsed_and_refused_with_their_own_problem() {
        let ok = body(&format!(
            r#"{{"items": [{{"item_id": "x", {ITEM}}}, {{"item_id": "y", {ITEM}}}]}}"#
        ));
        let batch = Batch::new("k".into(), ok.unwrap()).unwrap();
        assert_eq!(batch.item_key(&batch.items[1]), "k:y");
        assert_eq!(body(r#"{"items": []}"#).err(), Some(Problem::InvalidBatch));
        assert_eq!(body(r#"{"items": [1]}"#).err(), Some(Problem::MalformedJson));
        assert_eq!(body(r#"{"itemz": []}"#).err(), Some(Problem::InvalidBatch));
        let bad_amount = r#"{"items": [{"item_id": "x", "src": "a", "dest": "b", "amount": "x"}]}"#;
        assert_eq!(body(bad_amount).err(), Some(Problem::InvalidAmount));
        for id in [r#""""#, r#""a:b""#, r#""a b""#, "7"] {
            let json = format!(r#"{{"items": [{{"item_id": {id}, {ITEM}}}]}}"#);
            assert_eq!(body(&json).err(), Some(Problem::InvalidBatch), "{id}");
        }
        let many: Vec<String> = (0..=BATCH_ITEMS_MAX)
            .map(|i| format!(r#"{{"item_id": "{i}", {ITEM}}}"#))
            .collect();
        assert_eq!(
            body(&format!(r#"{{"items": [{}]}}"#, many.join(","))).err(),
            Some(Problem::InvalidBatch)
        );
    }

    #[test]
    fn item_ids_are_unique_and_item_keys_bounded() {
        let twice = body(&format!(
            r#"{{"items": [{{"item_id": "x", {ITEM}}}, {{"item_id": "x", {ITEM}}}]}}"#
        ))
        .unwrap();
        assert_eq!(
            Batch::new("k".into(), twice).unwrap_err().problem,
            Problem::InvalidBatch
        );
        let one = || body(&format!(r#"{{"items": [{{"item_id": "x", {ITEM}}}]}}"#)).unwrap();
        assert!(Batch::new("k".repeat(KEY_BYTES_MAX - 2), one()).is_ok());
        assert!(Batch::new("k".repeat(KEY_BYTES_MAX - 1), one()).is_err());
    }
}
