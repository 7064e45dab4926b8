//! Linear heads over embeddings: the learners (`auto`, `ncm`, `slda`, `ridge`, `sgd`), their shared
//! class table and source statistics, immutable prediction snapshots and the head file format.
//!
//! Pure computation, no I/O. A [`Head`] learns one labeled embedding at a time
//! ([`Head::update`]); [`Head::snapshot`] does the expensive work (matrix solves) once and
//! returns a [`Predictor`] that serves predictions without touching the head.
//!
//! All learners keep raw sufficient statistics: per class the count, sum and sum of squares of
//! the embeddings (f64), and for the whole head the same over all classes
//! ([`Head::source_stats`]). Standardization (config `standardize`) is applied at snapshot time
//! from these statistics, so merging and unlearning stay exact for `auto`, `ncm`, `slda` and `ridge`;
//! `sgd` standardizes each sample with the statistics current at that step.

mod auto;
mod error;
mod format;
mod journal;
pub(crate) mod linalg;
mod loo;
mod ncm;
mod openset;
pub(crate) mod predictor;
mod ridge;
mod scatter;
mod sgd;
mod slda;
mod stats;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

pub use auto::{AutoSummary, CandidateSummary};
pub use error::{validate_label, HeadError, MAX_LABEL_BYTES};
pub use format::{FORMAT_NAME, FORMAT_VERSION};
pub(crate) use predictor::PredictorParts;
pub use predictor::{Prediction, Predictor, Scored};
pub use stats::SourceStats;

use auto::{AutoState, Candidates};
pub use journal::Entry as JournalEntry;
use journal::Journal;
use ncm::NcmState;
use openset::{Calibration, OpenSetParts};
use scatter::ScatterState;
use sgd::SgdState;

/// Largest embedding dimension a head accepts (also in head files).
pub const MAX_DIM: usize = 65536;

/// Largest number of classes a head holds.
pub const MAX_CLASSES: usize = 4096;

/// The learning algorithm of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Chooses among `ncm`, `slda` and `ridge` (and their regularization) by a leave-one-out
    /// check of the recent labeled samples, before that by their prequential accuracy.
    Auto,
    /// Nearest class mean, cosine scores with a temperature (weight imprinting).
    #[default]
    Ncm,
    /// Streaming linear discriminant analysis (class means + shared covariance).
    Slda,
    /// Ridge regression on one-hot targets (exact streaming least squares).
    Ridge,
    /// Online softmax regression by stochastic gradient descent.
    Sgd,
}

impl Algorithm {
    /// All algorithms, in a fixed order.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Auto,
        Algorithm::Ncm,
        Algorithm::Slda,
        Algorithm::Ridge,
        Algorithm::Sgd,
    ];

    /// The lowercase name (`"auto"`, `"ncm"`, `"slda"`, `"ridge"`, `"sgd"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Auto => "auto",
            Algorithm::Ncm => "ncm",
            Algorithm::Slda => "slda",
            Algorithm::Ridge => "ridge",
            Algorithm::Sgd => "sgd",
        }
    }

    /// True if `unlearn` and exact `merge` are available.
    pub fn is_exact(self) -> bool {
        !matches!(self, Algorithm::Sgd)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = HeadError;

    fn from_str(s: &str) -> Result<Algorithm, HeadError> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                HeadError::BadConfig(format!(
                    "unknown algorithm {s:?} (expected auto, ncm, slda, ridge or sgd)"
                ))
            })
    }
}

/// Configuration of a head. Every field has a default; unknown fields are rejected.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HeadConfig {
    /// The learner. Default `auto` (it predicts with whichever of the other learners' ways
    /// has been right most often: docs/learners.md).
    pub algorithm: Algorithm,
    /// Standardize embeddings per dimension with the head's running source statistics.
    /// Default false.
    pub standardize: bool,
    /// `ncm`: softmax temperature on cosine scores. Default 0.05 (scale 20, as in cosine /
    /// normalized-softmax classifiers): cosine gaps of 0.05–0.2 between classes give logit
    /// gaps of 1–4, i.e. graded rather than saturated probabilities.
    pub ncm_temperature: f32,
    /// `slda`: shrinkage ε in `Λ = ((1 − ε) Σ + ε I)⁻¹`, in [0, 1]. Default 1e-4 (Hayes &
    /// Kanan).
    pub slda_shrinkage: f64,
    /// `ridge`: L2 penalty λ on the weights (not the bias), in squared embedding units summed
    /// over samples. Default 1.0: about one pseudo-sample of unit variance per dimension,
    /// which keeps the few-shot system (fewer samples than dimensions) well conditioned
    /// while data dominates soon (for standardized inputs every dimension has variance 1).
    pub ridge_lambda: f64,
    /// `ridge`: softmax temperature on the regression outputs (which are ≈ 1 for the right
    /// class and ≈ 0 otherwise). Default 0.1: a perfect 1-vs-0 output is a logit gap of 10.
    pub ridge_temperature: f32,
    /// `sgd`: base learning rate, in logit units per step (steps are normalized by the input
    /// norm). Default 0.5.
    pub sgd_learning_rate: f64,
    /// `sgd`: weight decay; each step scales the weights by `1 − lr_t · sgd_l2`. Default 1e-4.
    pub sgd_l2: f64,
    /// `sgd`: learning-rate decay, `lr_t = lr / (1 + decay · t)`. Default 1e-3 (halved after
    /// 1000 steps).
    pub sgd_lr_decay: f64,
    /// `sgd`: weight each step by inverse class frequency, `N / (C n_y)` clamped to
    /// [0.2, 5]. Default true (streams from devices are rarely balanced).
    pub sgd_class_balance: bool,
    /// Seed for any randomness. The learners are deterministic and currently draw no random
    /// numbers; kept so that future randomized variants stay reproducible. Default 0.
    pub seed: u64,
    /// Most classes the daemon lets clients create (learn or feedback with a new label, an
    /// imported or merged head); at most [`MAX_CLASSES`]. Default 1000. A limit on what
    /// clients may do, not a property of a head: never written to head files.
    #[serde(skip_serializing)]
    pub max_classes: usize,
    /// Say whether each input is like anything the head knows (`known`, `novelty` in
    /// predictions) and answer [`unknown_label`](Self::unknown_label) when it is not. Default
    /// true. Serving settings like this and the next two are the board's, not the head's:
    /// never written to head files.
    #[serde(skip_serializing)]
    pub open_set: bool,
    /// Target fraction of inputs of known classes answered as unknown, in [0, 1): the
    /// threshold is this upper quantile of the novelty of the head's recent labeled samples,
    /// each scored before it was learned. Default 0.05.
    #[serde(skip_serializing)]
    pub open_set_frr: f64,
    /// The label of a prediction that is like none of the classes. Default `unknown`.
    #[serde(skip_serializing)]
    pub unknown_label: String,
}

impl Default for HeadConfig {
    fn default() -> HeadConfig {
        HeadConfig {
            algorithm: Algorithm::Auto,
            standardize: false,
            ncm_temperature: 0.05,
            slda_shrinkage: 1e-4,
            ridge_lambda: 1.0,
            ridge_temperature: 0.1,
            sgd_learning_rate: 0.5,
            sgd_l2: 1e-4,
            sgd_lr_decay: 1e-3,
            sgd_class_balance: true,
            seed: 0,
            max_classes: 1000,
            open_set: true,
            open_set_frr: 0.05,
            unknown_label: "unknown".into(),
        }
    }
}

impl HeadConfig {
    /// Checks that every value is in range. Heads built from an invalid config use the
    /// default for each invalid value instead.
    pub fn validate(&self) -> Result<(), HeadError> {
        let bad =
            |what: &str, v: f64| HeadError::BadConfig(format!("{what} = {v} is out of range"));
        let t = f64::from(self.ncm_temperature);
        if !(t.is_finite() && t > 0.0) {
            return Err(bad("ncm_temperature", t));
        }
        if !(0.0..=1.0).contains(&self.slda_shrinkage) {
            return Err(bad("slda_shrinkage", self.slda_shrinkage));
        }
        if !(self.ridge_lambda.is_finite() && self.ridge_lambda >= 0.0) {
            return Err(bad("ridge_lambda", self.ridge_lambda));
        }
        let t = f64::from(self.ridge_temperature);
        if !(t.is_finite() && t > 0.0) {
            return Err(bad("ridge_temperature", t));
        }
        if !(self.sgd_learning_rate.is_finite() && self.sgd_learning_rate > 0.0) {
            return Err(bad("sgd_learning_rate", self.sgd_learning_rate));
        }
        if !(self.sgd_l2.is_finite() && self.sgd_l2 >= 0.0) {
            return Err(bad("sgd_l2", self.sgd_l2));
        }
        if !(self.sgd_lr_decay.is_finite() && self.sgd_lr_decay >= 0.0) {
            return Err(bad("sgd_lr_decay", self.sgd_lr_decay));
        }
        if !(0.0..1.0).contains(&self.open_set_frr) {
            return Err(bad("open_set_frr", self.open_set_frr));
        }
        validate_label(&self.unknown_label)
            .map_err(|e| HeadError::BadConfig(format!("unknown_label: {e}")))?;
        if !(1..=MAX_CLASSES).contains(&self.max_classes) {
            return Err(HeadError::BadConfig(format!(
                "max_classes = {} is out of range (1..={MAX_CLASSES})",
                self.max_classes
            )));
        }
        Ok(())
    }

    fn effective_ncm_temperature(&self) -> f32 {
        let t = self.ncm_temperature;
        if t.is_finite() && t > 0.0 {
            t
        } else {
            HeadConfig::default().ncm_temperature
        }
    }

    fn effective_slda_shrinkage(&self) -> f64 {
        if (0.0..=1.0).contains(&self.slda_shrinkage) {
            self.slda_shrinkage
        } else {
            HeadConfig::default().slda_shrinkage
        }
    }

    fn effective_ridge_lambda(&self) -> f64 {
        if self.ridge_lambda.is_finite() && self.ridge_lambda >= 0.0 {
            self.ridge_lambda
        } else {
            HeadConfig::default().ridge_lambda
        }
    }

    fn effective_ridge_temperature(&self) -> f32 {
        let t = self.ridge_temperature;
        if t.is_finite() && t > 0.0 {
            t
        } else {
            HeadConfig::default().ridge_temperature
        }
    }

    fn effective_sgd_learning_rate(&self) -> f64 {
        if self.sgd_learning_rate.is_finite() && self.sgd_learning_rate > 0.0 {
            self.sgd_learning_rate
        } else {
            HeadConfig::default().sgd_learning_rate
        }
    }

    fn effective_sgd_l2(&self) -> f64 {
        if self.sgd_l2.is_finite() && self.sgd_l2 >= 0.0 {
            self.sgd_l2
        } else {
            HeadConfig::default().sgd_l2
        }
    }

    fn effective_sgd_lr_decay(&self) -> f64 {
        if self.sgd_lr_decay.is_finite() && self.sgd_lr_decay >= 0.0 {
            self.sgd_lr_decay
        } else {
            HeadConfig::default().sgd_lr_decay
        }
    }
}

/// A class of a head and how many samples it learned from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassInfo {
    /// The label.
    pub name: String,
    /// Number of samples currently learned.
    pub samples: u64,
}

/// What the caller expects of a head file ([`Head::from_bytes`]).
#[derive(Clone, Debug)]
pub struct Expect<'a> {
    /// Required backbone hash, if any.
    pub backbone_sha256: Option<&'a str>,
    /// Required embedding dimension, if any.
    pub dim: Option<usize>,
    /// Largest accepted file, in bytes; checked before parsing.
    pub max_bytes: usize,
}

/// One class: its label and the statistics of its raw embeddings.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Class {
    pub name: String,
    pub stats: SourceStats,
}

/// The learner-specific state, parallel to the class table where it is per class.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Learner {
    Auto(AutoState),
    Ncm(NcmState),
    Slda(ScatterState),
    Ridge(ScatterState),
    Sgd(SgdState),
}

/// What the learners see of a head when they update or take a snapshot.
pub(crate) struct Ctx<'a> {
    pub config: &'a HeadConfig,
    pub dim: usize,
    pub classes: &'a [Class],
    pub source: &'a SourceStats,
}

/// A linear head: configuration, class table, source statistics and learner state.
///
/// Every successful mutation bumps [`version`](Head::version). Snapshots are cached until the
/// next mutation.
#[derive(Clone)]
pub struct Head {
    pub(crate) config: HeadConfig,
    pub(crate) dim: usize,
    pub(crate) backbone: String,
    pub(crate) version: u64,
    pub(crate) classes: Vec<Class>,
    pub(crate) source: SourceStats,
    pub(crate) learner: Learner,
    cache: OnceLock<Arc<PredictorParts>>,
    /// The last snapshot, kept across mutations (unlike `cache`): it scores the labeled
    /// samples learned since, before each is learned (`auto`'s candidates, the open-set
    /// calibration).
    last: Option<Arc<PredictorParts>>,
    /// `auto`: every candidate's snapshot, which scores the labeled samples learned since, and
    /// the sample count it was taken at ([`Head::refresh_candidates`]).
    scoring: Option<(Arc<Candidates>, u64)>,
    /// `auto`: the last labeled samples, for the leave-one-out check of its candidates.
    recent: loo::Recent,
    /// The open-set novelty of recent labeled samples, each scored before it was learned.
    pub(crate) calibration: Calibration,
    /// The samples learned since the version the fleet last saw ([`Head::start_journal`]).
    journal: Journal,
}

impl fmt::Debug for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Head")
            .field("algorithm", &self.algorithm())
            .field("dim", &self.dim)
            .field("backbone_sha256", &self.backbone)
            .field("version", &self.version)
            .field("classes", &self.classes.len())
            .field("samples", &self.samples())
            .finish()
    }
}

/// Checks an embedding's dimension and finiteness.
pub(crate) fn check_embedding(x: &[f32], dim: usize) -> Result<(), HeadError> {
    if x.len() != dim {
        return Err(HeadError::DimensionMismatch {
            expected: dim,
            got: x.len(),
        });
    }
    if x.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(HeadError::NonFinite)
    }
}

impl Head {
    /// An empty head for `dim`-dimensional embeddings of the given backbone.
    ///
    /// `slda` and `ridge` allocate a packed `d × d` f64 matrix (6.5 MB at d = 1280).
    pub fn new(config: &HeadConfig, dim: usize, backbone_sha256: &str) -> Head {
        let learner = Self::empty_learner(config.algorithm, dim);
        Head {
            config: config.clone(),
            dim,
            backbone: backbone_sha256.to_string(),
            version: 0,
            classes: Vec::new(),
            source: SourceStats::new(dim),
            learner,
            cache: OnceLock::new(),
            last: None,
            scoring: None,
            recent: loo::Recent::default(),
            calibration: Calibration::default(),
            journal: Journal::default(),
        }
    }

    fn empty_learner(algorithm: Algorithm, dim: usize) -> Learner {
        match algorithm {
            Algorithm::Auto => Learner::Auto(AutoState::new(dim)),
            Algorithm::Ncm => Learner::Ncm(NcmState::default()),
            Algorithm::Slda => Learner::Slda(ScatterState::new(dim)),
            Algorithm::Ridge => Learner::Ridge(ScatterState::new(dim)),
            Algorithm::Sgd => Learner::Sgd(SgdState::default()),
        }
    }

    /// Assembles a head from validated parts (used by the file reader).
    pub(crate) fn from_parts(
        config: HeadConfig,
        dim: usize,
        backbone: String,
        version: u64,
        classes: Vec<Class>,
        source: SourceStats,
        learner: Learner,
    ) -> Head {
        Head {
            config,
            dim,
            backbone,
            version,
            classes,
            source,
            learner,
            cache: OnceLock::new(),
            last: None,
            scoring: None,
            recent: loo::Recent::default(),
            calibration: Calibration::default(),
            journal: Journal::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HeadConfig {
        &self.config
    }

    /// The learning algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self.learner {
            Learner::Auto(_) => Algorithm::Auto,
            Learner::Ncm(_) => Algorithm::Ncm,
            Learner::Slda(_) => Algorithm::Slda,
            Learner::Ridge(_) => Algorithm::Ridge,
            Learner::Sgd(_) => Algorithm::Sgd,
        }
    }

    /// The embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The SHA-256 (hex) of the backbone the embeddings come from.
    pub fn backbone_sha256(&self) -> &str {
        &self.backbone
    }

    /// The version, bumped by every successful mutation.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sets the version (the daemon keeps versions monotonic across rollback and import). Ends
    /// the journal: its samples no longer lead from its base to this version.
    pub fn set_version(&mut self, v: u64) {
        self.journal.end();
        self.version = v;
    }

    /// The classes in class-index order.
    pub fn classes(&self) -> Vec<ClassInfo> {
        self.classes
            .iter()
            .map(|c| ClassInfo {
                name: c.name.clone(),
                samples: c.stats.count(),
            })
            .collect()
    }

    /// Total number of samples currently learned (over all classes).
    pub fn samples(&self) -> u64 {
        self.source.count()
    }

    /// Statistics of all embeddings currently learned from (the union of the classes).
    pub fn source_stats(&self) -> &SourceStats {
        &self.source
    }

    /// Covariance of all learned embeddings, `(S_w + Σ_c n_c (μ_c − μ)(μ_c − μ)ᵀ) / n`, for
    /// the learners that keep the within-class scatter (`auto`, `slda`, `ridge`); `None` for the
    /// others or with fewer than two samples. O(C·d²).
    pub fn covariance(&self) -> Option<nalgebra::DMatrix<f64>> {
        let s = self.scatter()?;
        let n = self.source.count();
        if n < 2 {
            return None;
        }
        let mut m = linalg::unpack_scaled(&s.packed, &vec![1.0; self.dim]);
        let mu = nalgebra::DVector::from_vec(self.source.mean());
        for c in &self.classes {
            let k = c.stats.count();
            if k == 0 {
                continue;
            }
            let delta = nalgebra::DVector::from_vec(c.stats.mean()) - &mu;
            m.ger(k as f64, &delta, &delta, 1.0);
        }
        m /= n as f64;
        Some(m)
    }

    /// The within-class scatter, for the learners that keep it (`auto`, `slda`, `ridge`).
    fn scatter(&self) -> Option<&ScatterState> {
        match &self.learner {
            Learner::Slda(s) | Learner::Ridge(s) => Some(s),
            Learner::Auto(a) => Some(&a.scatter),
            Learner::Ncm(_) | Learner::Sgd(_) => None,
        }
    }

    /// Statistics of the embeddings of one class.
    pub fn class_stats(&self, label: &str) -> Option<&SourceStats> {
        self.find(label).map(|i| &self.classes[i].stats)
    }

    fn find(&self, label: &str) -> Option<usize> {
        self.classes.iter().position(|c| c.name == label)
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            config: &self.config,
            dim: self.dim,
            classes: &self.classes,
            source: &self.source,
        }
    }

    fn touch(&mut self) {
        self.version = self.version.wrapping_add(1);
        if let Some(c) = self.cache.take() {
            self.last = Some(c);
        }
    }

    /// `auto`'s choice, what decided it, and the prequential and leave-one-out accuracy of each
    /// of its candidates; `None` for the other learners.
    pub fn auto_summary(&self) -> Option<AutoSummary> {
        match &self.learner {
            Learner::Auto(a) => Some(a.record.summary()),
            _ => None,
        }
    }

    fn add_class(&mut self, label: &str) -> usize {
        self.classes.push(Class {
            name: label.to_string(),
            stats: SourceStats::new(self.dim),
        });
        match &mut self.learner {
            Learner::Ncm(s) => s.add_class(self.dim),
            Learner::Auto(a) => a.ncm.add_class(self.dim),
            Learner::Sgd(s) => s.add_class(self.dim),
            Learner::Slda(_) | Learner::Ridge(_) => {}
        }
        self.classes.len() - 1
    }

    fn remove_class(&mut self, i: usize) {
        self.classes.remove(i);
        match &mut self.learner {
            Learner::Ncm(s) => s.remove_class(i),
            Learner::Auto(a) => a.ncm.remove_class(i),
            Learner::Sgd(s) => s.remove_class(i, self.dim),
            Learner::Slda(_) | Learner::Ridge(_) => {}
        }
    }

    /// Learns one labeled embedding. A new label creates a class.
    pub fn update(&mut self, x: &[f32], label: &str) -> Result<(), HeadError> {
        check_embedding(x, self.dim)?;
        validate_label(label)?;
        let known = self.find(label);
        if known.is_none() && self.classes.len() >= MAX_CLASSES {
            return Err(HeadError::TooManyClasses { limit: MAX_CLASSES });
        }
        // Test, then train: scored by the last snapshot, if it knew the label.
        let last = self.cache.get().or(self.last.as_ref());
        if let Some(last) = last.filter(|l| l.labels.iter().any(|n| n == label)) {
            if let Some(open) = &last.open {
                self.calibration.push(open.score(x));
            }
        }
        if let (Learner::Auto(a), Some((c, _))) = (&mut self.learner, &self.scoring) {
            a.score(c, x, label);
        }
        let idx = match known {
            Some(i) => i,
            None => self.add_class(label),
        };
        match &mut self.learner {
            Learner::Ncm(s) => s.update(idx, x),
            Learner::Auto(a) => {
                a.ncm.update(idx, x);
                a.scatter.update(&self.classes[idx].stats, x);
                self.recent.push(label, x);
            }
            Learner::Slda(s) | Learner::Ridge(s) => s.update(&self.classes[idx].stats, x),
            Learner::Sgd(_) => {}
        }
        self.classes[idx].stats.add(x);
        self.source.add(x);
        self.journal.learned(label, x);
        if let Learner::Sgd(s) = &mut self.learner {
            let ctx = Ctx {
                config: &self.config,
                dim: self.dim,
                classes: &self.classes,
                source: &self.source,
            };
            s.update(idx, x, &ctx);
        }
        self.touch();
        Ok(())
    }

    /// `auto`: hands its leave-one-out check samples this head learned earlier (after a
    /// restart, the stored samples; its recent ones are memory only), an even spread of them
    /// where there are more than it keeps. Samples of classes it does not have are left out.
    /// Nothing for the other learners.
    pub fn recall<'a>(&mut self, samples: &[(&'a str, &'a [f32])]) {
        if !matches!(self.learner, Learner::Auto(_)) {
            return;
        }
        let n = samples.len();
        let take = n.min(loo::RECENT);
        for i in (0..take).rev() {
            let (label, x) = samples[i * n / take];
            if x.len() == self.dim && self.find(label).is_some() {
                self.recent.recall(label, x);
            }
        }
    }

    /// Removes one embedding learned before under `label` (exact up to float rounding; the
    /// caller must pass an embedding that was learned). A class whose last sample is removed
    /// disappears. `unsupported` for `sgd`.
    pub fn unlearn(&mut self, x: &[f32], label: &str) -> Result<(), HeadError> {
        if !self.algorithm().is_exact() {
            return Err(HeadError::Unsupported(format!(
                "unlearn is not available for {}",
                self.algorithm()
            )));
        }
        check_embedding(x, self.dim)?;
        let idx = self
            .find(label)
            .ok_or_else(|| HeadError::UnknownClass(label.to_string()))?;
        match &mut self.learner {
            Learner::Ncm(s) => s.unlearn(idx, x),
            Learner::Auto(a) => {
                a.ncm.unlearn(idx, x);
                a.scatter.downdate(&self.classes[idx].stats, x);
                self.recent.remove(label, x);
            }
            Learner::Slda(s) | Learner::Ridge(s) => s.downdate(&self.classes[idx].stats, x),
            Learner::Sgd(_) => {}
        }
        self.classes[idx].stats.remove(x);
        self.source.remove(x);
        if self.classes[idx].stats.count() == 0 {
            self.remove_class(idx);
        }
        self.journal.end();
        self.touch();
        Ok(())
    }

    /// Removes a class and its statistics; true if it existed. For `slda` and `ridge` the
    /// class's within-class scatter stays in the shared matrix (see the `scatter` module).
    pub fn forget(&mut self, label: &str) -> bool {
        let Some(idx) = self.find(label) else {
            return false;
        };
        self.source.subtract(&self.classes[idx].stats);
        self.remove_class(idx);
        self.recent.forget(label);
        self.journal.end();
        self.touch();
        true
    }

    /// Forgets everything learned (keeps configuration, dimension and backbone).
    pub fn reset(&mut self) {
        self.classes.clear();
        self.source.clear();
        match &mut self.learner {
            Learner::Ncm(s) => *s = NcmState::default(),
            Learner::Auto(a) => *a = AutoState::new(self.dim),
            Learner::Slda(s) | Learner::Ridge(s) => s.clear(),
            Learner::Sgd(s) => *s = SgdState::default(),
        }
        self.touch();
        self.last = None;
        self.scoring = None;
        self.recent.clear();
        self.calibration = Calibration::default();
        self.journal.end();
    }

    /// Adds another head's knowledge. Exact for `auto`, `ncm`, `slda` and `ridge` (the result equals
    /// a head trained on both heads' samples, up to float rounding); for `sgd` a
    /// sample-weighted average of the weights (approximate). Classes new to `self` are
    /// appended in `other`'s order. Keeps `self`'s configuration.
    pub fn merge(&mut self, other: &Head) -> Result<(), HeadError> {
        if other.algorithm() != self.algorithm() {
            return Err(HeadError::AlgorithmMismatch {
                expected: self.algorithm(),
                got: other.algorithm(),
            });
        }
        if other.dim != self.dim {
            return Err(HeadError::DimensionMismatch {
                expected: self.dim,
                got: other.dim,
            });
        }
        if other.backbone != self.backbone {
            return Err(HeadError::BackboneMismatch {
                expected: self.backbone.clone(),
                got: other.backbone.clone(),
            });
        }
        if self.algorithm() == Algorithm::Sgd && self.config.standardize != other.config.standardize
        {
            return Err(HeadError::ConfigMismatch(
                "sgd heads with and without standardization cannot be merged".into(),
            ));
        }
        let mapping: Vec<Option<usize>> =
            other.classes.iter().map(|c| self.find(&c.name)).collect();
        let new = mapping.iter().filter(|m| m.is_none()).count();
        if self.classes.len() + new > MAX_CLASSES {
            return Err(HeadError::TooManyClasses { limit: MAX_CLASSES });
        }
        let samples = (self.samples(), other.samples());
        match (&mut self.learner, &other.learner) {
            (Learner::Ncm(a), Learner::Ncm(b)) => a.merge(b, &mapping),
            // The record stays this head's: it says how the candidates did on this board.
            (Learner::Auto(a), Learner::Auto(b)) => {
                a.ncm.merge(&b.ncm, &mapping);
                a.scatter
                    .merge(&b.scatter, &self.classes, &other.classes, &mapping);
            }
            (Learner::Slda(a), Learner::Slda(b)) | (Learner::Ridge(a), Learner::Ridge(b)) => {
                a.merge(b, &self.classes, &other.classes, &mapping)
            }
            (Learner::Sgd(a), Learner::Sgd(b)) => a.merge(b, &mapping, samples, self.dim),
            _ => {
                return Err(HeadError::AlgorithmMismatch {
                    expected: self.algorithm(),
                    got: other.algorithm(),
                })
            }
        }
        for (c, m) in other.classes.iter().zip(&mapping) {
            match m {
                Some(i) => self.classes[*i].stats.add_stats(&c.stats),
                None => self.classes.push(c.clone()),
            }
        }
        self.source.add_stats(&other.source);
        self.journal.end();
        self.touch();
        Ok(())
    }

    /// Removes what [`merge`](Self::merge)`(other)` added: the exact inverse for `auto`, `ncm`,
    /// `slda` and `ridge` (up to float rounding), so a sum of heads can replace one of its
    /// terms without being rebuilt (the fleet's running total). Every class of `other` must be
    /// in `self` with at least as many samples (`not_merged` otherwise, and nothing changes);
    /// classes left without samples disappear. `unsupported` for `sgd`, whose merge is an
    /// average.
    pub fn unmerge(&mut self, other: &Head) -> Result<(), HeadError> {
        if !self.algorithm().is_exact() || other.algorithm() != self.algorithm() {
            return Err(HeadError::Unsupported(format!(
                "unmerge of {} from {}",
                other.algorithm(),
                self.algorithm()
            )));
        }
        if other.dim != self.dim || other.backbone != self.backbone {
            return Err(HeadError::NotMerged("another backbone or dimension".into()));
        }
        let mut mapping = Vec::with_capacity(other.classes.len());
        for c in &other.classes {
            match self.find(&c.name) {
                Some(i) if self.classes[i].stats.count() >= c.stats.count() => {
                    mapping.push(Some(i))
                }
                _ => {
                    return Err(HeadError::NotMerged(format!(
                        "class {:?} with {} samples",
                        c.name,
                        c.stats.count()
                    )))
                }
            }
        }
        if other.source.count() > self.source.count() {
            return Err(HeadError::NotMerged(format!(
                "{} samples, more than this head's {}",
                other.source.count(),
                self.source.count()
            )));
        }
        match (&mut self.learner, &other.learner) {
            (Learner::Ncm(a), Learner::Ncm(b)) => a.unmerge(b, &mapping),
            (Learner::Auto(a), Learner::Auto(b)) => {
                a.ncm.unmerge(&b.ncm, &mapping);
                a.scatter
                    .unmerge(&b.scatter, &self.classes, &other.classes, &mapping);
            }
            (Learner::Slda(a), Learner::Slda(b)) | (Learner::Ridge(a), Learner::Ridge(b)) => {
                a.unmerge(b, &self.classes, &other.classes, &mapping)
            }
            _ => {
                return Err(HeadError::AlgorithmMismatch {
                    expected: self.algorithm(),
                    got: other.algorithm(),
                })
            }
        }
        for (c, m) in other.classes.iter().zip(&mapping) {
            if let Some(i) = m {
                self.classes[*i].stats.subtract(&c.stats);
            }
        }
        // Highest index first, so the indices still to remove stay valid.
        let mut empty: Vec<usize> = mapping
            .iter()
            .flatten()
            .copied()
            .filter(|&i| self.classes[i].stats.count() == 0)
            .collect();
        empty.sort_unstable();
        empty.dedup();
        for i in empty.into_iter().rev() {
            self.remove_class(i);
        }
        self.source.subtract(&other.source);
        self.journal.end();
        self.touch();
        Ok(())
    }

    /// An immutable prediction snapshot. Does the expensive work (for `slda` and `ridge` a
    /// Cholesky solve, O(d³)); cached until the next mutation.
    pub fn snapshot(&self) -> Predictor {
        let parts = self.cache.get_or_init(|| self.compute()).clone();
        Predictor::new(parts, self.version)
    }

    fn compute(&self) -> Arc<PredictorParts> {
        if self.classes.is_empty() {
            return Arc::new(PredictorParts::empty(self.dim));
        }
        let ctx = self.ctx();
        let mut parts = match &self.learner {
            Learner::Auto(a) => a.snapshot(&ctx),
            Learner::Ncm(s) => s.snapshot(&ctx),
            Learner::Slda(s) => slda::snapshot(s, &ctx),
            Learner::Ridge(s) => ridge::snapshot(s, &ctx),
            Learner::Sgd(s) => s.snapshot(&ctx),
        };
        let scorer = self
            .scatter()
            .and_then(|s| OpenSetParts::mahalanobis(s, &self.classes, &self.source, self.dim))
            .or_else(|| OpenSetParts::cosine(&self.classes, self.dim));
        parts.open = scorer.map(|scorer| OpenSetParts {
            scorer,
            calibration: self.calibration.sorted(),
        });
        Arc::new(parts)
    }

    /// Whether `auto`'s candidates are worth refreshing: never taken, or the samples learned
    /// or removed since reach 5% of the head's (so the d × d solves amortize to O(log n)
    /// refreshes over a stream). False for the other learners.
    pub fn candidates_due(&self) -> bool {
        if !matches!(self.learner, Learner::Auto(_)) || self.classes.is_empty() {
            return false;
        }
        match &self.scoring {
            None => true,
            Some((_, at)) => {
                let n = self.samples();
                n.abs_diff(*at) as f64 >= (0.05 * n as f64).max(1.0)
            }
        }
    }

    /// `auto`: takes every candidate's snapshot (8 d × d solves) to score the labeled samples
    /// that follow, and checks the candidates by leave-one-out on the recent labeled samples
    /// with the same solves, which then decides the choice. The daemon does this when idle and
    /// due ([`candidates_due`](Self::candidates_due)), apart from prediction snapshots. Nothing
    /// for the other learners. True if the choice changed (the head's version moves on).
    pub fn refresh_candidates(&mut self) -> bool {
        if self.classes.is_empty() {
            return false;
        }
        let samples = self.recent.scorable(&self.classes);
        let ctx = Ctx {
            config: &self.config,
            dim: self.dim,
            classes: &self.classes,
            source: &self.source,
        };
        if let Learner::Auto(a) = &mut self.learner {
            let before = a.record.choice;
            let c = a.refresh(&ctx, &samples);
            let n = self.source.count();
            self.scoring = Some((c, n));
            if a.record.choice != before {
                // Predictions follow the new choice from the next snapshot on.
                self.touch();
                return true;
            }
        }
        false
    }

    /// Starts recording the samples learned from this version on (what the fleet sends its
    /// peers as a delta). Only for the learners whose merge is exact: `sgd`'s is an average,
    /// so its peers always get the whole head.
    pub fn start_journal(&mut self) {
        if self.algorithm().is_exact() {
            self.journal.start(self.version);
        } else {
            self.journal.end();
        }
    }

    /// The version the journal started at and the samples learned since, in order; `None`
    /// when something other than learning changed the statistics since (or it never started).
    pub fn journal(&self) -> Option<(u64, &[JournalEntry])> {
        self.journal.since()
    }

    /// Bytes of labels and embeddings in the journal.
    pub fn journal_bytes(&self) -> usize {
        self.journal.bytes()
    }

    /// Encodes the head file (CBOR, see `docs/head-format.md`). Takes a snapshot.
    pub fn to_bytes(&self) -> Result<Vec<u8>, HeadError> {
        format::encode(self)
    }

    /// Decodes and validates a head file. Rejects input larger than `expect.max_bytes` before
    /// parsing, and files for another backbone or dimension when `expect` names them.
    pub fn from_bytes(bytes: &[u8], expect: &Expect<'_>) -> Result<Head, HeadError> {
        format::decode(bytes, expect)
    }
}
