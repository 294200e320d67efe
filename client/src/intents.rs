//! The payments a run intends, held compactly. A `Vec<Intent>` costs about
//! 200 bytes a payment (three heap strings each); [`Intents`] costs 32: the
//! accounts are interned, a key generated from (seed, index) is not stored at
//! all but derived when needed, and any other key is kept once. `client pay`
//! builds one directly; a `Vec<Intent>` (small runs, the scenario runner)
//! converts. Cloning shares the table.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// One logical payment the client wants to happen exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub index: usize,
    /// The payment's key: sent as is with `per-payment`, as `KEY-aN` with `per-attempt`.
    pub key: String,
    pub src: String,
    pub dest: String,
    pub amount_minor: i64,
}

/// The most payments one run takes (the client's own state for them stays
/// under about 50 MB; the history of their attempts is streamed to a file).
pub const INTENTS_MAX: usize = 1_000_000;

/// The most rows a table holds: positions and account numbers are `u32`, and
/// a row names two accounts. Far above anything a run accepts.
const ROWS_MAX: usize = (u32::MAX / 2) as usize;

/// What a generated key starts with.
const KEY_PREFIX: &str = "pay-";
/// Hex digits of the seed in a generated key.
const KEY_SEED_DIGITS: usize = 16;
/// Digits of the index in a generated key (more only for larger indexes).
const KEY_INDEX_DIGITS: usize = 7;
/// A row's `key` when the key is generated from the table's seed and the row's index.
const KEY_GENERATED: u32 = u32::MAX;

/// Reproducible keys: the same seed names the same payments.
pub fn key_for(seed: u64, index: usize) -> String {
    format!("pay-{seed:016x}-{index:07}")
}

/// The seed and index of a key written by [`key_for`], exactly as it writes
/// it (so that the key made from them is this key again).
pub fn parse_key(key: &str) -> Option<(u64, usize)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let seed = rest.get(..KEY_SEED_DIGITS)?;
    let index = rest.get(KEY_SEED_DIGITS..)?.strip_prefix('-')?;
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    let canonical = index.len() == KEY_INDEX_DIGITS || (index.len() > KEY_INDEX_DIGITS && !index.starts_with('0'));
    if !seed.bytes().all(hex) || !canonical || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((u64::from_str_radix(seed, 16).ok()?, index.parse().ok()?))
}

#[derive(Debug, Clone, Copy)]
struct Row {
    index: u64,
    amount_minor: i64,
    src: u32,
    dest: u32,
    /// [`KEY_GENERATED`], or the key's place in `Table::custom`.
    key: u32,
}

#[derive(Debug, Default)]
struct Table {
    rows: Vec<Row>,
    accounts: Vec<Box<str>>,
    /// The seed of the generated keys, if any row has one.
    seed: Option<u64>,
    /// Keys that are not generated from `seed` and the row's index.
    custom: Vec<Box<str>>,
    /// Positions of the rows with a custom key, ordered by key, then position.
    by_custom_key: Vec<u32>,
    /// True when every row's index is its position (then no index map is needed).
    identity: bool,
    /// (index, position) ordered, built when first needed if not `identity`.
    by_index: OnceLock<Vec<(u64, u32)>>,
    /// Rows refused because the table was full.
    refused: usize,
}

/// The intents of a run, in order; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Intents(Arc<Table>);

/// Builds an [`Intents`] row by row, interning accounts.
#[derive(Default)]
pub struct IntentsBuilder {
    table: Table,
    account_ids: HashMap<Box<str>, u32>,
}

impl IntentsBuilder {
    pub fn with_capacity(rows: usize) -> IntentsBuilder {
        let mut builder = IntentsBuilder::default();
        builder.table.rows.reserve_exact(rows.min(INTENTS_MAX));
        builder
    }

    pub fn push(&mut self, index: usize, key: &str, src: &str, dest: &str, amount_minor: i64) {
        let t = &mut self.table;
        if t.rows.len() >= ROWS_MAX {
            t.refused += 1;
            return;
        }
        let generated = match parse_key(key) {
            Some((seed, at)) if at == index => *t.seed.get_or_insert(seed) == seed,
            _ => false,
        };
        let key = if generated {
            KEY_GENERATED
        } else {
            t.custom.push(key.into());
            (t.custom.len() - 1) as u32
        };
        let (src, dest) = (self.account(src), self.account(dest));
        self.table.rows.push(Row {
            index: index as u64,
            amount_minor,
            src,
            dest,
            key,
        });
    }

    fn account(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.account_ids.get(name) {
            return id;
        }
        // At most two accounts a row and at most ROWS_MAX rows: it fits.
        let id = self.table.accounts.len() as u32;
        self.table.accounts.push(name.into());
        self.account_ids.insert(name.into(), id);
        id
    }

    pub fn finish(mut self) -> Intents {
        let t = &mut self.table;
        t.rows.shrink_to_fit();
        t.identity = t.rows.iter().enumerate().all(|(at, r)| r.index == at as u64);
        let mut by_key: Vec<u32> = (0..t.rows.len() as u32)
            .filter(|&at| t.rows[at as usize].key != KEY_GENERATED)
            .collect();
        by_key.sort_by(|&a, &b| {
            t.custom[t.rows[a as usize].key as usize]
                .cmp(&t.custom[t.rows[b as usize].key as usize])
                .then(a.cmp(&b))
        });
        t.by_custom_key = by_key;
        Intents(Arc::new(self.table))
    }
}

impl Intents {
    /// `count` identical payments with generated keys: no string per payment.
    pub fn repeat(count: usize, src: &str, dest: &str, amount_minor: i64, seed: u64) -> Intents {
        let mut b = IntentsBuilder::with_capacity(count);
        let (src, dest) = (b.account(src), b.account(dest));
        let rows = (0..count.min(ROWS_MAX) as u64).map(|index| Row {
            index,
            amount_minor,
            src,
            dest,
            key: KEY_GENERATED,
        });
        b.table.rows.extend(rows);
        b.table.refused = count.saturating_sub(ROWS_MAX);
        b.table.seed = Some(seed);
        b.finish()
    }

    pub fn len(&self) -> usize {
        self.0.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.rows.is_empty()
    }

    /// Rows that did not fit (a table holds at most about 2 billion): a run refuses such a table.
    pub fn refused(&self) -> usize {
        self.0.refused
    }

    /// The intent at position `at`, as an owned value.
    pub fn get(&self, at: usize) -> Option<Intent> {
        let row = self.0.rows.get(at)?;
        Some(Intent {
            index: row.index as usize,
            key: self.key(at).into_owned(),
            src: self.0.accounts[row.src as usize].to_string(),
            dest: self.0.accounts[row.dest as usize].to_string(),
            amount_minor: row.amount_minor,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = Intent> + '_ {
        (0..self.len()).filter_map(|at| self.get(at))
    }

    /// The intent's index (its place in the input), by position.
    pub fn index(&self, at: usize) -> usize {
        self.0.rows[at].index as usize
    }

    pub fn amount_minor(&self, at: usize) -> i64 {
        self.0.rows[at].amount_minor
    }

    /// The key of the intent at `at`: derived if generated, else borrowed.
    pub fn key(&self, at: usize) -> Cow<'_, str> {
        let row = &self.0.rows[at];
        match (row.key, self.0.seed) {
            (KEY_GENERATED, Some(seed)) => Cow::Owned(key_for(seed, row.index as usize)),
            (key, _) => Cow::Borrowed(self.0.custom.get(key as usize).map_or("", |k| k)),
        }
    }

    /// Whether a payment (src, dest, amount) is the one intended at `at`.
    pub fn is_payment(&self, at: usize, src: &str, dest: &str, amount_minor: i64) -> bool {
        let row = &self.0.rows[at];
        row.amount_minor == amount_minor
            && *self.0.accounts[row.src as usize] == *src
            && *self.0.accounts[row.dest as usize] == *dest
    }

    /// The sum of the amounts, exact.
    pub fn total_minor(&self) -> i128 {
        self.0.rows.iter().map(|r| i128::from(r.amount_minor)).sum()
    }

    /// The last position holding the intent with this index.
    pub fn position_of(&self, index: usize) -> Option<usize> {
        self.positions_of(index as u64).next()
    }

    /// Positions holding `index`, last first.
    fn positions_of(&self, index: u64) -> Box<dyn Iterator<Item = usize> + '_> {
        let t = &self.0;
        if t.identity {
            return Box::new(((index as usize) < t.rows.len()).then_some(index as usize).into_iter());
        }
        let by_index = t.by_index.get_or_init(|| {
            let mut v: Vec<(u64, u32)> = t.rows.iter().enumerate().map(|(at, r)| (r.index, at as u32)).collect();
            v.sort_unstable();
            v
        });
        let end = by_index.partition_point(|&(i, _)| i <= index);
        let start = by_index[..end].partition_point(|&(i, _)| i < index);
        Box::new(by_index[start..end].iter().rev().map(|&(_, at)| at as usize))
    }

    /// The last position whose key is `key`.
    pub fn position_of_key(&self, key: &str) -> Option<usize> {
        let t = &self.0;
        if let Some((seed, index)) = parse_key(key)
            && t.seed == Some(seed)
            && let Some(at) = self
                .positions_of(index as u64)
                .find(|&at| t.rows[at].key == KEY_GENERATED)
        {
            return Some(at);
        }
        let custom = |at: u32| &*t.custom[t.rows[at as usize].key as usize];
        let end = t.by_custom_key.partition_point(|&at| custom(at) <= key);
        (end > 0 && custom(t.by_custom_key[end - 1]) == key).then(|| t.by_custom_key[end - 1] as usize)
    }

    /// The position whose key is `key` and whose payment is (src, dest,
    /// amount), if any, else [`Intents::position_of_key`]: several intents may
    /// carry one key (a batch's items sent under the batch's key), and a
    /// payment under it belongs to the one it pays.
    pub fn position_of_key_for(&self, key: &str, src: &str, dest: &str, amount_minor: i64) -> Option<usize> {
        let last = self.position_of_key(key)?;
        let t = &self.0;
        if t.rows[last].key == KEY_GENERATED || self.is_payment(last, src, dest, amount_minor) {
            return Some(last);
        }
        let custom = |at: u32| &*t.custom[t.rows[at as usize].key as usize];
        let end = t.by_custom_key.partition_point(|&at| custom(at) <= key);
        let start = t.by_custom_key[..end].partition_point(|&at| custom(at) < key);
        t.by_custom_key[start..end]
            .iter()
            .rev()
            .map(|&at| at as usize)
            .find(|&at| self.is_payment(at, src, dest, amount_minor))
            .or(Some(last))
    }

    /// `pay-<seed>-` of the first intent's key: a key with it that no intent
    /// owns was made by this run's generator but for no intent (an orphan).
    pub fn key_prefix(&self) -> String {
        if self.is_empty() {
            return String::new();
        }
        let key = self.key(0);
        key.rfind('-').map(|at| key[..=at].to_owned()).unwrap_or_default()
    }

    /// The intents at the positions `keep` selects, in order.
    pub fn filter(&self, keep: impl Fn(usize) -> bool) -> Intents {
        let mut b = IntentsBuilder::default();
        for at in (0..self.len()).filter(|&at| keep(at)) {
            let row = self.0.rows[at];
            let (src, dest) = (&self.0.accounts[row.src as usize], &self.0.accounts[row.dest as usize]);
            b.push(row.index as usize, &self.key(at), src, dest, row.amount_minor);
        }
        b.finish()
    }
}

impl From<Vec<Intent>> for Intents {
    fn from(intents: Vec<Intent>) -> Intents {
        Intents::from(intents.as_slice())
    }
}

impl From<&[Intent]> for Intents {
    fn from(intents: &[Intent]) -> Intents {
        let mut b = IntentsBuilder::with_capacity(intents.len());
        for i in intents {
            b.push(i.index, &i.key, &i.src, &i.dest, i.amount_minor);
        }
        b.finish()
    }
}

impl From<&Vec<Intent>> for Intents {
    fn from(intents: &Vec<Intent>) -> Intents {
        Intents::from(intents.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_and_nothing_else_does() {
        for (seed, index) in [(0, 0), (u64::MAX, 9_999_999), (0x4d, 12_345_678)] {
            assert_eq!(parse_key(&key_for(seed, index)), Some((seed, index)));
        }
        for bad in [
            "pay-000000000000004d-000001",
            "pay-000000000000004d-00000001",
            "pay-000000000000004D-0000001",
            "pay-000000000000004d-0000001-a1",
            "pay-000000000000004d0000001",
            "pay-+00000000000004d-0000001",
            "key",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_table_gives_back_what_it_was_given() {
        let mut v = crate::runner::repeat(3, "bianca", "marc", 100, 7);
        v[1].key = "custom".into();
        v[2].key = key_for(8, 2); // another seed: kept as a custom key
        v.push(Intent {
            index: 1,
            key: key_for(7, 1),
            src: "a".into(),
            dest: "b".into(),
            amount_minor: 5,
        });
        let t = Intents::from(v.clone());
        assert_eq!(t.iter().collect::<Vec<_>>(), v);
        assert_eq!(t.position_of_key(&key_for(7, 0)), Some(0));
        assert_eq!(t.position_of_key("custom"), Some(1));
        assert_eq!(t.position_of_key(&key_for(8, 2)), Some(2));
        assert_eq!(
            t.position_of_key(&key_for(7, 1)),
            Some(3),
            "index 1's generated key is at 3"
        );
        assert_eq!(
            (t.position_of_key(&key_for(7, 2)), t.position_of_key("nope")),
            (None, None)
        );
        assert_eq!((t.position_of(1), t.position_of(9)), (Some(3), None));
        assert!(t.is_payment(3, "a", "b", 5) && !t.is_payment(3, "a", "b", 6));
        assert_eq!(t.total_minor(), 305);
        assert_eq!(t.key_prefix(), "pay-0000000000000007-");
        let odd = t.filter(|at| at % 2 == 1);
        assert_eq!(odd.iter().collect::<Vec<_>>(), vec![v[1].clone(), v[3].clone()]);
        assert_eq!(
            Intents::repeat(3, "bianca", "marc", 100, 7).iter().collect::<Vec<_>>(),
            crate::runner::repeat(3, "bianca", "marc", 100, 7)
        );
    }
}
