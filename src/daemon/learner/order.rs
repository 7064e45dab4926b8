//! Puts the steps that workers finish in any order back into arrival order.

use std::collections::BTreeMap;

use super::Step;

/// Steps waiting for the ones before them.
#[derive(Debug, Default)]
pub struct InOrder {
    next: u64,
    waiting: BTreeMap<u64, Step>,
}

impl InOrder {
    /// Holds a step until every earlier one has been taken.
    pub fn insert(&mut self, step: Step) {
        self.waiting.insert(step.seq, step);
    }

    /// The steps that are next in arrival order, at most `max`.
    pub fn take_ready(&mut self, max: usize) -> Vec<Step> {
        let mut ready = Vec::new();
        while ready.len() < max {
            match self.waiting.remove(&self.next) {
                Some(s) => {
                    ready.push(s);
                    self.next += 1;
                }
                None => break,
            }
        }
        ready
    }

    /// Steps held back.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// True when nothing is held back.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::learner::Work;
    use rumqttc::{Publish, QoS};

    fn step(seq: u64) -> Step {
        Step {
            seq,
            publish: Publish::new("t", QoS::AtLeastOnce, vec![]),
            work: Work::Lost,
        }
    }

    #[test]
    fn releases_only_contiguous_steps_in_order() {
        let mut o = InOrder::default();
        o.insert(step(2));
        o.insert(step(1));
        assert!(o.take_ready(10).is_empty(), "0 is missing");
        o.insert(step(0));
        let seqs: Vec<u64> = o.take_ready(2).iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [0, 1]);
        o.insert(step(3));
        let seqs: Vec<u64> = o.take_ready(10).iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [2, 3]);
        assert!(o.is_empty());
    }
}
