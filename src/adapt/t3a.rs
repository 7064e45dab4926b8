//! T3A (Iwasawa & Matsuo, NeurIPS 2021), backprop-free test-time classifier adjustment: per
//! class, a bounded support of confidently pseudo-labeled target embeddings (lowest entropy
//! kept); the adjusted classifier scores the cosine to each class's prototype, the weighted
//! mean of its normalized head weight row and its normalized supports.

use std::sync::Arc;

use super::AdaptConfig;
use crate::head::predictor::normalize;
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
    temperature: f32,
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
            temperature: config.t3a_temperature as f32,
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

    /// The adjusted classifier for `head`, or `None` while no class has supports.
    pub fn classifier(&mut self, head: &Predictor) -> Option<Predictor> {
        self.sync(head);
        if self.classes.iter().all(Vec::is_empty) || head.is_empty() {
            return None;
        }
        let parts = head.parts();
        let d = parts.dim();
        let mut weights = Vec::with_capacity(self.classes.len() * d);
        for (k, support) in self.classes.iter().enumerate() {
            // The head's own prototype counts as `support` samples: pseudo-labels can move a
            // class at most halfway, so a head learned from many labels is not overridden by
            // a few confident guesses.
            let prior = self.support as f32;
            let mut w: Vec<f32> = parts.weights.get(k * d..(k + 1) * d)?.to_vec();
            normalize(&mut w);
            w.iter_mut().for_each(|v| *v *= prior);
            for e in support {
                let z = features(head, &e.x);
                w.iter_mut().zip(&z).for_each(|(a, b)| *a += b);
            }
            let n = support.len() as f32 + prior;
            w.iter_mut().for_each(|v| *v /= n * self.temperature);
            weights.extend(w);
        }
        let adjusted = PredictorParts {
            labels: parts.labels.clone(),
            weights,
            bias: vec![0.0; self.classes.len()],
            shift: parts.shift.clone(),
            scale: parts.scale.clone(),
            l2_normalize: true,
            // The head's scorer judges novelty (`Adapted::predict`).
            open: None,
        };
        Some(Predictor::new(Arc::new(adjusted), head.version()))
    }
}
