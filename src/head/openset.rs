//! Open set ("none of these"): how unlike every known class an embedding is, and the
//! threshold above which a prediction says `known: false`. The score is the Mahalanobis
//! distance to the nearest class mean under the shrunk shared covariance (Lee et al. 2018)
//! where the head keeps the scatter, else the cosine to the nearest class mean. The threshold is calibrated on the head's own labeled stream: every labeled
//! sample of a class the last snapshot knew is scored before it is learned (test, then
//! train), and the threshold is the (1 − `open_set_frr`) quantile of the last [`WINDOW`]
//! scores, so about that fraction of the inputs of known classes is rejected
//! (docs/learners.md, "Open set").

use std::collections::VecDeque;

use nalgebra::DMatrix;

use super::linalg::{cholesky_in_place, cholesky_solve_factored, dot_f32, unpack_scaled};
use super::scatter::ScatterState;
use super::stats::SourceStats;
use super::Class;

/// Scores kept for the calibration: enough for a 5% quantile to rest on a few samples, and
/// recent, because the novelty of known inputs falls as a head learns (while samples are
/// fewer than dimensions the shrunk covariance overstates the distance in the directions no
/// sample has spread into yet): with 512 the early scores held the threshold so high on the
/// sound datasets that nothing was rejected (docs/learners.md, "Open set").
pub(crate) const WINDOW: usize = 128;

/// Scored samples needed before predictions say `known`: below this the quantile is noise.
pub(crate) const MIN_SCORED: usize = 20;

/// The novelty scores of the last [`WINDOW`] labeled samples of known classes, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Calibration {
    pub scores: VecDeque<f32>,
}

impl Calibration {
    pub(crate) fn push(&mut self, score: f32) {
        if !score.is_finite() {
            return;
        }
        if self.scores.len() == WINDOW {
            self.scores.pop_front();
        }
        self.scores.push_back(score);
    }

    /// The window's scores, ascending (what a snapshot keeps to place its threshold).
    pub(crate) fn sorted(&self) -> Vec<f32> {
        let mut v: Vec<f32> = self.scores.iter().copied().collect();
        v.sort_unstable_by(f32::total_cmp);
        v
    }
}

/// The score below which a fraction `1 − frr` of the ascending `sorted` scores lies (linear
/// interpolation); `None` before [`MIN_SCORED`] scores.
pub(crate) fn quantile_threshold(sorted: &[f32], frr: f64) -> Option<f32> {
    if sorted.len() < MIN_SCORED {
        return None;
    }
    let last = sorted.len() - 1;
    let q = (1.0 - frr.clamp(0.0, 1.0)) * last as f64;
    let lo = (q.floor() as usize).min(last);
    let hi = (q.ceil() as usize).min(last);
    let (a, b) = (sorted[lo], sorted[hi]);
    Some(a + (b - a) * (q - q.floor()) as f32)
}

/// How a snapshot scores novelty (higher = less like any known class).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Scorer {
    /// `1 − cos` to the nearest class mean (`ncm`, `sgd`: no covariance is kept).
    Cosine {
        /// Row-major `C × d` unit class-mean directions.
        means: Vec<f32>,
    },
    /// The Mahalanobis distance to the nearest class mean under the pooled within-class
    /// covariance shrunk toward its mean variance, squared and divided by d (`auto`, `slda`,
    /// `ridge`). With `z = x − μ`, `m_c` the centred class means and `Σ = L Lᵀ`:
    /// `(z − m_c)ᵀ Σ⁻¹ (z − m_c) = |L⁻¹ z|² − 2 (w_c · z + b_c)`, `w_c = Σ⁻¹ m_c`,
    /// `b_c = −½ m_c · w_c`: one triangular solve and one `C × d` product per input.
    Mahalanobis {
        /// `μ`, the mean of all learned embeddings (`d`).
        shift: Vec<f32>,
        /// `L`, packed by rows: row i holds `L[i][0..=i]`.
        chol: Vec<f32>,
        /// Row-major `C × d` `w_c`.
        w: Vec<f32>,
        /// `C` `b_c`.
        b: Vec<f32>,
    },
}

/// What a snapshot needs to say whether an input is known.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OpenSetParts {
    pub scorer: Scorer,
    /// The calibration scores at the snapshot, ascending: the threshold for any target
    /// false-rejection rate is a quantile of them ([`quantile_threshold`]).
    pub calibration: Vec<f32>,
}

/// Shrinkage of the covariance of the Mahalanobis score toward `(tr Σ / d) I`: measured
/// (docs/learners.md, "Open set") as robust from a few samples per class to thousands, where
/// the unshrunk covariance of a few samples makes every new input look novel.
const SHRINKAGE: f64 = 0.5;

impl OpenSetParts {
    /// The cosine scorer from the class sums; `None` without classes.
    pub(crate) fn cosine(classes: &[Class], dim: usize) -> Option<Scorer> {
        if classes.is_empty() || dim == 0 {
            return None;
        }
        let mut means = Vec::with_capacity(classes.len() * dim);
        for c in classes {
            let s = c.stats.sum();
            let n = s.iter().map(|v| v * v).sum::<f64>().sqrt();
            let k = if n > 0.0 && n.is_finite() {
                1.0 / n
            } else {
                0.0
            };
            means.extend(s.iter().map(|v| (v * k) as f32));
        }
        means
            .iter()
            .all(|v| v.is_finite())
            .then_some(Scorer::Cosine { means })
    }

    /// The Mahalanobis scorer from the within-class scatter; `None` without classes or when
    /// the covariance cannot be factored.
    pub(crate) fn mahalanobis(
        scatter: &ScatterState,
        classes: &[Class],
        source: &SourceStats,
        dim: usize,
    ) -> Option<Scorer> {
        let n = source.count();
        if classes.is_empty() || dim == 0 || n == 0 {
            return None;
        }
        let mut a = unpack_scaled(&scatter.packed, &vec![1.0; dim]);
        let inv_n = 1.0 / n as f64;
        let t = a.trace() * inv_n / dim as f64;
        // One sample per class: no within-class spread yet, a plain distance until there is.
        let t = if t > 0.0 && t.is_finite() { t } else { 1.0 };
        a *= (1.0 - SHRINKAGE) * inv_n;
        for i in 0..dim {
            a[(i, i)] += SHRINKAGE * t;
        }
        if !cholesky_in_place(&mut a) {
            return None;
        }
        let mu = source.mean();
        let mut m = DMatrix::<f64>::zeros(dim, classes.len());
        for (k, c) in classes.iter().enumerate() {
            let cnt = c.stats.count().max(1) as f64;
            for (j, s) in c.stats.sum().iter().enumerate() {
                m[(j, k)] = s / cnt - mu[j];
            }
        }
        let mut w = m.clone();
        if !cholesky_solve_factored(&a, &mut w) {
            return None;
        }
        let b: Vec<f32> = (0..classes.len())
            .map(|k| (-0.5 * m.column(k).dot(&w.column(k))) as f32)
            .collect();
        let mut chol = Vec::with_capacity(dim * (dim + 1) / 2);
        for i in 0..dim {
            chol.extend((0..=i).map(|j| a[(i, j)] as f32));
        }
        // Column k of w is class k's row.
        let w: Vec<f32> = w.as_slice().iter().map(|&v| v as f32).collect();
        let shift: Vec<f32> = mu.iter().map(|&v| v as f32).collect();
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        (finite(&chol) && finite(&w) && finite(&b) && finite(&shift))
            .then_some(Scorer::Mahalanobis { shift, chol, w, b })
    }

    /// The novelty score of `x` (dimension checked by the caller).
    pub(crate) fn score(&self, x: &[f32]) -> f32 {
        let d = x.len().max(1);
        match &self.scorer {
            Scorer::Cosine { means } => {
                // The means are unit vectors: cos = m · x / |x|, without a normalized copy.
                let n = dot_f32(x, x).sqrt();
                let inv = if n > 0.0 && n.is_finite() {
                    1.0 / n
                } else {
                    0.0
                };
                let best = means
                    .chunks_exact(d)
                    .map(|m| dot_f32(m, x) * inv)
                    .fold(f32::NEG_INFINITY, f32::max);
                1.0 - best
            }
            Scorer::Mahalanobis { shift, chol, w, b } => {
                let z: Vec<f32> = x.iter().zip(shift).map(|(a, m)| a - m).collect();
                // y = L⁻¹ z, row by row.
                let mut y = vec![0.0f32; d];
                let mut at = 0;
                for i in 0..d {
                    let row = &chol[at..at + i + 1];
                    at += i + 1;
                    let s = z[i] - dot_f32(&row[..i], &y[..i]);
                    y[i] = s / row[i];
                }
                let q = dot_f32(&y, &y);
                let best = w
                    .chunks_exact(d)
                    .zip(b)
                    .map(|(wc, &bc)| dot_f32(wc, &z) + bc)
                    .fold(f32::NEG_INFINITY, f32::max);
                (q - 2.0 * best).max(0.0) / d as f32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, xs: &[[f32; 2]]) -> Class {
        let mut stats = SourceStats::new(2);
        for x in xs {
            stats.add(x);
        }
        Class {
            name: name.into(),
            stats,
        }
    }

    fn scorers(classes: &[Class]) -> Vec<OpenSetParts> {
        let mut scatter = ScatterState::new(2);
        let mut source = SourceStats::new(2);
        let mut seen: Vec<Class> = classes
            .iter()
            .map(|c| Class {
                name: c.name.clone(),
                stats: SourceStats::new(2),
            })
            .collect();
        for (k, c) in XS.iter().enumerate() {
            for x in *c {
                scatter.update(&seen[k].stats, x);
                seen[k].stats.add(x);
                source.add(x);
            }
        }
        [
            OpenSetParts::cosine(classes, 2),
            OpenSetParts::mahalanobis(&scatter, classes, &source, 2),
        ]
        .into_iter()
        .map(|s| OpenSetParts {
            scorer: s.unwrap(),
            calibration: Vec::new(),
        })
        .collect()
    }

    const XS: [&[[f32; 2]]; 2] = [
        &[[1.0, 0.1], [1.2, 0.0], [0.8, -0.1]],
        &[[0.1, 1.0], [0.0, 1.2], [-0.1, 0.8]],
    ];

    #[test]
    fn near_a_class_scores_low_far_from_all_scores_high() {
        let classes = [class("a", XS[0]), class("b", XS[1])];
        for p in scorers(&classes) {
            let near = p.score(&[1.05, 0.05]);
            let far = p.score(&[-1.0, -1.0]);
            assert!(near >= 0.0 && near.is_finite(), "{near}");
            assert!(
                far > 10.0 * near.max(1e-3),
                "{:?}: {far} vs {near}",
                p.scorer
            );
        }
    }

    #[test]
    fn mahalanobis_equals_the_direct_distance() {
        let classes = [class("a", XS[0]), class("b", XS[1])];
        let p = &scorers(&classes)[1];
        // Direct: Σ = ½ S/n + ½ (tr(S/n)/d) I, distance to the nearest class mean.
        let mut s = [[0.0f64; 2]; 2];
        let mut n = 0.0;
        for c in XS {
            let m = [0, 1].map(|j| c.iter().map(|x| f64::from(x[j])).sum::<f64>() / 3.0);
            for x in c {
                n += 1.0;
                for i in 0..2 {
                    for j in 0..2 {
                        s[i][j] += (f64::from(x[i]) - m[i]) * (f64::from(x[j]) - m[j]);
                    }
                }
            }
        }
        let t = (s[0][0] + s[1][1]) / n / 2.0;
        let a = [
            [0.5 * s[0][0] / n + 0.5 * t, 0.5 * s[0][1] / n],
            [0.5 * s[1][0] / n, 0.5 * s[1][1] / n + 0.5 * t],
        ];
        let det = a[0][0] * a[1][1] - a[0][1] * a[1][0];
        let inv = [
            [a[1][1] / det, -a[0][1] / det],
            [-a[1][0] / det, a[0][0] / det],
        ];
        let x = [0.3f64, 0.6];
        let best = XS
            .iter()
            .map(|c| {
                let m = [0, 1].map(|j| c.iter().map(|x| f64::from(x[j])).sum::<f64>() / 3.0);
                let e = [x[0] - m[0], x[1] - m[1]];
                e[0] * (inv[0][0] * e[0] + inv[0][1] * e[1])
                    + e[1] * (inv[1][0] * e[0] + inv[1][1] * e[1])
            })
            .fold(f64::INFINITY, f64::min);
        let got = f64::from(p.score(&[0.3, 0.6]));
        assert!(
            (got - best / 2.0).abs() < 1e-4 * best,
            "{got} vs {}",
            best / 2.0
        );
    }

    #[test]
    fn threshold_is_the_quantile_of_the_window() {
        let mut c = Calibration::default();
        // Pushed in descending order: the threshold sorts them.
        for i in (100 - MIN_SCORED + 1..100).rev() {
            c.push(i as f32);
        }
        assert_eq!(quantile_threshold(&c.sorted(), 0.05), None);
        c.push(f32::NAN);
        assert_eq!(c.scores.len(), MIN_SCORED - 1, "a NaN is not a score");
        for i in (0..100 - MIN_SCORED + 1).rev() {
            c.push(i as f32);
        }
        // 0..99: the 95% quantile (linear interpolation) is 94.05.
        let t = quantile_threshold(&c.sorted(), 0.05).unwrap();
        assert!((t - 94.05).abs() < 1e-3, "{t}");
        assert_eq!(quantile_threshold(&c.sorted(), 0.0), Some(99.0));
        for i in 0..WINDOW {
            c.push(1000.0 + i as f32);
        }
        assert_eq!(c.scores.len(), WINDOW);
        assert!(
            quantile_threshold(&c.sorted(), 0.5).unwrap() > 1000.0,
            "old scores left the window"
        );
    }
}
