//! `auto`'s leave-one-out check: for each of the head's recent labeled samples, the label each
//! candidate would give it had that sample not been learned. Closed forms from the statistics
//! and the candidate's own solve, no refit per sample: class sums minus the sample (`ncm`), a
//! Sherman–Morrison downdate of the shrunk covariance (`slda`), the hat matrix's leverage
//! (`ridge`). Unlike the prequential record, it judges every candidate as it is now, at the
//! head's current sample count (docs/learners.md, "auto").

use std::collections::VecDeque;
use std::sync::Arc;

use nalgebra::DMatrix;

use super::linalg::{standardizer, transform, transformed_mean};
use super::ncm::{unit, NcmState};
use super::{ridge, slda, Class, Ctx};

/// Recent labeled samples kept for the check: enough that a few samples' difference between
/// two candidates is not noise, few enough that the extra right-hand sides cost a fraction of
/// the candidates' factorizations (docs/learners.md, "auto").
pub(crate) const RECENT: usize = 200;

/// Samples the check must score before it decides the choice (fewer: the prequential window
/// decides).
pub(crate) const MIN_SCORED: usize = 10;

/// The last [`RECENT`] samples the head learned, oldest first. Kept in memory only: after a
/// restart the check waits for new samples, and the prequential record decides meanwhile.
#[derive(Clone, Debug, Default)]
pub(crate) struct Recent {
    samples: VecDeque<(String, Arc<[f32]>)>,
}

impl Recent {
    /// Adds a learned sample; once full, in the oldest one's buffers when no clone of the
    /// head shares them (no allocation per learned sample).
    pub(crate) fn push(&mut self, label: &str, x: &[f32]) {
        if self.samples.len() == RECENT {
            if let Some((mut l, mut s)) = self.samples.pop_front() {
                if let Some(buf) = Arc::get_mut(&mut s).filter(|b| b.len() == x.len()) {
                    buf.copy_from_slice(x);
                    l.clear();
                    l.push_str(label);
                    self.samples.push_back((l, s));
                    return;
                }
            }
        }
        self.samples.push_back((label.to_string(), Arc::from(x)));
    }

    /// Adds a sample learned before the ones here (the stored samples, after a restart), while
    /// there is room and it is not here yet.
    pub(crate) fn recall(&mut self, label: &str, x: &[f32]) {
        if self.samples.len() < RECENT && !self.samples.iter().any(|(l, s)| l == label && **s == *x)
        {
            self.samples.push_front((label.to_string(), Arc::from(x)));
        }
    }

    /// Drops the newest copy of an unlearned sample, if it is still here.
    pub(crate) fn remove(&mut self, label: &str, x: &[f32]) {
        if let Some(i) = self
            .samples
            .iter()
            .rposition(|(l, s)| l == label && **s == *x)
        {
            self.samples.remove(i);
        }
    }

    /// Drops a forgotten class's samples.
    pub(crate) fn forget(&mut self, label: &str) {
        self.samples.retain(|(l, _)| l != label);
    }

    pub(crate) fn clear(&mut self) {
        self.samples.clear();
    }

    /// The samples the check can score, with their class index: those of a class that keeps
    /// at least one sample without them.
    pub(crate) fn scorable<'a>(&'a self, classes: &[Class]) -> Vec<(usize, &'a [f32])> {
        self.samples
            .iter()
            .filter_map(|(label, x)| {
                let k = classes.iter().position(|c| &c.name == label)?;
                (classes[k].stats.count() >= 2).then_some((k, &x[..]))
            })
            .collect()
    }
}

/// Per sample, the leave-one-out scores of every class (`None`: the sample could not be
/// scored, a miss).
pub(crate) type Scores = Vec<Option<Vec<f64>>>;

/// How many samples' leave-one-out scores put their own class first (the first largest
/// finite score, as the predictor's argmax).
pub(crate) fn hits(samples: &[(usize, &[f32])], scores: &Scores) -> usize {
    samples
        .iter()
        .zip(scores)
        .filter(|((k, _), s)| {
            let mut best: Option<(usize, f64)> = None;
            for (i, &v) in s.iter().flatten().enumerate() {
                if v.is_finite() && best.is_none_or(|(_, b)| v > b) {
                    best = Some((i, v));
                }
            }
            best.map(|(i, _)| i) == Some(*k)
        })
        .count()
}

/// `(x − shift) ⊙ scale` as a vector.
fn transformed(x: &[f32], shift: &[f64], scale: &[f64]) -> nalgebra::DVector<f64> {
    nalgebra::DVector::from_iterator(x.len(), transform(x, shift, scale))
}

/// `ncm` (`ctx.config.standardize` off) or `ncm_std` (on): how many of `samples` the class
/// means without each sample label right. `ncm` compares normalized embeddings with the sums of
/// normalized embeddings; `ncm_std` standardized embeddings with the standardized class means
/// (the head's standardizer kept).
pub(crate) fn ncm_hits(ncm: &NcmState, ctx: &Ctx<'_>, samples: &[(usize, &[f32])]) -> usize {
    if samples.is_empty() {
        return 0;
    }
    let scores = if ctx.config.standardize {
        let (shift, scale) = standardizer(ctx.source);
        let mut means = DMatrix::<f64>::zeros(ctx.dim, ctx.classes.len());
        for (k, class) in ctx.classes.iter().enumerate() {
            let mean = transformed_mean(&class.stats, &shift, &scale);
            means
                .column_mut(k)
                .iter_mut()
                .zip(mean)
                .for_each(|(m, v)| *m = v);
        }
        // Without z, n_k μ_k − z is the direction of class k's mean.
        let own = |k: usize| ctx.classes[k].stats.count() as f64;
        let z = |x: &[f32]| transform(x, &shift, &scale).collect();
        ncm_scores(&means, own, z, samples)
    } else {
        let means = DMatrix::from_iterator(
            ctx.dim,
            ncm.normalized_sum.len(),
            ncm.normalized_sum.iter().flatten().copied(),
        );
        ncm_scores(&means, |_| 1.0, |x| unit(x).collect(), samples)
    };
    hits(samples, &scores)
}

/// Nearest class mean by cosine. `means` holds a direction per class (column); `own(k)` is
/// how much of class `k`'s column remains a sample's own direction: leaving `z` out of class
/// `k` turns its column `m_k` into `own · m_k − z` (up to a positive factor). `transform` maps
/// an input to the space of `means`.
pub(crate) fn ncm_scores(
    means: &DMatrix<f64>,
    own: impl Fn(usize) -> f64,
    transform: impl Fn(&[f32]) -> Vec<f64>,
    samples: &[(usize, &[f32])],
) -> Scores {
    let norms2: Vec<f64> = means.column_iter().map(|m| m.norm_squared()).collect();
    samples
        .iter()
        .map(|&(k, x)| {
            let z = nalgebra::DVector::from_vec(transform(x));
            let zz = z.norm_squared();
            let scores = (0..means.ncols())
                .map(|j| {
                    let zm = means.column(j).dot(&z);
                    if j == k {
                        let a = own(k);
                        let n2 = a * a * norms2[j] - 2.0 * a * zm + zz;
                        (a * zm - zz) / n2.max(0.0).sqrt()
                    } else {
                        zm / norms2[j].sqrt()
                    }
                })
                .collect();
            Some(scores)
        })
        .collect()
}

/// `slda`: the discriminants `μ_jᵀ Λ' z − ½ μ_jᵀ Λ' μ_j` with `z`'s class mean and the scatter
/// without `z` (`S' = S − n_k/(n_k − 1) v vᵀ`, `v = z − μ_k`), `Λ'` by Sherman–Morrison from
/// `Λ z` (solved with the candidate) and `Λ μ_j` (its weights). The scatter's count and the
/// shrinkage target stay as they are: a change of order 1/n.
pub(crate) fn slda_scores(
    solved: &slda::Solved,
    classes: &[Class],
    samples: &[(usize, &[f32])],
) -> Scores {
    let sol = &solved.solution;
    let c = sol.w.ncols();
    let score = |i: usize, k: usize, x: &[f32]| -> Option<Vec<f64>> {
        let n_k = classes.get(k)?.stats.count() as f64;
        let z = transformed(x, &sol.shift, &sol.scale);
        let v = &z - solved.means.column(k);
        let g = solved.extra.column(i) - sol.w.column(k);
        let s = v.dot(&g);
        let cw = solved.scatter_weight * n_k / (n_k - 1.0);
        let denom = 1.0 - cw * s;
        if !(denom > 0.0 && denom.is_finite()) {
            return None;
        }
        // pᵀ Λ' q from pᵀ Λ q, pᵀ Λ v and qᵀ Λ v.
        let q = |pq: f64, pv: f64, qv: f64| pq + cw * pv * qv / denom;
        let gz = g.dot(&z);
        let a = 1.0 / (n_k - 1.0);
        let scores = (0..c)
            .map(|j| {
                let w = sol.w.column(j);
                let wz = w.dot(&z);
                let wv = w.dot(&v);
                // μ_jᵀ Λ μ_j, which the bias already holds: b_j = −½ μ_jᵀ Λ μ_j.
                let wm = -2.0 * sol.b[j];
                if j == k {
                    // The class mean without z: μ_k − a v.
                    let zm = q(wz, gz, wv);
                    let zv = q(gz, gz, s);
                    let mm = q(wm, wv, wv);
                    let mv = q(wv, wv, s);
                    let vv = q(s, s, s);
                    (zm - a * zv) - 0.5 * (mm - 2.0 * a * mv + a * a * vv)
                } else {
                    q(wz, wv, gz) - 0.5 * q(wm, wv, wv)
                }
            })
            .collect();
        Some(scores)
    };
    samples
        .iter()
        .enumerate()
        .map(|(i, &(k, x))| score(i, k, x))
        .collect()
}

/// `ridge`: the leave-one-out outputs `(ŷ_i − h_i y_i) / (1 − h_i)`, exact for ridge
/// regression with an unpenalized bias at the same λ.
pub(crate) fn ridge_scores(solved: &ridge::Solved, samples: &[(usize, &[f32])]) -> Scores {
    let sol = &solved.solution;
    samples
        .iter()
        .zip(&solved.leverage)
        .map(|(&(k, x), &h)| {
            if h.is_nan() || h >= 1.0 {
                return None;
            }
            let z = transformed(x, &sol.shift, &sol.scale);
            let scores = (0..sol.w.ncols())
                .map(|j| {
                    let y = sol.w.column(j).dot(&z) + sol.b[j];
                    let own = if j == k { h } else { 0.0 };
                    (y - own) / (1.0 - h)
                })
                .collect();
            Some(scores)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{blobs, train, BACKBONE};
    use super::super::{Algorithm, Ctx, Head, HeadConfig, Learner};
    use super::*;

    fn config(standardize: bool) -> HeadConfig {
        HeadConfig {
            algorithm: Algorithm::Auto,
            standardize,
            ..HeadConfig::default()
        }
    }

    fn ctx(h: &Head) -> Ctx<'_> {
        Ctx {
            config: &h.config,
            dim: h.dim,
            classes: &h.classes,
            source: &h.source,
        }
    }

    fn scatter(h: &Head) -> &super::super::scatter::ScatterState {
        match &h.learner {
            Learner::Auto(a) => &a.scatter,
            _ => panic!("not auto"),
        }
    }

    fn close(a: &[f64], b: &[f64], tol: f64) {
        let scale = b.iter().map(|v| v.abs()).fold(1e-12, f64::max);
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol * scale, "{a:?} vs {b:?}");
        }
    }

    /// A head of 3 classes in 6 dimensions and, per sample, the same head without it.
    fn heads(standardize: bool) -> (Head, Vec<(usize, Vec<f32>, Head)>) {
        let (data, _) = blobs(3, 6, 3, 6, 0, 1.5, 2.0);
        let h = train(&config(standardize), 6, &data);
        let without = data
            .iter()
            .map(|(x, y)| {
                let mut w = h.clone();
                w.unlearn(x, y).unwrap();
                let k = h.classes.iter().position(|c| &c.name == y).unwrap();
                (k, x.clone(), w)
            })
            .collect();
        (h, without)
    }

    /// Without standardization: with it the refit's standardizer comes from the smaller
    /// source, a different regression (the check keeps the full head's, as `slda`'s count).
    #[test]
    fn ridge_equals_the_refit_without_the_sample() {
        let (h, without) = heads(false);
        let samples: Vec<(usize, &[f32])> = without.iter().map(|(k, x, _)| (*k, &x[..])).collect();
        let xs: Vec<&[f32]> = samples.iter().map(|s| s.1).collect();
        let penalty = ridge::Penalty::Absolute(0.7);
        let solved = ridge::solve_extra(scatter(&h), &ctx(&h), penalty, &xs).unwrap();
        let scores = ridge_scores(&solved, &samples);
        for ((_, x, w), s) in without.iter().zip(&scores) {
            let refit = ridge::solve_with(scatter(w), &ctx(w), penalty).unwrap();
            let z = transformed(x, &refit.shift, &refit.scale);
            let want: Vec<f64> = (0..refit.w.ncols())
                .map(|j| refit.w.column(j).dot(&z) + refit.b[j])
                .collect();
            close(s.as_ref().unwrap(), &want, 1e-8);
        }
        assert_eq!(
            hits(&samples, &scores),
            scores.len() - miss(&samples, &scores)
        );
    }

    /// Samples whose top score is not their own class, counted apart from [`hits`].
    fn miss(samples: &[(usize, &[f32])], scores: &Scores) -> usize {
        samples
            .iter()
            .zip(scores)
            .filter(|((k, _), s)| {
                let s = s.as_ref().unwrap();
                let own = s[*k];
                s.iter().enumerate().any(|(j, &v)| j != *k && v >= own)
            })
            .count()
    }

    #[test]
    fn slda_equals_a_dense_solve_without_the_sample() {
        let eps = 0.1;
        let (h, without) = heads(false);
        let samples: Vec<(usize, &[f32])> = without.iter().map(|(k, x, _)| (*k, &x[..])).collect();
        let xs: Vec<&[f32]> = samples.iter().map(|s| s.1).collect();
        let target = slda::Target::Unit;
        let solved = slda::solve_extra(scatter(&h), &ctx(&h), eps, target, &xs).unwrap();
        let scores = slda_scores(&solved, &h.classes, &samples);
        let d = h.dim;
        for ((k, x, w), s) in without.iter().zip(&scores) {
            // Λ' from the scatter without the sample, at the full head's count and target.
            let sw = super::super::linalg::unpack_scaled(&scatter(w).packed, &vec![1.0; d]);
            let m = sw * solved.scatter_weight + DMatrix::identity(d, d) * eps;
            let lambda = m.try_inverse().unwrap();
            let shift = &solved.solution.shift;
            let z = transformed(x, shift, &vec![1.0; d]);
            let want: Vec<f64> = (0..h.classes.len())
                .map(|j| {
                    let name = &h.classes[j].name;
                    let c = w.classes.iter().find(|c| &c.name == name).unwrap();
                    let n = c.stats.count() as f64;
                    let mu = nalgebra::DVector::from_iterator(
                        d,
                        c.stats.sum().iter().zip(shift).map(|(s, m)| s / n - m),
                    );
                    let lm = &lambda * &mu;
                    lm.dot(&z) - 0.5 * lm.dot(&mu)
                })
                .collect();
            close(s.as_ref().unwrap(), &want, 1e-8);
            assert!(*k < h.classes.len());
        }
    }

    #[test]
    fn ncm_equals_the_means_without_the_sample() {
        for standardize in [false, true] {
            let (h, without) = heads(standardize);
            let samples: Vec<(usize, &[f32])> =
                without.iter().map(|(k, x, _)| (*k, &x[..])).collect();
            let d = h.dim;
            let (means, own, shift, scale): (DMatrix<f64>, Vec<f64>, Vec<f64>, Vec<f64>) =
                if standardize {
                    let (shift, scale) = super::super::linalg::standardizer(&h.source);
                    let mut m = DMatrix::zeros(d, h.classes.len());
                    for (k, c) in h.classes.iter().enumerate() {
                        let n = c.stats.count() as f64;
                        for (j, s) in c.stats.sum().iter().enumerate() {
                            m[(j, k)] = (s / n - shift[j]) * scale[j];
                        }
                    }
                    let own = h.classes.iter().map(|c| c.stats.count() as f64).collect();
                    (m, own, shift, scale)
                } else {
                    let Learner::Auto(a) = &h.learner else {
                        panic!("not auto")
                    };
                    let m = DMatrix::from_iterator(
                        d,
                        h.classes.len(),
                        a.ncm.normalized_sum.iter().flatten().copied(),
                    );
                    (m, vec![1.0; h.classes.len()], vec![0.0; d], vec![1.0; d])
                };
            let unit = |x: &[f32]| -> Vec<f64> {
                let z = transformed(x, &shift, &scale);
                if standardize {
                    z.as_slice().to_vec()
                } else {
                    super::super::ncm::unit(x).collect()
                }
            };
            let scores = ncm_scores(&means, |k| own[k], unit, &samples);
            let mut wants: Scores = Vec::new();
            for ((k, x, w), s) in without.iter().zip(&scores) {
                // Cosines to the class directions of the head without the sample (the
                // standardizer of the full head kept).
                let z = nalgebra::DVector::from_vec(unit(x));
                let want: Vec<f64> = (0..h.classes.len())
                    .map(|j| {
                        let name = &h.classes[j].name;
                        let c = w.classes.iter().position(|c| &c.name == name).unwrap();
                        let m: nalgebra::DVector<f64> = if standardize {
                            let st = &w.classes[c].stats;
                            let n = st.count() as f64;
                            nalgebra::DVector::from_iterator(
                                d,
                                (0..d).map(|i| (st.sum()[i] / n - shift[i]) * scale[i]),
                            )
                        } else {
                            let Learner::Auto(a) = &w.learner else {
                                panic!("not auto")
                            };
                            nalgebra::DVector::from_vec(a.ncm.normalized_sum[c].clone())
                        };
                        m.dot(&z) / m.norm()
                    })
                    .collect();
                close(s.as_ref().unwrap(), &want, 1e-9);
                assert!(*k < h.classes.len());
                wants.push(Some(want));
            }
            // What auto's candidate counts, from the head's own statistics.
            let config = HeadConfig {
                standardize,
                ..h.config.clone()
            };
            let c = Ctx {
                config: &config,
                ..ctx(&h)
            };
            let Learner::Auto(a) = &h.learner else {
                panic!("not auto")
            };
            assert_eq!(ncm_hits(&a.ncm, &c, &samples), hits(&samples, &wants));
        }
    }

    #[test]
    fn the_check_decides_the_choice_and_follows_unlearn_and_forget() {
        let (data, _) = blobs(5, 6, 3, 8, 0, 1.5, 2.0);
        let mut h = Head::new(&config(false), 6, BACKBONE);
        for (x, y) in &data {
            h.update(x, y).unwrap();
        }
        assert_eq!(h.recent.scorable(&h.classes).len(), data.len());
        h.refresh_candidates();
        let s = h.auto_summary().unwrap();
        assert_eq!(s.chosen_by, "leave_one_out");
        assert_eq!(s.loo_scored, data.len());
        let best = s
            .candidates
            .iter()
            .filter_map(|c| c.loo_accuracy)
            .fold(0.0, f64::max);
        let chosen = s.candidates.iter().find(|c| c.name == s.choice).unwrap();
        assert_eq!(chosen.loo_accuracy, Some(best));
        // Unlearned and forgotten samples leave the check.
        let (x, y) = &data[0];
        h.unlearn(x, y).unwrap();
        assert_eq!(h.recent.scorable(&h.classes).len(), data.len() - 1);
        h.forget("c1");
        let left = h.recent.scorable(&h.classes);
        assert!(left.iter().all(|(k, _)| h.classes[*k].name != "c1"));
        assert_eq!(left.len(), data.len() - 1 - 8 + usize::from(y == "c1"));
        h.reset();
        assert!(h.recent.scorable(&h.classes).is_empty());
    }

    #[test]
    fn a_small_or_partial_check_leaves_the_choice_to_the_window() {
        let (data, _) = blobs(5, 6, 3, 3, 0, 1.5, 2.0);
        assert_eq!(data.len(), MIN_SCORED - 1);
        let mut h = Head::new(&config(false), 6, BACKBONE);
        for (x, y) in &data {
            h.update(x, y).unwrap();
        }
        h.refresh_candidates();
        let s = h.auto_summary().unwrap();
        assert_eq!(s.chosen_by, "prequential");
        assert!(s.candidates.iter().all(|c| c.loo_accuracy.is_none()));
        // Enough samples, but a class taught once: still the window.
        let (more, _) = blobs(6, 6, 3, 3, 0, 1.5, 2.0);
        for (x, y) in &more {
            h.update(x, y).unwrap();
        }
        h.update(&more[0].0, "once").unwrap();
        h.refresh_candidates();
        assert_eq!(h.auto_summary().unwrap().chosen_by, "prequential");
        // Its second sample: the check decides, and a third class taught once later does not
        // take the decision back.
        h.update(&more[1].0, "once").unwrap();
        h.refresh_candidates();
        assert_eq!(h.auto_summary().unwrap().chosen_by, "leave_one_out");
        h.update(&more[2].0, "late").unwrap();
        h.refresh_candidates();
        assert_eq!(h.auto_summary().unwrap().chosen_by, "leave_one_out");
    }

    #[test]
    fn recall_refills_the_check_with_an_even_spread() {
        let (data, _) = blobs(9, 6, 2, 150, 0, 1.5, 2.0);
        let mut h = train(&config(false), 6, &data);
        // Full: the last RECENT learned, in order (the oldest buffers reused).
        let last = &data[data.len() - RECENT..];
        assert!(h
            .recent
            .samples
            .iter()
            .zip(last)
            .all(|((l, s), (x, y))| l == y && **s == x[..]));
        assert_eq!(h.recent.samples.len(), RECENT);
        h.recent.clear();
        let mut stored: Vec<(&str, &[f32])> =
            data.iter().map(|(x, y)| (y.as_str(), &x[..])).collect();
        // Stored samples come class by class: the spread must still hold both classes.
        stored.sort_by_key(|(y, _)| *y);
        stored.push(("never-learned", &data[0].0[..]));
        h.recall(&stored);
        let scorable = h.recent.scorable(&h.classes);
        assert_eq!(scorable.len(), RECENT);
        for k in 0..2 {
            let n = scorable.iter().filter(|(c, _)| *c == k).count();
            assert!(n >= RECENT / 2 - 1, "class {k}: {n}");
        }
        h.refresh_candidates();
        assert_eq!(h.auto_summary().unwrap().chosen_by, "leave_one_out");
        // A sample already there is not added twice; one of a class the head lacks is left out.
        h.recent.clear();
        h.recall(&stored[..5]);
        h.recall(&stored[..5]);
        h.recall(&stored[stored.len() - 1..]);
        assert_eq!(h.recent.samples.len(), 5);
    }
}
