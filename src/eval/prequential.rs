//! The learning benchmark of one learner: a single seeded pass over the training stream,
//! test-then-train (prequential), with held-out evaluations along the way (learning curve and
//! accuracy after k samples per class), update/predict timings and the head size.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::head::{Algorithm, Head, HeadConfig, Predictor};

/// Embedded, split data: class names, and samples as (embedding, class index).
#[derive(Debug, Clone)]
pub struct Data {
    /// Class names; a sample's class is an index into this.
    pub classes: Vec<String>,
    /// Embedding dimension.
    pub dim: usize,
    /// Training samples, in stream order.
    pub train: Vec<(Vec<f32>, usize)>,
    /// Held-out samples.
    pub test: Vec<(Vec<f32>, usize)>,
}

/// What to measure besides the final accuracy.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Report the test accuracy when every training class has reached k samples, for each k.
    pub shots: Vec<usize>,
    /// About how many learning-curve points (geometrically spaced in samples seen).
    pub curve_points: usize,
    /// For `slda` and `ridge` (whose snapshot solves a d × d system), the prequential
    /// predictor is refreshed once the samples learned since the last refresh reach
    /// `max(1, refresh_growth × samples seen)`; 0 refreshes after every sample. `ncm` and
    /// `sgd` are always refreshed after every sample.
    pub refresh_growth: f64,
    /// Backbone hash recorded in the heads.
    pub backbone_sha256: String,
    /// Head settings; `algorithm` and `standardize` are set per run.
    pub head: HeadConfig,
}

/// Median and mean of a set of timings.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Timing {
    /// Median, microseconds.
    pub median_us: f64,
    /// Mean, microseconds.
    pub mean_us: f64,
}

impl Timing {
    /// Summarizes durations in microseconds (zero for none).
    pub fn of(mut us: Vec<f64>) -> Timing {
        if us.is_empty() {
            return Timing::default();
        }
        us.sort_by(f64::total_cmp);
        let n = us.len();
        let median = if n % 2 == 1 {
            us[n / 2]
        } else {
            (us[n / 2 - 1] + us[n / 2]) / 2.0
        };
        Timing {
            median_us: median,
            mean_us: us.iter().sum::<f64>() / n as f64,
        }
    }
}

/// Test accuracy when every class had reached `k` training samples.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Shot {
    /// Samples per class.
    pub k: usize,
    /// Samples seen at that point (`None` if some class never reached `k`).
    pub samples: Option<usize>,
    /// Test accuracy there.
    pub accuracy: Option<f64>,
}

/// One point of the learning curve.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Point {
    /// Training samples learned.
    pub samples: usize,
    /// Test accuracy of the head at that point.
    pub accuracy: f64,
}

/// Everything measured for one learner configuration.
#[derive(Debug, Clone, Serialize)]
pub struct LearnerResult {
    /// `auto`, `ncm`, `slda`, `ridge` or `sgd`.
    pub learner: String,
    /// Whether the head standardized its inputs.
    pub standardize: bool,
    /// Test accuracy after the single pass over the training stream.
    pub accuracy: f64,
    /// `accuracy` / offline logistic regression accuracy, when a baseline was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_logreg: Option<f64>,
    /// Test accuracy after k samples per class.
    pub shots: Vec<Shot>,
    /// Fraction of training samples predicted right just before being learned.
    pub prequential_accuracy: f64,
    /// Prequential predictor refreshes (snapshots) during the pass.
    pub prequential_refreshes: usize,
    /// Cost of `Head::update`, per sample.
    pub update: Timing,
    /// Cost of `Predictor::predict(x, 1)` on the final snapshot, per test sample.
    pub predict: Timing,
    /// Cost of the last `Head::snapshot` (after the last sample), milliseconds.
    pub snapshot_ms: f64,
    /// `auto`: cost of the last refresh of its candidates (`Head::refresh_candidates`),
    /// milliseconds; 0 for the other learners.
    pub candidates_ms: f64,
    /// `Head::to_bytes().len()` of the final head.
    pub head_bytes: usize,
    /// Test accuracy vs samples seen.
    pub curve: Vec<Point>,
}

/// Geometrically spaced sample counts in `1..=n` (about `points` of them, always with `n`).
pub fn curve_schedule(n: usize, points: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let points = points.max(2);
    let mut v: Vec<usize> = (0..points)
        .map(|i| {
            let t = i as f64 / (points - 1) as f64;
            ((n as f64).powf(t).round() as usize).clamp(1, n)
        })
        .collect();
    v.push(n);
    v.sort_unstable();
    v.dedup();
    v
}

/// Maps a snapshot's label order to class indices.
struct Scorer {
    predictor: Predictor,
    to_class: Vec<usize>,
}

impl Scorer {
    fn new(predictor: Predictor, index: &HashMap<&str, usize>) -> Scorer {
        let to_class = predictor
            .labels()
            .iter()
            .map(|l| index.get(l.as_str()).copied().unwrap_or(usize::MAX))
            .collect();
        Scorer {
            predictor,
            to_class,
        }
    }

    /// The predicted class (ties: the lower class index of the snapshot), `None` if the head
    /// has no classes yet or the input cannot be scored.
    fn predict(&self, x: &[f32]) -> Option<usize> {
        let best = self.predictor.top1(x, &mut Vec::new())?;
        self.to_class.get(best).copied()
    }

    fn accuracy(&self, test: &[(Vec<f32>, usize)]) -> f64 {
        if test.is_empty() {
            return 0.0;
        }
        let right = test
            .iter()
            .filter(|(x, y)| self.predict(x) == Some(*y))
            .count();
        right as f64 / test.len() as f64
    }
}

/// Runs one learner over the data.
pub fn run(
    data: &Data,
    algorithm: Algorithm,
    standardize: bool,
    plan: &Plan,
) -> Result<LearnerResult> {
    let config = HeadConfig {
        algorithm,
        standardize,
        ..plan.head.clone()
    };
    let index: HashMap<&str, usize> = data
        .classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let mut head = Head::new(&config, data.dim, &plan.backbone_sha256);
    let n = data.train.len();
    let schedule = curve_schedule(n, plan.curve_points);
    let mut next_point = 0;
    // Classes present in the training split and the samples seen of each.
    let mut present = vec![false; data.classes.len()];
    for (_, y) in &data.train {
        present[*y] = true;
    }
    let mut seen = vec![0usize; data.classes.len()];
    let mut shots: Vec<Shot> = plan
        .shots
        .iter()
        .map(|&k| Shot {
            k,
            samples: None,
            accuracy: None,
        })
        .collect();
    let cheap = matches!(algorithm, Algorithm::Ncm | Algorithm::Sgd);
    let mut scorer: Option<Scorer> = None;
    let mut since_refresh = 0usize;
    let mut refreshes = 0usize;
    let mut right = 0usize;
    let mut update_us = Vec::with_capacity(n);
    let mut curve = Vec::with_capacity(schedule.len());
    let mut snapshot_ms = 0.0;
    let mut candidates_ms = 0.0;
    for (t, (x, y)) in data.train.iter().enumerate() {
        // Test…
        if scorer.as_ref().and_then(|s| s.predict(x)) == Some(*y) {
            right += 1;
        }
        // …then train.
        let started = Instant::now();
        head.update(x, &data.classes[*y])
            .with_context(|| format!("learning sample {t} ({})", data.classes[*y]))?;
        update_us.push(started.elapsed().as_secs_f64() * 1e6);
        seen[*y] += 1;
        since_refresh += 1;
        let learned = t + 1;
        let min_seen = seen
            .iter()
            .zip(&present)
            .filter(|(_, &p)| p)
            .map(|(s, _)| *s)
            .min()
            .unwrap_or(0);
        let on_curve = schedule.get(next_point) == Some(&learned);
        let new_shots: Vec<usize> = shots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.samples.is_none() && min_seen >= s.k)
            .map(|(i, _)| i)
            .collect();
        let due = cheap
            || since_refresh as f64 >= (plan.refresh_growth * learned as f64).max(1.0)
            || plan.refresh_growth <= 0.0;
        if on_curve || !new_shots.is_empty() || due {
            // `auto`'s candidates, as the daemon refreshes them (when due).
            if head.candidates_due() {
                let started = Instant::now();
                head.refresh_candidates();
                candidates_ms = started.elapsed().as_secs_f64() * 1e3;
            }
            // Every update drops the head's cached snapshot, so this is a full computation.
            let started = Instant::now();
            let predictor = head.snapshot();
            snapshot_ms = started.elapsed().as_secs_f64() * 1e3;
            let s = Scorer::new(predictor, &index);
            refreshes += 1;
            since_refresh = 0;
            if on_curve || !new_shots.is_empty() {
                let accuracy = s.accuracy(&data.test);
                if on_curve {
                    curve.push(Point {
                        samples: learned,
                        accuracy,
                    });
                    next_point += 1;
                }
                for i in new_shots {
                    shots[i].samples = Some(learned);
                    shots[i].accuracy = Some(accuracy);
                }
            }
            scorer = Some(s);
        }
    }
    // The final head (its snapshot was taken and timed at the last curve point): accuracy,
    // prediction cost, size.
    let predictor = head.snapshot();
    let mut predict_us = Vec::with_capacity(data.test.len());
    for (x, _) in &data.test {
        let started = Instant::now();
        let p = predictor.predict(x, 1);
        predict_us.push(started.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(p.ok());
    }
    let accuracy = Scorer::new(predictor, &index).accuracy(&data.test);
    let head_bytes = head.to_bytes().context("encoding the head")?.len();
    Ok(LearnerResult {
        learner: algorithm.as_str().to_string(),
        standardize,
        accuracy,
        ratio_to_logreg: None,
        shots,
        prequential_accuracy: if n == 0 { 0.0 } else { right as f64 / n as f64 },
        prequential_refreshes: refreshes,
        update: Timing::of(update_us),
        predict: Timing::of(predict_us),
        snapshot_ms,
        candidates_ms,
        head_bytes,
        curve,
    })
}

/// The fraction of `samples` (embedding, class index into `classes`) the head's snapshot
/// classifies right (0 for none).
pub fn accuracy_on(head: &Head, samples: &[(Vec<f32>, usize)], classes: &[String]) -> f64 {
    let p = head.snapshot();
    let mut z = Vec::new();
    let right = samples
        .iter()
        .filter(|(x, y)| {
            p.top1(x, &mut z)
                .and_then(|i| p.labels().get(i))
                .is_some_and(|l| *l == classes[*y])
        })
        .count();
    right as f64 / samples.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::super::data::Rng;
    use super::*;

    /// `per_class` samples of `classes` Gaussian blobs in `dim` dimensions: centers ~ N(0, 1)
    /// per dimension, noise σ = `noise`; returned in a seeded random order.
    pub(crate) fn blobs(
        classes: usize,
        per_class: usize,
        dim: usize,
        noise: f64,
        seed: u64,
    ) -> Vec<(Vec<f32>, usize)> {
        let mut rng = Rng::new(seed, 99);
        let centers: Vec<Vec<f64>> = (0..classes)
            .map(|_| (0..dim).map(|_| rng.normal()).collect())
            .collect();
        let mut out = Vec::new();
        for (c, center) in centers.iter().enumerate() {
            for _ in 0..per_class {
                let x = center
                    .iter()
                    .map(|m| (m + noise * rng.normal()) as f32)
                    .collect();
                out.push((x, c));
            }
        }
        rng.shuffle(&mut out);
        out
    }

    fn data(noise: f64, seed: u64) -> Data {
        let all = blobs(4, 40, 16, noise, seed);
        let (test, train) = all.split_at(40);
        Data {
            classes: (0..4).map(|c| format!("c{c}")).collect(),
            dim: 16,
            train: train.to_vec(),
            test: test.to_vec(),
        }
    }

    fn plan() -> Plan {
        Plan {
            shots: vec![1, 5, 10],
            curve_points: 20,
            refresh_growth: 0.05,
            backbone_sha256: "0".repeat(64),
            head: HeadConfig::default(),
        }
    }

    #[test]
    fn schedule_is_geometric_and_ends_at_n() {
        assert!(curve_schedule(0, 20).is_empty());
        assert_eq!(curve_schedule(1, 20), vec![1]);
        let s = curve_schedule(1000, 20);
        assert_eq!((s[0], *s.last().unwrap()), (1, 1000));
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!((15..=20).contains(&s.len()), "{s:?}");
        assert_eq!(curve_schedule(5, 20), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn timing_summaries() {
        assert_eq!(Timing::of(vec![]), Timing::default());
        let t = Timing::of(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!(t.median_us, 2.5);
        assert_eq!(t.mean_us, 4.0);
        assert_eq!(Timing::of(vec![5.0, 1.0, 3.0]).median_us, 3.0);
    }

    #[test]
    fn separated_blobs_are_learned_by_every_learner() {
        let d = data(0.2, 1);
        for algorithm in Algorithm::ALL {
            for standardize in [false, true] {
                let r = run(&d, algorithm, standardize, &plan()).unwrap();
                assert!(
                    r.accuracy >= 0.95,
                    "{algorithm} {standardize}: {}",
                    r.accuracy
                );
                // 120 training samples, 4 of them necessarily wrong (first of each class).
                assert!(
                    r.prequential_accuracy >= 0.85,
                    "{algorithm} {standardize}: prequential {}",
                    r.prequential_accuracy
                );
                assert!(r.prequential_accuracy <= 116.0 / 120.0 + 1e-9);
                let last = r.curve.last().unwrap();
                assert_eq!((last.samples, last.accuracy), (120, r.accuracy));
                assert_eq!(r.curve[0].samples, 1);
                for s in &r.shots {
                    let n = s.samples.unwrap();
                    assert!(n >= 4 * s.k, "{s:?}");
                    assert!(s.accuracy.is_some());
                }
                assert!(r.head_bytes > 0);
                assert!(r.update.median_us > 0.0 && r.predict.median_us > 0.0);
                assert_eq!(r.learner, algorithm.as_str());
            }
        }
    }

    #[test]
    fn same_seed_same_result() {
        let a = run(&data(1.5, 3), Algorithm::Sgd, false, &plan()).unwrap();
        let b = run(&data(1.5, 3), Algorithm::Sgd, false, &plan()).unwrap();
        assert_eq!(a.accuracy, b.accuracy);
        assert_eq!(a.prequential_accuracy, b.prequential_accuracy);
        assert_eq!(a.curve, b.curve);
        assert_eq!(a.shots, b.shots);
        assert_eq!(a.head_bytes, b.head_bytes);
    }

    #[test]
    fn unreachable_shots_and_unknown_test_classes() {
        let mut d = data(0.2, 5);
        // A test-only class: its samples are always wrong; k = 100 is never reached.
        d.classes.push("only-in-test".into());
        d.test.push((vec![0.0; 16], 4));
        let mut p = plan();
        p.shots = vec![1, 100];
        let r = run(&d, Algorithm::Ncm, false, &p).unwrap();
        assert!(r.accuracy < 1.0);
        assert_eq!(
            r.shots[1],
            Shot {
                k: 100,
                samples: None,
                accuracy: None
            }
        );
        assert!(r.shots[0].samples.is_some());
    }

    #[test]
    fn refresh_growth_limits_solver_snapshots() {
        let d = data(0.2, 2);
        let mut p = plan();
        p.refresh_growth = 0.0;
        let every = run(&d, Algorithm::Ridge, false, &p).unwrap();
        assert_eq!(every.prequential_refreshes, 120);
        p.refresh_growth = 0.25;
        let sparse = run(&d, Algorithm::Ridge, false, &p).unwrap();
        assert!(
            sparse.prequential_refreshes < 60,
            "{}",
            sparse.prequential_refreshes
        );
        assert_eq!(sparse.accuracy, every.accuracy);
    }
}
