//! `adaptd eval --review K,…`: does the review queue's rule pick the inputs worth labeling? A
//! head starts from the first 2 training samples of each class; the rest of the training stream
//! goes by once. `review` labels the inputs the rule offers (unknown to the open set, or the top
//! two scores within `--review-margin`, as `{root}/review`), up to K; `random` labels K random
//! inputs of the same stream. Test accuracy after K labels, averaged over seeded stream orders.
//! See docs/learners.md, "Review queue".

use anyhow::{Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use super::prequential::Data;
use crate::head::{Algorithm, Head, HeadConfig};

/// Labeled samples of each class a head starts from.
const START_PER_CLASS: usize = 2;

/// One learner at one budget.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReviewResult {
    pub learner: String,
    /// Labels added beyond the start.
    pub labels: usize,
    /// Test accuracy of the start (before any label is added).
    pub start: f64,
    /// Labels chosen by the review rule (fewer when the stream offered fewer).
    pub review: f64,
    /// As many labels, chosen at random from the stream.
    pub random: f64,
    /// Labels the rule found, on average (≤ `labels`).
    pub review_labels: f64,
    pub orders: usize,
}

/// The report of `--review`.
#[derive(Debug, Clone, Serialize)]
pub struct ReviewReport {
    pub dataset: String,
    pub margin: f32,
    pub open_set_frr: f64,
    pub seed: u64,
    pub results: Vec<ReviewResult>,
}

impl ReviewReport {
    /// A text table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{}: start {START_PER_CLASS}/class, review rule: unknown (frr {:.2}) or margin < {:.2}\n\
             learner  labels  start  review  random  (rule found)\n",
            self.dataset, self.open_set_frr, self.margin
        );
        for r in &self.results {
            s.push_str(&format!(
                "{:<8} {:>6}  {:.3}  {:.3}   {:.3}   {:.1}\n",
                r.learner, r.labels, r.start, r.review, r.random, r.review_labels
            ));
        }
        s
    }
}

/// What `--review` runs.
#[derive(Debug, Clone)]
pub struct ReviewPlan {
    /// Labels to add (each a run).
    pub budgets: Vec<usize>,
    /// The rule's margin.
    pub margin: f32,
    /// Seeded stream orders to average over.
    pub orders: usize,
    pub seed: u64,
}

/// Runs every learner at every budget of `plan`.
pub fn run(
    data: &Data,
    learners: &[Algorithm],
    config: &HeadConfig,
    backbone: &str,
    plan: &ReviewPlan,
) -> Result<Vec<ReviewResult>> {
    let ReviewPlan {
        budgets,
        margin,
        orders,
        seed,
    } = plan.clone();
    let mut out = Vec::new();
    for &algorithm in learners {
        let config = HeadConfig {
            algorithm,
            ..config.clone()
        };
        for &k in &budgets {
            let (mut start, mut review, mut random, mut found) = (0.0, 0.0, 0.0, 0.0);
            let n = orders.max(1);
            for o in 0..n {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(o as u64));
                let mut order: Vec<usize> = (0..data.train.len()).collect();
                order.shuffle(&mut rng);
                let (first, rest) = split_start(data, &order);
                let base = teach(&config, data, backbone, &first)?;
                start += accuracy(&base, data);
                // Review: the stream goes by; the rule picks.
                let mut head = base.clone();
                let mut picked = 0;
                for &i in &rest {
                    if picked == k {
                        break;
                    }
                    let (x, y) = &data.train[i];
                    let p = head.snapshot();
                    let pred = p.predict(x, 2).context("predicting a streamed sample")?;
                    if pred.worth_review(p.threshold(config.open_set_frr), margin) {
                        head.update(x, &data.classes[*y])?;
                        picked += 1;
                        if head.candidates_due() {
                            head.refresh_candidates();
                        }
                    }
                }
                review += accuracy(&head, data);
                found += picked as f64;
                // Random: as many labels as the budget, from the same stream.
                let mut head = base;
                let mut pool = rest.clone();
                pool.shuffle(&mut rng);
                for &i in pool.iter().take(k) {
                    let (x, y) = &data.train[i];
                    head.update(x, &data.classes[*y])?;
                    if head.candidates_due() {
                        head.refresh_candidates();
                    }
                }
                random += accuracy(&head, data);
            }
            let n = n as f64;
            out.push(ReviewResult {
                learner: algorithm.as_str().to_string(),
                labels: k,
                start: start / n,
                review: review / n,
                random: random / n,
                review_labels: found / n,
                orders: orders.max(1),
            });
        }
    }
    Ok(out)
}

/// The first [`START_PER_CLASS`] samples of each class in `order`, and the rest in order.
fn split_start(data: &Data, order: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut seen = vec![0usize; data.classes.len()];
    let (mut first, mut rest) = (Vec::new(), Vec::new());
    for &i in order {
        let y = data.train[i].1;
        if seen[y] < START_PER_CLASS {
            seen[y] += 1;
            first.push(i);
        } else {
            rest.push(i);
        }
    }
    (first, rest)
}

/// A head taught `idx` in order, with snapshots and candidates as the daemon takes them.
fn teach(config: &HeadConfig, data: &Data, backbone: &str, idx: &[usize]) -> Result<Head> {
    let mut head = Head::new(config, data.dim, backbone);
    for &i in idx {
        let (x, y) = &data.train[i];
        head.update(x, &data.classes[*y])
            .with_context(|| format!("learning a sample of {}", data.classes[*y]))?;
        if head.candidates_due() {
            head.refresh_candidates();
        }
        head.snapshot();
    }
    Ok(head)
}

fn accuracy(head: &Head, data: &Data) -> f64 {
    super::prequential::accuracy_on(head, &data.test, &data.classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_takes_the_first_samples_of_each_class() {
        let v = vec![0.0f32; 2];
        let data = Data {
            classes: vec!["a".into(), "b".into()],
            dim: 2,
            train: [0, 0, 1, 0, 1, 1, 0]
                .iter()
                .map(|&y| (v.clone(), y))
                .collect(),
            test: Vec::new(),
        };
        let (first, rest) = split_start(&data, &[6, 5, 4, 3, 2, 1, 0]);
        assert_eq!(first, [6, 5, 4, 3]);
        assert_eq!(rest, [2, 1, 0]);
    }
}
