//! `ncm`: nearest class mean with cosine scores and a temperature (weight imprinting, Qi et al.
//! CVPR 2018): per-class sums of L2-normalized embeddings.

use super::linalg::{standardizer, transformed_mean};
use super::predictor::PredictorParts;
use super::Ctx;

/// Per-class sums of L2-normalized embeddings (f64), parallel to the head's class table.
#[derive(Clone, Debug, PartialEq, Default)]
pub(crate) struct NcmState {
    pub normalized_sum: Vec<Vec<f64>>,
}

/// `x / |x|` in f64 (zeros for the zero vector).
pub(crate) fn unit(x: &[f32]) -> impl Iterator<Item = f64> + '_ {
    let norm = x
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt();
    let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    x.iter().map(move |&v| f64::from(v) * inv)
}

impl NcmState {
    pub(crate) fn add_class(&mut self, dim: usize) {
        self.normalized_sum.push(vec![0.0; dim]);
    }

    pub(crate) fn remove_class(&mut self, i: usize) {
        if i < self.normalized_sum.len() {
            self.normalized_sum.remove(i);
        }
    }

    pub(crate) fn update(&mut self, i: usize, x: &[f32]) {
        if let Some(s) = self.normalized_sum.get_mut(i) {
            s.iter_mut().zip(unit(x)).for_each(|(a, u)| *a += u);
        }
    }

    pub(crate) fn unlearn(&mut self, i: usize, x: &[f32]) {
        if let Some(s) = self.normalized_sum.get_mut(i) {
            s.iter_mut().zip(unit(x)).for_each(|(a, u)| *a -= u);
        }
    }

    /// Adds `other`'s sums: `mapping[j]` is the index in `self` of `other`'s class `j`, or
    /// `None` for a class that is appended (in `other`'s order).
    pub(crate) fn merge(&mut self, other: &NcmState, mapping: &[Option<usize>]) {
        for (src, m) in other.normalized_sum.iter().zip(mapping) {
            match m {
                Some(i) => {
                    if let Some(dst) = self.normalized_sum.get_mut(*i) {
                        dst.iter_mut().zip(src).for_each(|(a, b)| *a += b);
                    }
                }
                None => self.normalized_sum.push(src.clone()),
            }
        }
    }

    /// The inverse of [`merge`](Self::merge) for classes that are all in `self`.
    pub(crate) fn unmerge(&mut self, other: &NcmState, mapping: &[Option<usize>]) {
        for (src, m) in other.normalized_sum.iter().zip(mapping) {
            if let Some(dst) = m.and_then(|i| self.normalized_sum.get_mut(i)) {
                dst.iter_mut().zip(src).for_each(|(a, b)| *a -= b);
            }
        }
    }

    /// Weights `W_c = m_c / (|m_c| T)`, no bias, L2-normalized input. Without
    /// standardization `m_c` is the mean of the normalized embeddings of class `c`; with it,
    /// `m_c` is the class mean of standardized embeddings (computed from raw sums, so merges
    /// and unlearning stay exact) and inputs are standardized before normalization.
    pub(crate) fn snapshot(&self, ctx: &Ctx<'_>) -> PredictorParts {
        let d = ctx.dim;
        let t = f64::from(ctx.config.effective_ncm_temperature());
        let (shift, scale) = if ctx.config.standardize {
            standardizer(ctx.source)
        } else {
            (vec![0.0; d], vec![1.0; d])
        };
        let mut weights = Vec::with_capacity(ctx.classes.len() * d);
        for (class, nsum) in ctx.classes.iter().zip(&self.normalized_sum) {
            let m: Vec<f64> = if ctx.config.standardize {
                transformed_mean(&class.stats, &shift, &scale).collect()
            } else {
                nsum.clone()
            };
            let norm = m.iter().map(|v| v * v).sum::<f64>().sqrt();
            let k = if norm > 0.0 { 1.0 / (norm * t) } else { 0.0 };
            weights.extend(m.iter().map(|v| v * k));
        }
        let labels = ctx.classes.iter().map(|c| c.name.clone()).collect();
        let bias = vec![0.0; ctx.classes.len()];
        PredictorParts::from_f64(labels, weights, bias, &shift, &scale, true)
    }
}
