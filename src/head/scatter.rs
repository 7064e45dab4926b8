//! The shared within-class scatter matrix of `slda` and `ridge`: a packed symmetric f64 matrix
//! updated, downdated and merged exactly with rank-1 terms.
//!
//! `S = Σ_c Σ_{i∈c} (x_i − μ_c)(x_i − μ_c)ᵀ` over raw embeddings. Together with the per-class
//! counts and sums (kept in the head's class table) it is a sufficient statistic for both LDA
//! (`Σ = S / count`) and ridge regression on one-hot targets (`XᵀX` centered = `S + Σ_c n_c
//! (μ_c − μ)(μ_c − μ)ᵀ`, `XᵀY` centered = `n_c (μ_c − μ)`).
//!
//! `forget` removes a class's count and sum, but its within-class scatter stays in `S` (and in
//! `count`): removing it exactly would need one `d × d` matrix per class (6.5 MB at d = 1280).
//! Under LDA's shared-covariance assumption that scatter is still valid evidence about the
//! covariance; for ridge it acts as extra regularization in the directions the class varied.

use super::linalg::{packed_len, syr_packed};
use super::stats::SourceStats;
use super::Class;

/// Within-class scatter (packed lower triangle, column-major = upper triangle, row-major) and
/// the number of samples that went into it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ScatterState {
    pub packed: Vec<f64>,
    pub count: u64,
}

impl ScatterState {
    pub(crate) fn new(dim: usize) -> ScatterState {
        ScatterState {
            packed: vec![0.0; packed_len(dim)],
            count: 0,
        }
    }

    /// Adds `x` to a class whose statistics (before adding `x`) are `class`:
    /// `S += n/(n+1) (x − μ)(x − μ)ᵀ` (Welford).
    pub(crate) fn update(&mut self, class: &SourceStats, x: &[f32]) {
        let n = class.count();
        if n > 0 {
            let nf = n as f64;
            let delta: Vec<f64> = x
                .iter()
                .zip(class.sum())
                .map(|(&v, s)| f64::from(v) - s / nf)
                .collect();
            syr_packed(&mut self.packed, nf / (nf + 1.0), &delta);
        }
        self.count += 1;
    }

    /// Removes `x` from a class whose statistics (still including `x`) are `class`: with
    /// `μ'` the mean without `x`, `S −= (n−1)/n (x − μ')(x − μ')ᵀ`.
    pub(crate) fn downdate(&mut self, class: &SourceStats, x: &[f32]) {
        let n = class.count();
        if n >= 2 {
            let rest = (n - 1) as f64;
            let delta: Vec<f64> = x
                .iter()
                .zip(class.sum())
                .map(|(&v, s)| {
                    let v = f64::from(v);
                    v - (s - v) / rest
                })
                .collect();
            syr_packed(&mut self.packed, -rest / n as f64, &delta);
        }
        self.count = self.count.saturating_sub(1);
    }

    /// Adds `other`'s scatter; for every class in both heads adds the between-part
    /// `n_a n_b / (n_a + n_b) (μ_a − μ_b)(μ_a − μ_b)ᵀ` (Chan et al.). `mapping[j]` is the index
    /// in `mine` of `theirs[j]`, if shared. Call before merging the class tables.
    pub(crate) fn merge(
        &mut self,
        other: &ScatterState,
        mine: &[Class],
        theirs: &[Class],
        mapping: &[Option<usize>],
    ) {
        self.packed
            .iter_mut()
            .zip(&other.packed)
            .for_each(|(a, b)| *a += b);
        self.count += other.count;
        for (ca, cb) in shared(mine, theirs, mapping) {
            let (na, nb) = (ca.stats.count() as f64, cb.stats.count() as f64);
            if na == 0.0 || nb == 0.0 {
                continue;
            }
            let delta: Vec<f64> = ca
                .stats
                .sum()
                .iter()
                .zip(cb.stats.sum())
                .map(|(a, b)| a / na - b / nb)
                .collect();
            syr_packed(&mut self.packed, na * nb / (na + nb), &delta);
        }
    }

    /// The inverse of [`merge`](Self::merge): removes `other`'s scatter and, for every class
    /// in both, the between-part, with `μ_a` the mean of what remains (`mine` are the merged
    /// classes, before their statistics are reduced). Call before reducing the class tables.
    pub(crate) fn unmerge(
        &mut self,
        other: &ScatterState,
        mine: &[Class],
        theirs: &[Class],
        mapping: &[Option<usize>],
    ) {
        self.packed
            .iter_mut()
            .zip(&other.packed)
            .for_each(|(a, b)| *a -= b);
        self.count = self.count.saturating_sub(other.count);
        for (cab, cb) in shared(mine, theirs, mapping) {
            let nb = cb.stats.count() as f64;
            let na = cab.stats.count().saturating_sub(cb.stats.count()) as f64;
            if na == 0.0 || nb == 0.0 {
                continue;
            }
            let delta: Vec<f64> = cab
                .stats
                .sum()
                .iter()
                .zip(cb.stats.sum())
                .map(|(ab, b)| (ab - b) / na - b / nb)
                .collect();
            syr_packed(&mut self.packed, -na * nb / (na + nb), &delta);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.packed.iter_mut().for_each(|v| *v = 0.0);
        self.count = 0;
    }
}

/// The classes of `theirs` that `mine` also has (`mapping[j]`: the index in `mine` of
/// `theirs[j]`), as (mine, theirs) pairs.
fn shared<'a>(
    mine: &'a [Class],
    theirs: &'a [Class],
    mapping: &'a [Option<usize>],
) -> impl Iterator<Item = (&'a Class, &'a Class)> {
    theirs
        .iter()
        .zip(mapping)
        .filter_map(|(cb, m)| Some((mine.get((*m)?)?, cb)))
}
