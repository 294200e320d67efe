//! Batches: several payments in one request under one idempotency key.
//!
//! The right way (`--batch-keys derived`): one `POST /payments/batch` per
//! batch; the service stores each item under `KEY:ITEM_ID`, so every item has
//! a key of its own and the batch replays as a whole. The mistake the
//! `batch-one-key` lesson shows (`--batch-keys shared`): every item sent on
//! its own under the batch's one key; the service takes the key for the first
//! item and refuses the others (422: the key was used for another payment),
//! which are never paid.
//!
//! Either way an intent's key is what the service stores it under, so the
//! judge needs nothing new: `KEY:ITEM_ID` (derived), or `KEY` for every item
//! of the batch (shared; the judge attributes the one payment by its fields).

use eo_core::wire::{BATCH_ITEMS_MAX, item_key};

use crate::intents::{Intent, Intents, IntentsBuilder};
use crate::strategy::AmountStyle;

/// How the items of a batch are keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchKeys {
    /// One `POST /payments/batch` per batch; each item's key is `KEY:ITEM_ID`.
    Derived,
    /// Each item sent on its own under the batch's one key (the mistake):
    /// the first is paid, the others are refused with 422.
    Shared,
}

/// Payments sent `size` at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub size: usize,
    pub keys: BatchKeys,
}

impl Batch {
    pub fn validate(self) -> Result<(), String> {
        if !(2..=BATCH_ITEMS_MAX).contains(&self.size) {
            return Err(format!(
                "--batch must be between 2 and {BATCH_ITEMS_MAX} (the service's limit of items per batch)"
            ));
        }
        Ok(())
    }
}

/// The intents keyed for batches: consecutive positions form a batch of
/// `batch.size` (the last may be smaller); a batch's key is its first
/// intent's own key, and item ids are the positions within the batch.
pub fn rekey(intents: &Intents, batch: Batch) -> Intents {
    let mut keyed = IntentsBuilder::with_capacity(intents.len());
    for at in 0..intents.len() {
        let first = at - at % batch.size;
        let batch_key = intents.key(first);
        let key = match batch.keys {
            BatchKeys::Derived => item_key(&batch_key, &(at % batch.size).to_string()),
            BatchKeys::Shared => batch_key.into_owned(),
        };
        if let Some(intent) = intents.get(at) {
            keyed.push(intent.index, &key, &intent.src, &intent.dest, intent.amount_minor);
        }
    }
    keyed.finish()
}

/// `KEY:ITEM_ID` → (`KEY`, `ITEM_ID`), the inverse of [`item_key`].
pub fn split_item_key(key: &str) -> Option<(&str, &str)> {
    key.rsplit_once(':')
        .filter(|(batch, item)| !batch.is_empty() && !item.is_empty())
}

/// The body of `POST /payments/batch` for these items (keys made by
/// [`rekey`] with [`BatchKeys::Derived`]), with the batch's key; `None` when
/// the items do not share one batch key.
pub fn request(items: &[Intent], style: AmountStyle) -> Option<(String, String)> {
    let (batch_key, _) = split_item_key(&items.first()?.key)?;
    let mut parts = Vec::with_capacity(items.len());
    for intent in items {
        let (key, item_id) = split_item_key(&intent.key)?;
        if key != batch_key {
            return None;
        }
        let single = crate::runner::request_body(intent, style);
        // `{"src":…}` → `{"item_id":"…","src":…}`: one way to write a payment.
        let item_id = serde_json::to_string(item_id).ok()?;
        parts.push(format!("{{\"item_id\":{item_id},{}", single.strip_prefix('{')?));
    }
    Some((batch_key.to_owned(), format!("{{\"items\":[{}]}}", parts.join(","))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{key_for, repeat};

    #[test]
    fn derived_keys_are_the_batch_key_and_the_item_id() {
        let intents = Intents::from(repeat(5, "a", "b", 100, 7));
        let keyed = rekey(
            &intents,
            Batch {
                size: 2,
                keys: BatchKeys::Derived,
            },
        );
        let keys: Vec<String> = (0..5).map(|at| keyed.key(at).into_owned()).collect();
        let k = |i| key_for(7, i);
        assert_eq!(
            keys,
            [
                format!("{}:0", k(0)),
                format!("{}:1", k(0)),
                format!("{}:0", k(2)),
                format!("{}:1", k(2)),
                format!("{}:0", k(4))
            ]
        );
        let shared = rekey(
            &intents,
            Batch {
                size: 2,
                keys: BatchKeys::Shared,
            },
        );
        assert_eq!((shared.key(1), shared.key(3)), (k(0).into(), k(2).into()));
        assert_eq!(keyed.index(3), 3);
    }

    #[test]
    fn a_batch_request_names_each_item_and_refuses_mixed_batches() {
        let intents = Intents::from(repeat(3, "a", "b", 1250, 7));
        let keyed = rekey(
            &intents,
            Batch {
                size: 3,
                keys: BatchKeys::Derived,
            },
        );
        let items: Vec<Intent> = keyed.iter().collect();
        let (key, body) = request(&items, AmountStyle::String).expect("one batch");
        assert_eq!(key, key_for(7, 0));
        let doc: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(doc["items"][2]["item_id"], "2");
        assert_eq!(doc["items"][0]["amount"], "12.50");
        assert_eq!(doc["items"].as_array().map(Vec::len), Some(3));
        let mixed = [items[0].clone(), intents.get(1).expect("one")];
        assert_eq!(request(&mixed, AmountStyle::String), None);
    }

    #[test]
    fn sizes_are_bounded() {
        let batch = |size| Batch {
            size,
            keys: BatchKeys::Derived,
        };
        assert!(batch(2).validate().is_ok() && batch(BATCH_ITEMS_MAX).validate().is_ok());
        assert!(batch(1).validate().is_err() && batch(BATCH_ITEMS_MAX + 1).validate().is_err());
    }
}
