//! The training record: how well the board predicted each labeled sample just before learning
//! it (prequential accuracy), overall, over the last [`RECENT`] samples, and per class with a
//! Wilson lower bound that says when a class has had enough examples. It answers "have I
//! taught it enough?" (docs/homeassistant.md); kept in the state directory as `training.json`.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Labeled samples in the overall recent accuracy.
pub const RECENT: usize = 50;
/// Labeled samples per class in the class's recent accuracy and its "enough?" bound: recent,
/// because a class's accuracy grows with its examples and its early misses say little about
/// the head it has now.
pub const CLASS_RECENT: usize = 20;
/// z of the one-sided 95% Wilson lower bound.
const Z: f64 = 1.645;
/// A class is "enough" when the lower bound of its recent accuracy reaches this: ten right in a
/// row (lower bound 0.79), or 19 of its last 20 (0.80), but not 5 of 5 (0.65).
pub const ENOUGH_LOWER: f64 = 0.75;

/// The record of one class.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct ClassRecord {
    tested: u64,
    correct: u64,
    /// The last [`CLASS_RECENT`] outcomes, oldest first.
    recent: VecDeque<bool>,
}

/// The whole record (persisted as JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    tested: u64,
    correct: u64,
    /// The last [`RECENT`] outcomes, oldest first.
    recent: VecDeque<bool>,
    classes: BTreeMap<String, ClassRecord>,
}

fn push(q: &mut VecDeque<bool>, cap: usize, v: bool) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(v);
}

fn ratio(correct: u64, tested: u64) -> Option<f64> {
    (tested > 0).then(|| correct as f64 / tested as f64)
}

fn hits(q: &VecDeque<bool>) -> u64 {
    q.iter().filter(|&&c| c).count() as u64
}

/// The one-sided Wilson score lower bound of a proportion of `correct` in `n` at [`Z`].
pub fn wilson_lower(correct: u64, n: u64) -> Option<f64> {
    if n == 0 {
        return None;
    }
    let (n, p, z2) = (n as f64, correct as f64 / n as f64, Z * Z);
    let centre = p + z2 / (2.0 * n);
    let spread = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((centre - spread) / (1.0 + z2 / n)).max(0.0))
}

/// `head.training` in `{root}/info`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Labeled samples predicted before they were learned (a class's first sample is not: it
    /// cannot be right).
    pub tested: u64,
    pub correct: u64,
    /// `correct / tested`, `null` before any.
    pub accuracy: Option<f64>,
    pub recent: Recent,
    /// Classes whose [`ClassSummary::enough`] is true.
    pub ready: usize,
    /// The threshold of the lower bound for `enough`.
    pub enough_lower: f64,
    pub classes: Vec<ClassSummary>,
}

/// The overall recent accuracy.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Recent {
    pub window: usize,
    pub tested: usize,
    pub accuracy: Option<f64>,
}

/// One class in [`Summary`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassSummary {
    pub name: String,
    pub tested: u64,
    pub accuracy: Option<f64>,
    /// Outcomes in the class's recent window (at most [`CLASS_RECENT`]).
    pub recent_tested: usize,
    pub recent_accuracy: Option<f64>,
    /// One-sided 95% Wilson lower bound of the recent accuracy.
    pub lower: Option<f64>,
    /// `lower >= enough_lower`: more examples of this class are unlikely to be needed.
    pub enough: bool,
}

impl Record {
    /// Records whether the sample of class `label` was predicted right.
    pub fn observe(&mut self, label: &str, correct: bool) {
        self.tested += 1;
        self.correct += u64::from(correct);
        push(&mut self.recent, RECENT, correct);
        let c = self.classes.entry(label.to_string()).or_default();
        c.tested += 1;
        c.correct += u64::from(correct);
        push(&mut c.recent, CLASS_RECENT, correct);
    }

    /// A class was forgotten: its record goes (the overall counts keep what happened).
    pub fn forget(&mut self, label: &str) {
        self.classes.remove(label);
    }

    /// The head was emptied or replaced: the record starts again.
    pub fn clear(&mut self) {
        *self = Record::default();
    }

    /// The summary over the head's classes, in their order (a class without outcomes has
    /// `tested` 0 and is not enough).
    pub fn summary<'a>(&self, classes: impl Iterator<Item = &'a str>) -> Summary {
        let classes: Vec<ClassSummary> = classes
            .map(|name| {
                let c = self.classes.get(name).cloned().unwrap_or_default();
                let n = c.recent.len();
                let h = hits(&c.recent);
                let lower = wilson_lower(h, n as u64);
                ClassSummary {
                    name: name.to_string(),
                    tested: c.tested,
                    accuracy: ratio(c.correct, c.tested),
                    recent_tested: n,
                    recent_accuracy: ratio(h, n as u64),
                    lower,
                    enough: lower.is_some_and(|l| l >= ENOUGH_LOWER),
                }
            })
            .collect();
        Summary {
            tested: self.tested,
            correct: self.correct,
            accuracy: ratio(self.correct, self.tested),
            recent: Recent {
                window: RECENT,
                tested: self.recent.len(),
                accuracy: ratio(hits(&self.recent), self.recent.len() as u64),
            },
            ready: classes.iter().filter(|c| c.enough).count(),
            enough_lower: ENOUGH_LOWER,
            classes,
        }
    }

    /// Reads the record from `path`; a missing or unreadable file is an empty record (it is a
    /// statistic, not state that anything depends on).
    pub fn load(path: &Path) -> Record {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("{}: {e}; the training record starts again", path.display());
                Record::default()
            }),
            Err(_) => Record::default(),
        }
    }

    /// Writes the record to `path` atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::state::files::write_atomic(path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_bounds_match_the_formula() {
        assert_eq!(wilson_lower(0, 0), None);
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-3;
        assert!(
            close(wilson_lower(10, 10), 0.787),
            "{:?}",
            wilson_lower(10, 10)
        );
        assert!(
            close(wilson_lower(19, 20), 0.804),
            "{:?}",
            wilson_lower(19, 20)
        );
        assert!(close(wilson_lower(5, 5), 0.649), "{:?}", wilson_lower(5, 5));
        assert!(close(wilson_lower(0, 5), 0.0));
        // More evidence for the same proportion raises the bound.
        assert!(wilson_lower(8, 10) < wilson_lower(16, 20));
    }

    #[test]
    fn a_class_is_enough_after_a_run_of_right_answers() {
        let mut r = Record::default();
        r.observe("cat", false);
        for _ in 0..9 {
            r.observe("cat", true);
        }
        r.observe("dog", true);
        let s = r.summary(["cat", "dog", "bird"].into_iter());
        assert_eq!((s.tested, s.correct), (11, 10));
        let cat = &s.classes[0];
        assert_eq!((cat.tested, cat.recent_tested), (10, 10));
        assert!(!cat.enough, "9 of 10 is not enough: {cat:?}");
        for _ in 0..10 {
            r.observe("cat", true);
        }
        let s = r.summary(["cat", "dog", "bird"].into_iter());
        // 19 of the last 20.
        assert!(s.classes[0].enough, "{:?}", s.classes[0]);
        assert!(!s.classes[1].enough);
        assert_eq!(s.classes[2].tested, 0);
        assert_eq!(s.classes[2].accuracy, None);
        assert_eq!(s.ready, 1);
        assert_eq!(s.recent.tested, 21);
        // The recent window slides.
        for _ in 0..RECENT {
            r.observe("dog", false);
        }
        let s = r.summary(["cat", "dog"].into_iter());
        assert_eq!(s.recent.accuracy, Some(0.0));
        assert_eq!(s.classes[1].recent_tested, CLASS_RECENT);
        r.forget("cat");
        assert_eq!(r.summary(["cat"].into_iter()).classes[0].tested, 0);
    }

    #[test]
    fn it_survives_a_round_trip_and_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("training.json");
        assert_eq!(Record::load(&path), Record::default());
        let mut r = Record::default();
        r.observe("a", true);
        r.observe("b", false);
        r.save(&path).unwrap();
        assert_eq!(Record::load(&path), r);
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(Record::load(&path), Record::default());
    }
}
