//! T3A (Iwasawa & Matsuo, NeurIPS 2021), backprop-free test-time classifier adjustment: per
//! class, a bounded support of confidently pseudo-labeled target embeddings (lowest entropy
//! kept); once every class has a support, the adjusted classifier turns each class's head
//! weight row toward the mean direction of its supports (the row counting as `t3a_support`
//! samples), keeping the row's length and bias.

use std::sync::Arc;

use super::AdaptConfig;
use crate::head::linalg::normalize;
use crate::head::{Predictor, PredictorParts};

struct Entry {
    entropy: f32,
    /// The raw embedding (mapped into the head's input space when the classifier is built,
    /// so a head whose standardization moved still sees consistent supports).
    x: Vec<f32>,
}

/// Supports per class, keyed by label.
pub struct T3a {
    confidence: f32,
    support: usize,
    version: Option<u64>,
    labels: Vec<String>,
    classes: Vec<Vec<Entry>>,
    added: u64,
}

/// The head's input transform of `x`, always normalized (T3A compares directions).
fn features(head: &Predictor, x: &[f32]) -> Vec<f32> {
    let mut z = head.features(x);
    normalize(&mut z);
    z
}

impl T3a {
    /// Empty supports.
    pub fn new(config: &AdaptConfig) -> T3a {
        T3a {
            confidence: config.t3a_confidence as f32,
            support: config.t3a_support,
            version: None,
            labels: Vec::new(),
            classes: Vec::new(),
            added: 0,
        }
    }

    /// Pseudo-labels accepted so far.
    pub fn added(&self) -> u64 {
        self.added
    }

    /// Supports currently held, over all classes.
    pub fn held(&self) -> usize {
        self.classes.iter().map(Vec::len).sum()
    }

    /// Drops every support.
    pub fn clear(&mut self) {
        self.classes.iter_mut().for_each(Vec::clear);
        self.added = 0;
    }

    /// Follows the head's class table (supports of labels that remain are kept).
    fn sync(&mut self, head: &Predictor) {
        if self.version == Some(head.version()) && self.labels == head.labels() {
            return;
        }
        let mut old: Vec<(String, Vec<Entry>)> = std::mem::take(&mut self.labels)
            .into_iter()
            .zip(std::mem::take(&mut self.classes))
            .collect();
        self.labels = head.labels().to_vec();
        self.classes = self
            .labels
            .iter()
            .map(|l| {
                old.iter_mut()
                    .find(|(k, _)| k == l)
                    .map(|(_, e)| std::mem::take(e))
                    .unwrap_or_default()
            })
            .collect();
        self.version = Some(head.version());
    }

    /// Offers one unlabeled embedding; returns whether it entered a support (only if the head's
    /// top probability reaches the confidence threshold).
    pub fn observe(&mut self, x: &[f32], head: &Predictor) -> bool {
        self.sync(head);
        let Ok(p) = head.probabilities(x) else {
            return false;
        };
        let Some((k, &top)) = p
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        else {
            return false;
        };
        if top < self.confidence {
            return false;
        }
        let entropy: f32 = p.iter().filter(|&&q| q > 0.0).map(|&q| -q * q.ln()).sum();
        let Some(support) = self.classes.get_mut(k) else {
            return false;
        };
        let entry = Entry {
            entropy,
            x: x.to_vec(),
        };
        if support.len() < self.support {
            support.push(entry);
        } else {
            let worst = support
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.entropy.total_cmp(&b.1.entropy))
                .map(|(i, e)| (i, e.entropy));
            match worst {
                Some((i, e)) if entropy < e => support[i] = entry,
                _ => return false,
            }
        }
        self.added += 1;
        true
    }

    /// The adjusted classifier for `head`, or `None` while some class has no support.
    ///
    /// Each class's weight row turns toward the mean direction of its supports, the row itself
    /// counting as `t3a_support` samples, and keeps its length and its bias (not a bias-free
    /// cosine classifier, which differs from a linear head before any support). Nothing moves
    /// until every class has a support: moving only the classes that received the first
    /// pseudo-labels pulls the shifted frames toward them, which then attract the next
    /// pseudo-labels (the collapse `docs/adaptation.md` measures).
    pub fn classifier(&mut self, head: &Predictor) -> Option<Predictor> {
        self.sync(head);
        if self.classes.iter().any(Vec::is_empty) || head.is_empty() {
            return None;
        }
        let parts = head.parts();
        let d = parts.dim();
        let mut weights = Vec::with_capacity(self.classes.len() * d);
        for (k, support) in self.classes.iter().enumerate() {
            let row = parts.weights.get(k * d..(k + 1) * d)?;
            let len = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if len <= 0.0 {
                weights.extend_from_slice(row);
                continue;
            }
            let prior = self.support as f32;
            let mut w: Vec<f32> = row.iter().map(|v| v / len * prior).collect();
            for e in support {
                let z = features(head, &e.x);
                w.iter_mut().zip(&z).for_each(|(a, b)| *a += b);
            }
            normalize(&mut w);
            weights.extend(w.iter().map(|v| v * len));
        }
        let adjusted = PredictorParts {
            labels: parts.labels.clone(),
            weights,
            bias: parts.bias.clone(),
            shift: parts.shift.clone(),
            scale: parts.scale.clone(),
            l2_normalize: parts.l2_normalize,
            // The head's scorer judges novelty (`Adapted::predict`).
            open: None,
        };
        Some(Predictor::new(Arc::new(adjusted), head.version()))
    }
}
