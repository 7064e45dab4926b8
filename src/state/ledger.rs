//! The ledger of learned samples by id, for exact unlearning (`cmd/unlearn`, `cmd/relabel`):
//! each kept sample's id, label and embedding within a byte budget (the oldest dropped first),
//! and a bounded memory of ids that are gone and why. Lives in the snapshot; the write-ahead log
//! rebuilds what came after it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::cbor::{self, F32Slice, F32s};

/// Ids remembered as gone (unlearned, dropped, forgotten), to say why an id is not kept.
const GONE_IDS: usize = 4096;

/// Bytes counted per kept sample on top of its embedding, id and label (map entries,
/// allocation headers).
pub const ENTRY_OVERHEAD_BYTES: u64 = 96;

/// Why an id is not (or no longer) kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gone {
    /// Unlearned (or relabeled away and then unlearned) on request.
    Unlearned,
    /// Dropped, oldest first, past the ledger's byte budget.
    Dropped,
    /// The sample left the head with its class (`forget`), the whole head (`reset`, `import`,
    /// `rollback`), or was not among the stored samples a new algorithm was trained from.
    Forgotten,
}

/// A kept sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    pub label: String,
    pub embedding: Vec<f32>,
}

impl Entry {
    fn bytes(&self) -> u64 {
        (self.embedding.len() * 4 + self.id.len() + self.label.len()) as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// Why an id cannot be unlearned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No sample with this id was learned (as far as the ledger remembers).
    Never,
    Gone(Gone),
}

/// Learned samples by id, oldest first, within `budget_bytes`.
#[derive(Debug, Clone)]
pub struct Ledger {
    budget_bytes: u64,
    bytes: u64,
    /// Insertion order → sample.
    entries: BTreeMap<u64, Entry>,
    /// Id → its kept samples' orders, oldest first (an id learned twice has two).
    by_id: HashMap<String, Vec<u64>>,
    next: u64,
    gone_order: VecDeque<String>,
    gone: HashMap<String, Gone>,
}

#[derive(Serialize, Deserialize)]
struct Persisted {
    /// (id, label, embedding), oldest first.
    entries: Vec<(String, String, F32s)>,
    /// (id, why), oldest first.
    gone: Vec<(String, Gone)>,
}

/// What [`Persisted`] reads, written from borrowed data (no copy of the embeddings).
#[derive(Serialize)]
struct PersistedRef<'a> {
    entries: Vec<(&'a str, &'a str, F32Slice<'a>)>,
    gone: Vec<(&'a str, Gone)>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new(budget_bytes: u64) -> Ledger {
        Ledger {
            budget_bytes,
            bytes: 0,
            entries: BTreeMap::new(),
            by_id: HashMap::new(),
            next: 0,
            gone_order: VecDeque::new(),
            gone: HashMap::new(),
        }
    }

    /// Number of kept samples.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes counted for the kept samples.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records a learned sample as the newest; drops the oldest past the budget.
    pub fn insert(&mut self, id: &str, label: &str, embedding: &[f32]) {
        let entry = Entry {
            id: id.to_string(),
            label: label.to_string(),
            embedding: embedding.to_vec(),
        };
        self.bytes += entry.bytes();
        let order = self.next;
        self.next += 1;
        self.entries.insert(order, entry);
        self.by_id.entry(id.to_string()).or_default().push(order);
        while self.bytes > self.budget_bytes {
            let Some((&oldest, _)) = self.entries.first_key_value() else {
                break;
            };
            self.take(oldest, Gone::Dropped);
        }
    }

    /// The newest kept sample with this id, or why there is none.
    pub fn find(&self, id: &str) -> Result<&Entry, Missing> {
        match self.by_id.get(id).and_then(|v| v.last()) {
            Some(order) => self.entries.get(order).ok_or(Missing::Never),
            None => Err(self
                .gone
                .get(id)
                .map_or(Missing::Never, |g| Missing::Gone(*g))),
        }
    }

    /// Removes the newest kept sample with this id and returns it.
    pub fn remove(&mut self, id: &str, why: Gone) -> Option<Entry> {
        let order = *self.by_id.get(id)?.last()?;
        self.take(order, why)
    }

    /// Removes the newest kept sample with this id, label and embedding (bit for bit), if any:
    /// what replaying a logged removal does.
    pub fn remove_exact(&mut self, id: &str, label: &str, embedding: &[f32]) -> Option<Entry> {
        let order = self.by_id.get(id)?.iter().rev().copied().find(|o| {
            self.entries
                .get(o)
                .is_some_and(|e| e.label == label && same_bits(&e.embedding, embedding))
        })?;
        self.take(order, Gone::Unlearned)
    }

    fn take(&mut self, order: u64, why: Gone) -> Option<Entry> {
        let entry = self.entries.remove(&order)?;
        self.bytes -= entry.bytes();
        if let Some(v) = self.by_id.get_mut(&entry.id) {
            v.retain(|o| *o != order);
            if v.is_empty() {
                self.by_id.remove(&entry.id);
                self.remember_gone(&entry.id, why);
            }
        }
        Some(entry)
    }

    /// Remembers why `id` is gone (a kept id is found first, whatever is remembered here).
    fn remember_gone(&mut self, id: &str, why: Gone) {
        if self.gone.insert(id.to_string(), why).is_none() {
            self.gone_order.push_back(id.to_string());
        }
        while self.gone_order.len() > GONE_IDS {
            if let Some(old) = self.gone_order.pop_front() {
                self.gone.remove(&old);
            }
        }
    }

    /// Drops every sample of a class (`forget`).
    pub fn forget_label(&mut self, label: &str) {
        let orders: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.label == label)
            .map(|(o, _)| *o)
            .collect();
        for o in orders {
            self.take(o, Gone::Forgotten);
        }
    }

    /// Drops everything (`reset`, `import`, `rollback`: the head no longer holds these samples).
    pub fn forget_all(&mut self) {
        let orders: Vec<u64> = self.entries.keys().copied().collect();
        for o in orders {
            self.take(o, Gone::Forgotten);
        }
    }

    /// Keeps only the samples found among `kept` (label, embedding) pairs, each pair matching
    /// at most one sample, newest first: after a head was retrained from exactly `kept`.
    pub fn retain_among<'a>(&mut self, kept: impl Iterator<Item = (&'a str, &'a [f32])>) {
        let mut pool: HashMap<(&str, Vec<u32>), usize> = HashMap::new();
        for (label, x) in kept {
            *pool.entry((label, bits(x))).or_default() += 1;
        }
        let mut drop = Vec::new();
        for (o, e) in self.entries.iter().rev() {
            match pool.get_mut(&(e.label.as_str(), bits(&e.embedding))) {
                Some(n) if *n > 0 => *n -= 1,
                _ => drop.push(*o),
            }
        }
        for o in drop {
            self.take(o, Gone::Forgotten);
        }
    }

    /// The largest `n` among kept or remembered ids of the form `{prefix}-{n}`: generated ids
    /// continue above it after a restart.
    pub fn highest_generated(&self, prefix: &str) -> u64 {
        let n = |id: &String| -> Option<u64> {
            id.strip_prefix(prefix)?.strip_prefix('-')?.parse().ok()
        };
        self.by_id
            .keys()
            .chain(self.gone.keys())
            .filter_map(n)
            .max()
            .unwrap_or(0)
    }

    /// Serializes (CBOR).
    pub fn to_bytes(&self) -> Vec<u8> {
        let p = PersistedRef {
            entries: self
                .entries
                .values()
                .map(|e| (e.id.as_str(), e.label.as_str(), F32Slice(&e.embedding)))
                .collect(),
            gone: self
                .gone_order
                .iter()
                .filter_map(|id| Some((id.as_str(), *self.gone.get(id)?)))
                .collect(),
        };
        // Writing CBOR into memory cannot fail.
        cbor::to_vec_exact(&p).unwrap_or_default()
    }

    /// Restores from `to_bytes` output (empty: an empty ledger, as in snapshots written before
    /// unlearning existed); embeddings of another dimension are an error.
    pub fn from_bytes(bytes: &[u8], dim: usize, budget_bytes: u64) -> Result<Ledger, String> {
        let mut ledger = Ledger::new(budget_bytes);
        if bytes.is_empty() {
            return Ok(ledger);
        }
        let p: Persisted =
            ciborium::from_reader(bytes).map_err(|e| format!("unlearning ledger: {e}"))?;
        for (id, why) in p.gone {
            ledger.remember_gone(&id, why);
        }
        for (id, label, x) in p.entries {
            if x.0.len() != dim || x.0.iter().any(|v| !v.is_finite()) {
                return Err(format!("unlearning ledger: sample {id:?} is malformed"));
            }
            ledger.insert(&id, &label, &x.0);
        }
        Ok(ledger)
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Whether two embeddings are the same bit for bit.
pub fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PER: u64 = 4 * 4 + 2 + 1 + ENTRY_OVERHEAD_BYTES;

    #[test]
    fn oldest_are_dropped_past_the_budget_and_reasons_are_kept() {
        let mut l = Ledger::new(3 * PER);
        for i in 0..5 {
            l.insert(&format!("s{i}"), "a", &[i as f32; 4]);
        }
        assert_eq!(l.len(), 3);
        assert_eq!(l.bytes(), 3 * PER);
        assert_eq!(l.find("s0"), Err(Missing::Gone(Gone::Dropped)));
        assert_eq!(l.find("zz"), Err(Missing::Never));
        assert_eq!(l.find("s4").map(|e| e.embedding[0]), Ok(4.0));
        let e = l.remove("s3", Gone::Unlearned).expect("kept");
        assert_eq!(e.embedding, [3.0; 4]);
        assert_eq!(l.find("s3"), Err(Missing::Gone(Gone::Unlearned)));
        l.forget_label("a");
        assert_eq!(l.find("s4"), Err(Missing::Gone(Gone::Forgotten)));
        assert!(l.is_empty());
        assert_eq!(l.bytes(), 0);
        // Learned again: found again.
        l.insert("s4", "b", &[9.0; 4]);
        assert_eq!(l.find("s4").map(|e| e.label.as_str()), Ok("b"));
        assert_eq!(l.highest_generated("s"), 0, "s4 is not of the form s-<n>");
        l.insert("t-41", "b", &[1.0; 4]);
        assert_eq!(l.highest_generated("t"), 41);
    }

    #[test]
    fn an_id_learned_twice_is_unlearned_newest_first() {
        let mut l = Ledger::new(u64::MAX);
        l.insert("p", "cat", &[1.0; 4]);
        l.insert("p", "dog", &[1.0; 4]);
        assert_eq!(l.find("p").map(|e| e.label.as_str()), Ok("dog"));
        assert!(l.remove_exact("p", "cat", &[1.0; 4]).is_some());
        assert_eq!(l.find("p").map(|e| e.label.as_str()), Ok("dog"));
        assert!(l.remove_exact("p", "dog", &[2.0; 4]).is_none());
        assert!(l.remove("p", Gone::Unlearned).is_some());
        assert_eq!(l.find("p"), Err(Missing::Gone(Gone::Unlearned)));
    }

    #[test]
    fn retraining_keeps_only_the_samples_it_was_trained_from() {
        let mut l = Ledger::new(u64::MAX);
        l.insert("a", "x", &[1.0; 4]);
        l.insert("b", "x", &[1.0; 4]);
        l.insert("c", "y", &[2.0; 4]);
        let kept: Vec<(&str, Vec<f32>)> = vec![("x", vec![1.0; 4])];
        l.retain_among(kept.iter().map(|(l, x)| (*l, x.as_slice())));
        assert_eq!(l.len(), 1);
        assert!(l.find("b").is_ok(), "the newest of two equal samples stays");
        assert_eq!(l.find("a"), Err(Missing::Gone(Gone::Forgotten)));
        assert_eq!(l.find("c"), Err(Missing::Gone(Gone::Forgotten)));
    }

    #[test]
    fn round_trips_and_refuses_other_dimensions() {
        let mut l = Ledger::new(2 * PER);
        for i in 0..3 {
            l.insert(&format!("s{i}"), "a", &[i as f32; 4]);
        }
        l.remove("s2", Gone::Unlearned);
        let back = Ledger::from_bytes(&l.to_bytes(), 4, 2 * PER).expect("load");
        assert_eq!(back.len(), 1);
        assert_eq!(back.find("s1").map(|e| e.embedding[0]), Ok(1.0));
        assert_eq!(back.find("s0"), Err(Missing::Gone(Gone::Dropped)));
        assert_eq!(back.find("s2"), Err(Missing::Gone(Gone::Unlearned)));
        assert!(Ledger::from_bytes(&l.to_bytes(), 5, 100).is_err());
        assert!(Ledger::from_bytes(b"\xff", 4, 100).is_err());
        assert!(Ledger::from_bytes(b"", 4, 100).expect("empty").is_empty());
        // A smaller budget after a restart drops the oldest.
        let small = Ledger::from_bytes(&l.to_bytes(), 4, 0).expect("load");
        assert!(small.is_empty());
    }
}
