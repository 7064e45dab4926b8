//! `sgd`: softmax regression trained online, one cross-entropy step per sample, with weight
//! decay, a decaying learning rate and optional inverse-class-frequency balancing.
//!
//! The step is normalized by the input norm (normalized LMS on the input augmented with the
//! bias): for sample `z` of class `y`, with `p = softmax(W z + b)`,
//! `η = lr_t · w_y / (1 + |z|²)`, `W_c ← (1 − lr_t λ) W_c − η (p_c − [c = y]) z`,
//! `b_c ← b_c − η (p_c − [c = y])`, where `lr_t = lr / (1 + decay · t)` and `t` counts the
//! steps taken. `lr` is therefore in logit units per step whatever the embedding scale.
//! Inputs are centered on the running source mean (and scaled when standardizing): without
//! centering, the large common component of typical embeddings (e.g. non-negative CNN
//! features) makes plain SGD ill-conditioned and it barely learns.
//! Deterministic: zero-initialized rows, no shuffling, no random numbers.
//!
//! The weight update of a step is kept pending and applied during the next step's score pass
//! (one pass over `W` per step instead of two; `W` is 512 KB at 100 classes × 1280, more than
//! a core's L2 here). Snapshots, merges and files see the weights with the update applied, with
//! exactly the same arithmetic.

use std::borrow::Cow;

use super::linalg::{centered_transform, dot_f32, scale_add_dot_f32, scale_add_f32};
use super::predictor::PredictorParts;
use super::Ctx;

/// Class-balance weights are clamped to this range.
const BALANCE_RANGE: (f64, f64) = (0.2, 5.0);

/// A weight update not yet applied: `W_c ← W_c · keep + coef_c · unit`.
#[derive(Clone, Debug)]
struct Pending {
    keep: f32,
    coef: Vec<f32>,
    unit: Vec<f32>,
}

/// Weights (row-major `C × d`, f32, before the pending update), biases and the number of
/// steps taken.
#[derive(Clone, Debug, Default)]
pub(crate) struct SgdState {
    weights: Vec<f32>,
    pub bias: Vec<f32>,
    pub steps: u64,
    pending: Option<Pending>,
}

impl PartialEq for SgdState {
    fn eq(&self, other: &SgdState) -> bool {
        self.bias == other.bias
            && self.steps == other.steps
            && self.weights(self.bias.len()) == other.weights(other.bias.len())
    }
}

impl SgdState {
    /// A state from stored weights (no pending update).
    pub(crate) fn from_parts(weights: Vec<f32>, bias: Vec<f32>, steps: u64) -> SgdState {
        SgdState {
            weights,
            bias,
            steps,
            pending: None,
        }
    }

    /// The weights with the pending update applied (row-major `C × d`).
    pub(crate) fn weights(&self, classes: usize) -> Cow<'_, [f32]> {
        let Some(p) = &self.pending else {
            return Cow::Borrowed(&self.weights);
        };
        let d = p.unit.len();
        let mut w = self.weights.clone();
        if d > 0 {
            for (row, &c) in w.chunks_exact_mut(d).zip(&p.coef).take(classes) {
                scale_add_f32(row, p.keep, c, &p.unit);
            }
        }
        Cow::Owned(w)
    }

    /// Applies the pending update.
    fn settle(&mut self) {
        if let Some(p) = self.pending.take() {
            let d = p.unit.len();
            if d > 0 {
                for (row, &c) in self.weights.chunks_exact_mut(d).zip(&p.coef) {
                    scale_add_f32(row, p.keep, c, &p.unit);
                }
            }
        }
    }

    pub(crate) fn add_class(&mut self, dim: usize) {
        self.weights.extend(std::iter::repeat_n(0.0, dim));
        self.bias.push(0.0);
        if let Some(p) = &mut self.pending {
            p.coef.push(0.0);
        }
    }

    pub(crate) fn remove_class(&mut self, i: usize, dim: usize) {
        if i < self.bias.len() {
            self.weights.drain(i * dim..(i + 1) * dim);
            self.bias.remove(i);
            if let Some(p) = &mut self.pending {
                if i < p.coef.len() {
                    p.coef.remove(i);
                }
            }
        }
    }

    /// One step on `x` of class `idx`. `ctx` already includes `x` in its statistics.
    pub(crate) fn update(&mut self, idx: usize, x: &[f32], ctx: &Ctx<'_>) {
        let d = ctx.dim;
        let cfg = ctx.config;
        // z in f64, then its direction in f32 (bounded, so nothing overflows).
        let (shift, scale) = centered_transform(ctx.source, cfg.standardize);
        let z: Vec<f64> = x
            .iter()
            .zip(&shift)
            .zip(&scale)
            .map(|((&v, m), s)| (f64::from(v) - m) * s)
            .collect();
        let norm2: f64 = z.iter().map(|v| v * v).sum();
        let norm = norm2.sqrt();
        let inv = if norm > 0.0 && norm.is_finite() {
            1.0 / norm
        } else {
            0.0
        };
        let unit: Vec<f32> = z.iter().map(|v| (v * inv) as f32).collect();
        let norm = if inv > 0.0 { norm } else { 0.0 };

        // One pass: apply the previous step's update and score this sample.
        let pending = self.pending.take();
        let mut p: Vec<f64> = Vec::with_capacity(self.bias.len());
        for (c, (row, &b)) in self.weights.chunks_exact_mut(d).zip(&self.bias).enumerate() {
            let dot = match &pending {
                Some(pd) => {
                    let coef = pd.coef.get(c).copied().unwrap_or(0.0);
                    scale_add_dot_f32(row, pd.keep, coef, &pd.unit, &unit)
                }
                None => dot_f32(row, &unit),
            };
            p.push(norm * f64::from(dot) + f64::from(b));
        }
        let max = p.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for v in p.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        if sum > 0.0 && sum.is_finite() {
            p.iter_mut().for_each(|v| *v /= sum);
        }

        let t = self.steps as f64;
        let lr = cfg.effective_sgd_learning_rate() / (1.0 + cfg.effective_sgd_lr_decay() * t);
        let weight = if cfg.sgd_class_balance {
            let total = ctx.source.count() as f64;
            let classes = ctx.classes.len().max(1) as f64;
            let n = ctx
                .classes
                .get(idx)
                .map_or(1.0, |c| c.stats.count().max(1) as f64);
            (total / (classes * n)).clamp(BALANCE_RANGE.0, BALANCE_RANGE.1)
        } else {
            1.0
        };
        let step = lr * weight / (1.0 + if norm > 0.0 { norm2 } else { 0.0 });
        let keep = (1.0 - lr * cfg.effective_sgd_l2()).max(0.0) as f32;
        let mut coef = Vec::with_capacity(p.len());
        for (c, (b, pc)) in self.bias.iter_mut().zip(&p).enumerate() {
            let g = pc - if c == idx { 1.0 } else { 0.0 };
            coef.push((-step * g * norm) as f32);
            *b += (-step * g) as f32;
        }
        self.pending = Some(Pending { keep, coef, unit });
        self.steps += 1;
    }

    /// Sample-weighted average of two heads' rows (approximate: softmax regression is not
    /// linear in its data). Rows of classes only in one head are taken as they are.
    /// `mapping[j]` is the index in `self` of `other`'s class `j`, if shared.
    pub(crate) fn merge(
        &mut self,
        other: &SgdState,
        mapping: &[Option<usize>],
        samples: (u64, u64),
        dim: usize,
    ) {
        self.settle();
        let theirs = other.weights(other.bias.len());
        let total = (samples.0 + samples.1) as f64;
        let (wa, wb) = if total > 0.0 {
            (samples.0 as f64 / total, samples.1 as f64 / total)
        } else {
            (0.5, 0.5)
        };
        for (j, m) in mapping.iter().enumerate() {
            let (Some(src), Some(&bj)) = (theirs.get(j * dim..(j + 1) * dim), other.bias.get(j))
            else {
                continue;
            };
            match m {
                Some(i) => {
                    if let Some(dst) = self.weights.get_mut(i * dim..(i + 1) * dim) {
                        for (a, &b) in dst.iter_mut().zip(src) {
                            *a = (wa * f64::from(*a) + wb * f64::from(b)) as f32;
                        }
                    }
                    if let Some(a) = self.bias.get_mut(*i) {
                        *a = (wa * f64::from(*a) + wb * f64::from(bj)) as f32;
                    }
                }
                None => {
                    self.weights.extend_from_slice(src);
                    self.bias.push(bj);
                }
            }
        }
        self.steps += other.steps;
    }

    /// Predictor parts: the weights (pending update applied); inputs centered (and
    /// standardized when configured) with the current source statistics.
    pub(crate) fn snapshot(&self, ctx: &Ctx<'_>) -> PredictorParts {
        let (shift, scale) = centered_transform(ctx.source, ctx.config.standardize);
        PredictorParts::from_f64(
            ctx.classes.iter().map(|c| c.name.clone()).collect(),
            self.weights(self.bias.len()).iter().map(|&v| f64::from(v)),
            self.bias.iter().map(|&v| f64::from(v)),
            &shift,
            &scale,
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::head::tests::{blobs, train, BACKBONE};
    use crate::head::{Algorithm, Head, HeadConfig, Learner};

    #[test]
    fn deferred_update_equals_eager_update() {
        // Settling after every step must give bit-identical weights to deferring.
        let d = 40; // not a multiple of the kernel width
        let (data, _) = blobs(6, d, 5, 8, 0, 2.0, 1.0);
        let cfg = HeadConfig {
            algorithm: Algorithm::Sgd,
            ..HeadConfig::default()
        };
        let lazy = train(&cfg, d, &data);
        let mut eager = Head::new(&cfg, d, BACKBONE);
        for (x, y) in &data {
            eager.update(x, y).unwrap();
            if let Learner::Sgd(s) = &mut eager.learner {
                s.settle();
                assert!(s.pending.is_none());
            }
        }
        let (Learner::Sgd(a), Learner::Sgd(b)) = (&lazy.learner, &eager.learner) else {
            unreachable!()
        };
        assert!(a.pending.is_some());
        assert_eq!(a.weights(5).as_ref(), b.weights.as_slice());
        assert_eq!(a, b);
        assert_eq!(lazy.to_bytes().unwrap(), eager.to_bytes().unwrap());
    }
}
