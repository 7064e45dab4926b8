//! `adaptd eval --open-set`: hold out some classes as unknowns, teach the others in one
//! seeded pass (as the daemon would, snapshots taken along the way so the head calibrates its
//! own threshold), then score the test split: how well the novelty score separates unknown
//! from known inputs (AUROC), and what the calibrated threshold does (known inputs rejected,
//! unknown inputs caught, accuracy on the known classes). See docs/learners.md, "Open set".

use anyhow::{Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use super::prequential::Data;
use crate::head::{Algorithm, Head, HeadConfig};

/// One learner, averaged over the class splits.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OpenSetResult {
    pub learner: String,
    /// Splits measured (each a different seeded set of unknown classes).
    pub splits: usize,
    /// Area under the ROC curve of the novelty score, unknown inputs as positives.
    pub auroc: f64,
    /// Known-class test inputs whose prediction said `known: false` (target: `open_set_frr`).
    pub false_rejection: f64,
    /// Unknown-class test inputs whose prediction said `known: false`.
    pub unknown_caught: f64,
    /// Accuracy on known-class inputs, ignoring the open set (closed-set accuracy).
    pub known_accuracy: f64,
    /// Accuracy on known-class inputs counting a rejection as an error.
    pub known_accuracy_open: f64,
    /// Accuracy on all test inputs, where the right answer for an unknown input is the
    /// unknown label.
    pub open_accuracy: f64,
    /// Splits where the head never calibrated (fewer scored samples than needed).
    pub uncalibrated: usize,
}

/// The report of `--open-set`.
#[derive(Debug, Clone, Serialize)]
pub struct OpenSetReport {
    pub dataset: String,
    pub classes: usize,
    /// Classes held out as unknown in each split.
    pub unknown_classes: usize,
    pub open_set_frr: f64,
    pub seed: u64,
    pub results: Vec<OpenSetResult>,
}

impl OpenSetReport {
    /// A text table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{}: {} classes, {} held out as unknown per split, target false rejection {:.3}\n",
            self.dataset, self.classes, self.unknown_classes, self.open_set_frr
        );
        s.push_str(
            "learner  splits  AUROC  false-rej  unknown-caught  known-acc  known-acc(open)  open-acc\n",
        );
        for r in &self.results {
            s.push_str(&format!(
                "{:<8} {:>6}  {:.3}  {:>9.3}  {:>14.3}  {:>9.3}  {:>15.3}  {:>8.3}{}\n",
                r.learner,
                r.splits,
                r.auroc,
                r.false_rejection,
                r.unknown_caught,
                r.known_accuracy,
                r.known_accuracy_open,
                r.open_accuracy,
                if r.uncalibrated > 0 {
                    format!("  ({} uncalibrated)", r.uncalibrated)
                } else {
                    String::new()
                }
            ));
        }
        s
    }
}

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative (ties count half). 0.5 when either set is empty.
pub fn auroc(positives: &[f32], negatives: &[f32]) -> f64 {
    if positives.is_empty() || negatives.is_empty() {
        return 0.5;
    }
    let mut all: Vec<(f32, bool)> = positives
        .iter()
        .map(|&s| (s, true))
        .chain(negatives.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Mann-Whitney U with average ranks for ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0.total_cmp(&all[i].0).is_eq() {
            j += 1;
        }
        let avg = (i + j + 1) as f64 / 2.0;
        rank_sum += avg * all[i..j].iter().filter(|e| e.1).count() as f64;
        i = j;
    }
    let (p, n) = (positives.len() as f64, negatives.len() as f64);
    (rank_sum - p * (p + 1.0) / 2.0) / (p * n)
}

/// Runs every learner on `splits` seeded choices of `unknown` held-out classes.
pub fn run(
    data: &Data,
    learners: &[Algorithm],
    config: &HeadConfig,
    backbone: &str,
    unknown: usize,
    splits: usize,
    seed: u64,
) -> Result<Vec<OpenSetResult>> {
    let c = data.classes.len();
    anyhow::ensure!(
        c >= 3,
        "--open-set needs at least 3 classes (2 known, 1 unknown); the dataset has {c}"
    );
    let unknown = unknown.clamp(1, c - 2);
    let mut out = Vec::new();
    for &algorithm in learners {
        let mut acc = Vec::new();
        for s in 0..splits.max(1) {
            let mut order: Vec<usize> = (0..c).collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(s as u64));
            order.shuffle(&mut rng);
            let mut is_unknown = vec![false; c];
            for &k in &order[..unknown] {
                is_unknown[k] = true;
            }
            acc.push(
                one_split(data, algorithm, config, backbone, &is_unknown)
                    .with_context(|| format!("{algorithm}, split {s}"))?,
            );
        }
        let n = acc.len() as f64;
        let mean = |f: &dyn Fn(&Split) -> f64| acc.iter().map(f).sum::<f64>() / n;
        out.push(OpenSetResult {
            learner: algorithm.as_str().to_string(),
            splits: acc.len(),
            auroc: mean(&|r| r.auroc),
            false_rejection: mean(&|r| r.false_rejection),
            unknown_caught: mean(&|r| r.unknown_caught),
            known_accuracy: mean(&|r| r.known_accuracy),
            known_accuracy_open: mean(&|r| r.known_accuracy_open),
            open_accuracy: mean(&|r| r.open_accuracy),
            uncalibrated: acc.iter().filter(|r| !r.calibrated).count(),
        });
    }
    Ok(out)
}

struct Split {
    auroc: f64,
    false_rejection: f64,
    unknown_caught: f64,
    known_accuracy: f64,
    known_accuracy_open: f64,
    open_accuracy: f64,
    calibrated: bool,
}

fn one_split(
    data: &Data,
    algorithm: Algorithm,
    config: &HeadConfig,
    backbone: &str,
    is_unknown: &[bool],
) -> Result<Split> {
    let config = HeadConfig {
        algorithm,
        ..config.clone()
    };
    let mut head = Head::new(&config, data.dim, backbone);
    let mut since = 0usize;
    let mut learned = 0usize;
    for (x, y) in data.train.iter().filter(|(_, y)| !is_unknown[*y]) {
        head.update(x, &data.classes[*y])
            .with_context(|| format!("learning a sample of {}", data.classes[*y]))?;
        learned += 1;
        since += 1;
        // Snapshots (and `auto`'s candidates) as the daemon takes them, often while the head
        // is small: the labeled samples that follow are scored with them.
        if since as f64 >= (0.05 * learned as f64).max(1.0) {
            if head.candidates_due() {
                head.refresh_candidates();
            }
            head.snapshot();
            since = 0;
        }
    }
    let predictor = head.snapshot();
    let threshold = predictor.threshold(config.open_set_frr);
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    let (mut known_n, mut known_right, mut known_right_open, mut rejected_known) = (0, 0, 0, 0);
    let (mut unknown_n, mut caught) = (0, 0);
    let mut calibrated = false;
    for (x, y) in &data.test {
        let p = predictor
            .predict(x, 1)
            .context("predicting a test sample")?;
        let novelty = p.novelty.unwrap_or(0.0);
        let known = p.known(threshold);
        let rejected = known == Some(false);
        calibrated |= known.is_some();
        if is_unknown[*y] {
            pos.push(novelty);
            unknown_n += 1;
            caught += usize::from(rejected);
        } else {
            neg.push(novelty);
            known_n += 1;
            let right = p.top.first().map(|s| s.label.as_str()) == Some(&data.classes[*y]);
            known_right += usize::from(right);
            known_right_open += usize::from(right && !rejected);
            rejected_known += usize::from(rejected);
        }
    }
    let frac = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(Split {
        auroc: auroc(&pos, &neg),
        false_rejection: frac(rejected_known, known_n),
        unknown_caught: frac(caught, unknown_n),
        known_accuracy: frac(known_right, known_n),
        known_accuracy_open: frac(known_right_open, known_n),
        open_accuracy: frac(known_right_open + caught, known_n + unknown_n),
        calibrated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_of_separated_tied_and_reversed_scores() {
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        assert_eq!(auroc(&[1.0, 1.0], &[1.0, 1.0]), 0.5);
        // One of four pairs wrong.
        assert_eq!(auroc(&[2.0, 4.0], &[1.0, 3.0]), 0.75);
        assert_eq!(auroc(&[], &[1.0]), 0.5);
    }
}
