//! `auto`, the default learner: it keeps what `ncm`, `slda` and `ridge` need (the normalized
//! class sums and the shared within-class scatter) and predicts with one of ten candidates
//! (those learners over a scale-free grid of their regularization), chosen from the board's own
//! labels: by a leave-one-out check of the recent labeled samples ([`loo`]) once it can score
//! every class, before that by the prequential record (each labeled sample scored with every
//! candidate's last snapshot before it is learned; the candidate right most often over the last
//! [`WINDOW`]). A prediction snapshot computes only the chosen candidate; the candidates'
//! snapshots and the check are refreshed separately and less often
//! (`Head::refresh_candidates`), so teaching shows in predictions as fast as with the single
//! learner chosen (docs/learners.md, "auto").

use std::collections::VecDeque;
use std::sync::Arc;

use super::loo;
use super::ncm::NcmState;
use super::predictor::{Predictor, PredictorParts};
use super::ridge::{self, Penalty};
use super::scatter::ScatterState;
use super::slda::{self, Target};
use super::{Ctx, HeadConfig};

/// Scored samples in the window that decides the choice: long enough that a difference of a
/// few samples is not noise, short enough that the choice follows the data as it grows (the
/// best learner at 20 samples is rarely the best at 1000).
pub(crate) const WINDOW: usize = 100;

/// One way `auto` can predict.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Candidate {
    /// `ncm` on the raw embeddings (cosine to the mean of normalized embeddings).
    Ncm,
    /// `ncm` on standardized embeddings.
    NcmStd,
    /// `slda` with shrinkage ε toward the mean-variance identity.
    Slda(f64),
    /// `ridge` with λ = α · tr(XᵀX)/d.
    Ridge(f64),
}

/// The candidates, in order of preference when they tie (cheap and robust first). Their
/// number is bounded by the 16 bits of a window entry.
pub(crate) const CANDIDATES: [Candidate; 10] = [
    Candidate::Ncm,
    Candidate::NcmStd,
    Candidate::Slda(0.5),
    Candidate::Slda(0.1),
    Candidate::Slda(0.01),
    Candidate::Slda(0.001),
    Candidate::Ridge(1.0),
    Candidate::Ridge(0.1),
    Candidate::Ridge(0.01),
    Candidate::Ridge(0.001),
];

impl Candidate {
    /// The name in `info`, `stats` and head files: `ncm`, `ncm_std`, `slda@0.1`, `ridge@0.01`.
    pub(crate) fn name(self) -> String {
        match self {
            Candidate::Ncm => "ncm".into(),
            Candidate::NcmStd => "ncm_std".into(),
            Candidate::Slda(e) => format!("slda@{e}"),
            Candidate::Ridge(a) => format!("ridge@{a}"),
        }
    }

    fn parts(self, state: &AutoState, ctx: &Ctx<'_>) -> PredictorParts {
        self.parts_and_hits(state, ctx, &[]).0
    }

    /// The candidate's parts and how many of `samples` (class index, embedding) it labels
    /// right by leave-one-out ([`loo`]), from the same solve.
    fn parts_and_hits(
        self,
        state: &AutoState,
        ctx: &Ctx<'_>,
        samples: &[(usize, &[f32])],
    ) -> (PredictorParts, usize) {
        let xs: Vec<&[f32]> = samples.iter().map(|&(_, x)| x).collect();
        match self {
            Candidate::Ncm | Candidate::NcmStd => {
                let standardize = self == Candidate::NcmStd;
                let config = HeadConfig {
                    standardize,
                    ..ctx.config.clone()
                };
                let ctx = Ctx {
                    config: &config,
                    ..*ctx
                };
                let hits = loo::ncm_hits(&state.ncm, &ctx, samples);
                (state.ncm.snapshot(&ctx), hits)
            }
            Candidate::Slda(eps) => {
                let solved = slda::solve_extra(&state.scatter, ctx, eps, Target::MeanVariance, &xs);
                let hits = solved.as_ref().map_or(0, |s| {
                    loo::hits(samples, &loo::slda_scores(s, ctx.classes, samples))
                });
                let parts = slda::parts_from(solved.map(|s| s.solution), ctx, 1.0, "auto");
                (parts, hits)
            }
            Candidate::Ridge(alpha) => {
                let solved = ridge::solve_extra(&state.scatter, ctx, Penalty::Relative(alpha), &xs);
                let hits = solved
                    .as_ref()
                    .map_or(0, |s| loo::hits(samples, &loo::ridge_scores(s, samples)));
                let t = f64::from(ctx.config.effective_ridge_temperature());
                let parts = slda::parts_from(solved.map(|s| s.solution), ctx, t, "auto");
                (parts, hits)
            }
        }
    }
}

/// The names of [`CANDIDATES`], in order.
pub(crate) fn candidate_names() -> Vec<String> {
    CANDIDATES.iter().map(|c| c.name()).collect()
}

/// How the candidates did on the labeled stream.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Record {
    /// The last [`WINDOW`] scored samples, oldest first: bit k set = candidate k was right.
    pub window: VecDeque<u16>,
    /// Samples scored since the head was created.
    pub tested: u64,
    /// Per candidate, samples it got right since the head was created.
    pub hits: Vec<u64>,
    /// The candidate predictions come from (index into [`CANDIDATES`]).
    pub choice: usize,
    /// The last leave-one-out check, when it scored enough samples to decide the choice
    /// (memory only: not in head files).
    pub loo: Option<Loo>,
}

/// A leave-one-out check of the recent labeled samples ([`loo`]).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Loo {
    /// Samples scored.
    pub scored: usize,
    /// Per candidate, samples it labeled right.
    pub hits: Vec<usize>,
}

impl Default for Record {
    fn default() -> Record {
        Record {
            window: VecDeque::new(),
            tested: 0,
            hits: vec![0; CANDIDATES.len()],
            choice: 0,
            loo: None,
        }
    }
}

impl Record {
    fn window_hits(&self, k: usize) -> usize {
        self.window.iter().filter(|&&m| m & (1 << k) != 0).count()
    }

    /// Adds one scored sample and, unless a leave-one-out check decides, chooses again.
    fn push(&mut self, mask: u16) {
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(mask);
        self.tested += 1;
        for (k, h) in self.hits.iter_mut().enumerate() {
            if mask & (1 << k) != 0 {
                *h += 1;
            }
        }
        if self.loo.is_none() {
            let scores: Vec<(usize, usize)> = (0..CANDIDATES.len())
                .map(|k| (self.window_hits(k), 0))
                .collect();
            self.choose(&scores);
        }
    }

    /// Keeps a leave-one-out check and chooses by it if it scored enough samples and every
    /// class can be scored (has two samples or more: a check blind to the classes taught once
    /// judges the candidates on the others, and one-shot classes are where they differ most).
    /// Otherwise an earlier check's choice stays, or the prequential window decides.
    fn set_loo(&mut self, scored: usize, hits: Vec<usize>, every_class: bool) {
        if scored < loo::MIN_SCORED || hits.len() != CANDIDATES.len() || !every_class {
            return;
        }
        // A tie goes to the candidate the prequential window prefers: on a few dozen samples
        // the check often ties, and the window is the other evidence at hand.
        let scores: Vec<(usize, usize)> = hits
            .iter()
            .enumerate()
            .map(|(k, &h)| (h, self.window_hits(k)))
            .collect();
        self.choose(&scores);
        self.loo = Some(Loo { scored, hits });
    }

    /// The candidate with the best score (compared in order of its parts); on a tie the
    /// current choice stays, else the first in [`CANDIDATES`] order.
    fn choose(&mut self, scores: &[(usize, usize)]) {
        let best = scores.iter().copied().max().unwrap_or((0, 0));
        if scores.get(self.choice).copied() != Some(best) {
            self.choice = scores.iter().position(|&s| s == best).unwrap_or(0);
        }
    }
}

/// The learner state of an `auto` head.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AutoState {
    pub ncm: NcmState,
    pub scatter: ScatterState,
    pub record: Record,
}

/// A prediction snapshot of every candidate, taken together: the labeled samples that arrive
/// until the next snapshot are scored with them.
#[derive(Debug)]
pub(crate) struct Candidates {
    predictors: Vec<Predictor>,
}

impl AutoState {
    pub(crate) fn new(dim: usize) -> AutoState {
        AutoState {
            ncm: NcmState::default(),
            scatter: ScatterState::new(dim),
            record: Record::default(),
        }
    }

    /// Scores `x` (labeled `label`) with every candidate before it is learned. A label the
    /// snapshot does not know yet is not scored: every candidate misses it alike.
    pub(crate) fn score(&mut self, candidates: &Candidates, x: &[f32], label: &str) {
        let Some(first) = candidates.predictors.first() else {
            return;
        };
        if !first.labels().iter().any(|l| l == label) {
            return;
        }
        let mut mask = 0u16;
        let mut z = Vec::with_capacity(x.len());
        for (k, p) in candidates.predictors.iter().enumerate() {
            let best = p.top1(x, &mut z).and_then(|i| p.labels().get(i));
            if best.map(String::as_str) == Some(label) {
                mask |= 1 << k;
            }
        }
        self.record.push(mask);
    }

    /// The chosen candidate's parts: what predictions use (at most one d × d solve).
    pub(crate) fn snapshot(&self, ctx: &Ctx<'_>) -> PredictorParts {
        CANDIDATES
            .get(self.record.choice)
            .copied()
            .unwrap_or(Candidate::Ncm)
            .parts(self, ctx)
    }

    /// Every candidate's snapshot (8 d × d solves), to score the labeled samples that follow,
    /// and the leave-one-out check of `samples` (class index, embedding) with the same solves;
    /// the check decides the choice once it scores [`loo::MIN_SCORED`] samples.
    pub(crate) fn refresh(
        &mut self,
        ctx: &Ctx<'_>,
        samples: &[(usize, &[f32])],
    ) -> Arc<Candidates> {
        let (predictors, hits): (Vec<Predictor>, Vec<usize>) = CANDIDATES
            .iter()
            .map(|c| {
                let (parts, hits) = c.parts_and_hits(self, ctx, samples);
                (Predictor::new(Arc::new(parts), 0), hits)
            })
            .unzip();
        let every_class = ctx.classes.iter().all(|c| c.stats.count() >= 2);
        self.record.set_loo(samples.len(), hits, every_class);
        Arc::new(Candidates { predictors })
    }
}

/// `auto`'s choice and how each candidate did (`head.auto` in `{root}/info` and `stats`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AutoSummary {
    /// The candidate predictions come from.
    pub choice: String,
    /// Labeled samples scored since the head was created.
    pub tested: u64,
    /// Scored samples in the prequential window (at most [`WINDOW`]).
    pub window: usize,
    /// What decided the choice: `"leave_one_out"` (the check of the recent labeled samples,
    /// once it scores enough of them) or `"prequential"` (the window).
    pub chosen_by: &'static str,
    /// Samples the last deciding leave-one-out check scored (0 when the window decides).
    pub loo_scored: usize,
    /// Every candidate, in preference order.
    pub candidates: Vec<CandidateSummary>,
}

/// One candidate of [`AutoSummary`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CandidateSummary {
    /// `ncm`, `ncm_std`, `slda@ε`, `ridge@α`.
    pub name: String,
    /// Prequential accuracy over the window (`None` before anything was scored).
    pub recent_accuracy: Option<f64>,
    /// Prequential accuracy since the head was created.
    pub accuracy: Option<f64>,
    /// Leave-one-out accuracy on the recent labeled samples (`None` when the window decides).
    pub loo_accuracy: Option<f64>,
}

impl Record {
    pub(crate) fn summary(&self) -> AutoSummary {
        let w = self.window.len();
        AutoSummary {
            choice: CANDIDATES
                .get(self.choice)
                .copied()
                .unwrap_or(Candidate::Ncm)
                .name(),
            tested: self.tested,
            window: w,
            chosen_by: if self.loo.is_some() {
                "leave_one_out"
            } else {
                "prequential"
            },
            loo_scored: self.loo.as_ref().map_or(0, |l| l.scored),
            candidates: CANDIDATES
                .iter()
                .enumerate()
                .map(|(k, c)| CandidateSummary {
                    name: c.name(),
                    recent_accuracy: (w > 0).then(|| self.window_hits(k) as f64 / w as f64),
                    accuracy: (self.tested > 0).then(|| {
                        self.hits.get(k).copied().unwrap_or(0) as f64 / self.tested as f64
                    }),
                    loo_accuracy: self.loo.as_ref().and_then(|l| {
                        (l.scored > 0)
                            .then(|| l.hits.get(k).copied().unwrap_or(0) as f64 / l.scored as f64)
                    }),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_choice_follows_the_window_and_keeps_ties() {
        let mut r = Record::default();
        assert_eq!(r.choice, 0);
        // Candidate 3 right, others wrong: it is chosen.
        r.push(1 << 3);
        assert_eq!(r.choice, 3);
        // A tie between 3 and 5 keeps 3.
        r.push(1 << 5);
        assert_eq!(r.choice, 3);
        // 5 ahead: 5.
        r.push(1 << 5);
        assert_eq!(r.choice, 5);
        // The window forgets: WINDOW samples where only candidate 1 is right.
        for _ in 0..WINDOW {
            r.push(1 << 1);
        }
        assert_eq!(r.choice, 1);
        assert_eq!(r.window.len(), WINDOW);
        assert_eq!(r.tested, 3 + WINDOW as u64);
        assert_eq!(r.hits[5], 2);
        let s = r.summary();
        assert_eq!(s.choice, "ncm_std");
        assert_eq!(s.candidates[1].recent_accuracy, Some(1.0));
        assert_eq!(s.candidates[5].recent_accuracy, Some(0.0));
    }

    #[test]
    fn names_are_distinct() {
        let names = candidate_names();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        assert!(CANDIDATES.len() <= 16);
    }
}
