//! What inference reads and the learner writes: the prediction snapshot (swapped, never waited
//! on) and the ring of recent predictions' embeddings that `{root}/feedback` refers to.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};

use crate::head::Predictor;

/// The current prediction snapshot. The lock is held for a pointer copy, never across work.
pub struct PredictorSlot(RwLock<Predictor>);

impl PredictorSlot {
    /// A slot holding `p`.
    pub fn new(p: Predictor) -> PredictorSlot {
        PredictorSlot(RwLock::new(p))
    }

    /// The current snapshot.
    pub fn get(&self) -> Predictor {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the snapshot.
    pub fn set(&self, p: Predictor) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = p;
    }
}

/// Recent predictions' embeddings by id, for `{root}/feedback`; bounded, oldest forgotten.
#[derive(Debug)]
pub struct FeedbackRing {
    entries: Mutex<VecDeque<(String, Arc<Vec<f32>>)>>,
    cap: usize,
}

impl FeedbackRing {
    /// An empty ring of `cap` entries.
    pub fn new(cap: usize) -> FeedbackRing {
        FeedbackRing {
            entries: Mutex::new(VecDeque::with_capacity(cap)),
            cap,
        }
    }

    /// Remembers a prediction's embedding.
    pub fn insert(&self, id: String, embedding: Arc<Vec<f32>>) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() == self.cap {
            e.pop_front();
        }
        e.push_back((id, embedding));
    }

    /// The embedding of the newest prediction with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Vec<f32>>> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .find(|(i, _)| i == id)
            .map(|(_, e)| e.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_ring_is_bounded() {
        let r = FeedbackRing::new(2);
        for i in 0..3 {
            r.insert(format!("p{i}"), Arc::new(vec![i as f32]));
        }
        assert!(r.get("p0").is_none());
        assert_eq!(r.get("p2").map(|e| e[0]), Some(2.0));
    }
}
