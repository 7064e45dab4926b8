//! Startup recovery: the learner's state rebuilt from the state directory (the last snapshot,
//! or the newest kept head, plus the write-ahead log replayed), with notes on what was found.

use std::collections::{HashSet, VecDeque};

use crate::head::{Expect, Head, HeadConfig};
use crate::state::ledger::Ledger;
use crate::state::samples::SampleStore;
use crate::state::store::{Recovered, UnlearnRecord, WalRecord};

/// Message keys remembered to drop broker redeliveries.
const DEDUP_KEYS: usize = 8192;

/// Recently learned message keys (bounded).
#[derive(Debug, Default)]
pub struct Dedup {
    order: VecDeque<[u8; 16]>,
    set: HashSet<[u8; 16]>,
}

impl Dedup {
    /// Remembers a key (the oldest is forgotten past the bound).
    pub fn insert(&mut self, k: [u8; 16]) {
        if self.set.insert(k) {
            self.order.push_back(k);
            if self.order.len() > DEDUP_KEYS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
    /// Whether the key was learned recently.
    pub fn contains(&self, k: &[u8; 16]) -> bool {
        self.set.contains(k)
    }

    /// The keys, oldest first (what a snapshot keeps).
    pub fn keys(&self) -> impl Iterator<Item = &[u8; 16]> {
        self.order.iter()
    }
}

/// The head and samples rebuilt from the state directory.
pub struct Restored {
    pub head: Head,
    pub samples: SampleStore,
    /// Learned samples by id, for unlearning.
    pub ledger: Ledger,
    pub dedup: Dedup,
    /// Human-readable notes on what recovery found (torn WAL, corrupt snapshot).
    pub notes: Vec<String>,
}

/// Byte budgets of what the state directory keeps besides the head.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    /// `state.samples_max_bytes`: the reservoir.
    pub samples: u64,
    /// `state.unlearn_max_bytes`: the ledger.
    pub ledger: u64,
}

/// Rebuilds the learner state: snapshot (or fallback head) + WAL replay.
pub fn restore(
    rec: Recovered,
    config: &HeadConfig,
    dim: usize,
    sha256: &str,
    budgets: Budgets,
) -> anyhow::Result<Restored> {
    let samples_budget = budgets.samples;
    let expect = Expect {
        backbone_sha256: Some(sha256),
        dim: Some(dim),
        max_bytes: usize::MAX,
    };
    let mut notes = Vec::new();
    let mut dedup = Dedup::default();
    let (mut head, mut samples, mut ledger) = match &rec.snapshot {
        Some(s) => {
            let head = if s.head.0.is_empty() {
                Head::new(config, dim, sha256)
            } else {
                Head::from_bytes(&s.head.0, &expect).map_err(|e| {
                    anyhow::anyhow!(
                        "the state directory holds a head this model cannot use ({e}); \
                         restore the model it was trained with, or move the state directory \
                         aside to start afresh"
                    )
                })?
            };
            let samples = SampleStore::from_bytes(&s.samples.0, dim, samples_budget, config.seed)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for k in &s.dedup {
                dedup.insert(*k);
            }
            let ledger = Ledger::from_bytes(&s.ledger.0, dim, budgets.ledger)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            (head, samples, ledger)
        }
        None => {
            let head = match &rec.fallback_head {
                Some(bytes) => Head::from_bytes(bytes, &expect)
                    .map_err(|e| anyhow::anyhow!("fallback head: {e}"))?,
                None => Head::new(config, dim, sha256),
            };
            (
                head,
                SampleStore::new(dim, samples_budget, config.seed),
                Ledger::new(budgets.ledger),
            )
        }
    };
    if let Some(c) = &rec.corrupt_snapshot {
        notes.push(c.clone());
    }
    if rec.torn_bytes > 0 {
        notes.push(format!(
            "cut {} bytes of torn or corrupt write-ahead log tail (never acknowledged)",
            rec.torn_bytes
        ));
    }
    if rec.removed_temp_files > 0 {
        notes.push(format!("removed {} temp file(s)", rec.removed_temp_files));
    }
    let replayed = rec.records.len();
    for r in rec.records {
        let r = match r {
            WalRecord::Learn(r) => r,
            WalRecord::Unlearn(u) => {
                if let Some(k) = u.key {
                    dedup.insert(k);
                }
                if let Err(e) = replay_unlearn(&u, &mut head, &mut samples, &mut ledger) {
                    // Only a fallback head (the snapshot was corrupt) can lack the sample.
                    notes.push(format!("skipped WAL removal record {}: {e}", u.seq));
                }
                continue;
            }
        };
        head.update(&r.embedding.0, &r.label)
            .map_err(|e| anyhow::anyhow!("replaying WAL record {}: {e}", r.seq))?;
        samples.add(&r.label, &r.embedding.0);
        if let Some(id) = &r.id {
            ledger.insert(id, &r.label, &r.embedding.0);
        }
        if let Some(k) = r.key {
            dedup.insert(k);
        }
    }
    if replayed > 0 {
        notes.push(format!("replayed {replayed} write-ahead log record(s)"));
    }
    Ok(Restored {
        head,
        samples,
        ledger,
        dedup,
        notes,
    })
}

/// Applies a logged removal (and, for a relabel, the new label) as the learner did: all of it
/// or, on error, nothing.
fn replay_unlearn(
    u: &UnlearnRecord,
    head: &mut Head,
    samples: &mut SampleStore,
    ledger: &mut Ledger,
) -> Result<(), crate::head::HeadError> {
    let x = &u.embedding.0;
    *head = head_without(head, x, &u.from, u.to.as_deref())?;
    stores_without(samples, ledger, &u.unlearn, &u.from, u.to.as_deref(), x);
    Ok(())
}

/// The head without the sample `x` learned under `from` (a relabel: learned under `to`
/// instead), computed on a copy so that an error changes nothing. `cmd/unlearn`,
/// `cmd/relabel` and their replay.
pub fn head_without(
    head: &Head,
    x: &[f32],
    from: &str,
    to: Option<&str>,
) -> Result<Head, crate::head::HeadError> {
    let mut next = head.clone();
    next.unlearn(x, from)?;
    if let Some(to) = to {
        next.update(x, to)?;
    }
    Ok(next)
}

/// The stored samples and the ledger after the removal [`head_without`] made in the head: the
/// reservoir's copy and the ledger's entry of `id` leave `from` (and come back under `to`).
pub fn stores_without(
    samples: &mut SampleStore,
    ledger: &mut Ledger,
    id: &str,
    from: &str,
    to: Option<&str>,
    x: &[f32],
) {
    samples.remove(from, x);
    ledger.remove_exact(id, from, x);
    if let Some(to) = to {
        samples.add(to, x);
        ledger.insert(id, to, x);
    }
}
