//! Stored labeled embeddings: per-class reservoirs within a byte budget, kept to retrain the head
//! with another algorithm (`cmd/algorithm`) and to evaluate.

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::cbor::{self, F32Slice, F32s};

/// One class's reservoir.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Reservoir {
    /// Samples of this class ever offered.
    seen: u64,
    /// Kept embeddings, flattened (`dim` values each).
    data: Vec<f32>,
}

/// Per-class reservoir samples (Vitter's algorithm R) under a total byte budget, shared equally
/// among the classes: every class keeps a uniform random subset of what it was taught.
#[derive(Debug, Clone)]
pub struct SampleStore {
    dim: usize,
    budget_bytes: u64,
    classes: BTreeMap<String, Reservoir>,
    rng: SmallRng,
}

#[derive(Deserialize)]
struct Persisted {
    dim: usize,
    classes: BTreeMap<String, (u64, F32s)>,
}

/// What [`Persisted`] reads, written from borrowed data: a snapshot must not copy the whole
/// reservoir (up to `state.samples_max_bytes`) to serialize it.
#[derive(Serialize)]
struct PersistedRef<'a> {
    dim: usize,
    classes: BTreeMap<&'a str, (u64, F32Slice<'a>)>,
}

impl SampleStore {
    /// An empty store for embeddings of `dim` values.
    pub fn new(dim: usize, budget_bytes: u64, seed: u64) -> SampleStore {
        SampleStore {
            dim,
            budget_bytes,
            classes: BTreeMap::new(),
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// Most samples each class may keep with the current number of classes.
    pub fn per_class_cap(&self) -> usize {
        let classes = self.classes.len().max(1) as u64;
        let per_sample = (self.dim as u64 * 4).max(1);
        ((self.budget_bytes / per_sample) / classes) as usize
    }

    /// Offers one sample; it is kept with probability cap / seen.
    pub fn add(&mut self, label: &str, x: &[f32]) {
        if x.len() != self.dim {
            return;
        }
        if !self.classes.contains_key(label) {
            self.classes.insert(label.to_string(), Reservoir::default());
            self.shrink();
        }
        let cap = self.per_class_cap();
        let dim = self.dim;
        let draw = self.rng.gen::<u64>();
        let Some(r) = self.classes.get_mut(label) else {
            return;
        };
        r.seen += 1;
        let kept = r.data.len() / dim;
        if kept < cap {
            if r.data.capacity() < r.data.len() + dim {
                // Grow geometrically but never past the cap: a full reservoir holds no slack.
                let want = (kept * 2).clamp(kept + 1, cap) * dim;
                r.data.reserve_exact(want - r.data.len());
            }
            r.data.extend_from_slice(x);
        } else if cap > 0 {
            let j = (draw % r.seen) as usize;
            if j < cap {
                r.data[j * dim..(j + 1) * dim].copy_from_slice(x);
            }
        }
    }

    /// Drops random samples of every class down to the current cap.
    fn shrink(&mut self) {
        let cap = self.per_class_cap();
        let dim = self.dim;
        for r in self.classes.values_mut() {
            let kept = r.data.len() / dim;
            if kept > cap {
                // The kept set is a uniform sample: dropping its tail keeps it uniform only if
                // the order is random, so shuffle the survivors in first.
                for i in 0..cap {
                    let j = self.rng.gen_range(i..kept);
                    if i != j {
                        for k in 0..dim {
                            r.data.swap(i * dim + k, j * dim + k);
                        }
                    }
                }
                r.data.truncate(cap * dim);
                r.data.shrink_to_fit();
            }
        }
    }

    /// Removes one sample taught under `label` (`cmd/unlearn`): its copy, if kept (the first
    /// with the same bits), leaves the reservoir, and the class counts one sample less seen; a
    /// class with nothing left disappears. True if a copy was kept.
    pub fn remove(&mut self, label: &str, x: &[f32]) -> bool {
        let dim = self.dim;
        let Some(r) = self.classes.get_mut(label) else {
            return false;
        };
        r.seen = r.seen.saturating_sub(1);
        let found = r
            .data
            .chunks_exact(dim)
            .position(|c| crate::state::ledger::same_bits(c, x));
        if let Some(i) = found {
            // Move the last kept sample into the hole: the kept set stays a uniform sample.
            let last = r.data.len() / dim - 1;
            if i != last {
                r.data.copy_within(last * dim..(last + 1) * dim, i * dim);
            }
            r.data.truncate(last * dim);
        }
        r.seen = r.seen.max((r.data.len() / dim) as u64);
        if r.seen == 0 {
            self.classes.remove(label);
        }
        found.is_some()
    }

    /// Removes a class.
    pub fn forget(&mut self, label: &str) {
        self.classes.remove(label);
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.classes.clear();
    }

    /// Number of kept samples.
    pub fn len(&self) -> usize {
        self.classes.values().map(|r| r.data.len() / self.dim).sum()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Kept samples as (label, embedding), class by class.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[f32])> {
        self.classes
            .iter()
            .flat_map(move |(l, r)| r.data.chunks_exact(self.dim).map(move |x| (l.as_str(), x)))
    }

    /// Serializes (CBOR), into a buffer of exactly the encoded size and without copying the
    /// samples first: the only transient allocation of a snapshot's samples.
    pub fn to_bytes(&self) -> Vec<u8> {
        let p = PersistedRef {
            dim: self.dim,
            classes: self
                .classes
                .iter()
                .map(|(l, r)| (l.as_str(), (r.seen, F32Slice(&r.data))))
                .collect(),
        };
        // Writing CBOR into memory cannot fail.
        cbor::to_vec_exact(&p).unwrap_or_default()
    }

    /// Bytes held for kept samples (capacity, not only length).
    pub fn heap_bytes(&self) -> usize {
        self.classes
            .values()
            .map(|r| r.data.capacity() * std::mem::size_of::<f32>())
            .sum()
    }

    /// Restores from `to_bytes` output; anything inconsistent with `dim` is an error.
    pub fn from_bytes(
        bytes: &[u8],
        dim: usize,
        budget_bytes: u64,
        seed: u64,
    ) -> Result<SampleStore, String> {
        let mut store = SampleStore::new(dim, budget_bytes, seed);
        if bytes.is_empty() {
            return Ok(store);
        }
        let p: Persisted =
            ciborium::from_reader(bytes).map_err(|e| format!("stored samples: {e}"))?;
        if p.dim != dim {
            return Err(format!(
                "stored samples have dimension {}, expected {dim}",
                p.dim
            ));
        }
        for (label, (seen, data)) in p.classes {
            if data.0.len() % dim != 0 || data.0.iter().any(|v| !v.is_finite()) {
                return Err(format!("stored samples of {label:?} are malformed"));
            }
            store
                .classes
                .insert(label, Reservoir { seen, data: data.0 });
        }
        store.shrink();
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservoir_respects_budget_and_round_trips() {
        // budget for 40 samples of dim 4
        let mut s = SampleStore::new(4, 40 * 16, 1);
        for i in 0..100 {
            s.add("a", &[i as f32; 4]);
        }
        assert_eq!(s.len(), 40);
        s.add("b", &[1.0; 4]);
        assert_eq!(s.per_class_cap(), 20);
        assert_eq!(s.len(), 21);
        let back = SampleStore::from_bytes(&s.to_bytes(), 4, 40 * 16, 1).expect("load");
        assert_eq!(back.len(), 21);
        let a: Vec<_> = back.iter().filter(|(l, _)| *l == "a").collect();
        assert_eq!(a.len(), 20);
        s.forget("a");
        assert_eq!(s.len(), 1);
        assert!(SampleStore::from_bytes(&s.to_bytes(), 5, 100, 1).is_err());
        assert!(SampleStore::from_bytes(b"\xff\x00", 4, 100, 1).is_err());
    }

    #[test]
    fn a_full_reservoir_holds_no_growth_slack() {
        // 1000 samples of dim 8 fit; 3000 offered to one class: exactly 1000 kept.
        let mut s = SampleStore::new(8, 1000 * 32, 3);
        for i in 0..3000 {
            s.add("a", &[i as f32; 8]);
        }
        assert_eq!(s.len(), 1000);
        assert_eq!(s.heap_bytes(), 1000 * 32);
        // The old encoding (an owned copy) and the borrowed one are the same bytes.
        let old = Persisted {
            dim: 8,
            classes: s
                .classes
                .iter()
                .map(|(l, r)| (l.clone(), (r.seen, F32s(r.data.clone()))))
                .collect(),
        };
        let mut old_bytes = Vec::new();
        ciborium::into_writer(&OldPersisted(&old), &mut old_bytes).expect("encode");
        assert_eq!(s.to_bytes(), old_bytes);
    }

    /// What the writer produced when it serialized an owned copy: the format must not change.
    struct OldPersisted<'a>(&'a Persisted);
    impl Serialize for OldPersisted<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeStruct;
            let mut st = s.serialize_struct("Persisted", 2)?;
            st.serialize_field("dim", &self.0.dim)?;
            st.serialize_field("classes", &self.0.classes)?;
            st.end()
        }
    }

    #[test]
    fn removing_a_sample_takes_its_copy_out() {
        let mut s = SampleStore::new(2, 1000, 1);
        s.add("a", &[1.0, 2.0]);
        s.add("a", &[3.0, 4.0]);
        s.add("b", &[5.0, 6.0]);
        assert!(!s.remove("a", &[5.0, 6.0]), "not of this class");
        assert!(s.remove("a", &[1.0, 2.0]));
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [("a", &[3.0, 4.0][..]), ("b", &[5.0, 6.0][..])]
        );
        assert!(s.remove("b", &[5.0, 6.0]));
        assert!(
            !s.remove("b", &[5.0, 6.0]),
            "the class is gone with its last sample"
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s.classes.len(), 1);
    }

    #[test]
    fn reservoir_is_roughly_uniform() {
        let mut s = SampleStore::new(1, 100 * 4, 7);
        for i in 0..1000 {
            s.add("a", &[i as f32]);
        }
        let mean: f32 = s.iter().map(|(_, x)| x[0]).sum::<f32>() / s.len() as f32;
        assert!((mean - 500.0).abs() < 100.0, "mean {mean}");
    }
}
