//! Unsupervised domain adaptation on embeddings: the board's target-domain statistics from
//! unlabeled inputs, the `mean` / `coral` / `t3a` corrections applied before the head, and the
//! drift distance between the target and the head's source distribution.
//!
//! The same [`Adapter`] runs in the daemon (fed by inference requests, see [`handle`] and `daemon::adaptation`) and in
//! `adaptd eval --shift` (fed by the corrupted test split). See `docs/adaptation.md`.

pub mod coral;
pub mod handle;
pub mod t3a;
pub mod target;

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use crate::head::{Head, HeadError, Prediction, Predictor};
pub use target::TargetStats;

/// How the board corrects its embeddings for its own domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// No correction (statistics and drift are still tracked).
    None,
    /// Re-center and re-scale each dimension: target mean/std → source mean/std.
    Mean,
    /// CORAL: whiten with the target covariance, re-colour with the source covariance.
    Coral,
    /// T3A: class prototypes from confident pseudo-labeled target embeddings.
    T3a,
}

impl Method {
    /// Every method, in report order.
    pub const ALL: [Method; 4] = [Method::None, Method::Mean, Method::Coral, Method::T3a];

    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Mean => "mean",
            Method::Coral => "coral",
            Method::T3a => "t3a",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Method, String> {
        Method::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown adaptation method {s:?} (none, mean, coral, t3a)"))
    }
}

fn d_method() -> Method {
    Method::Mean
}
fn d_window() -> u64 {
    2000
}
fn d_min_samples() -> u64 {
    64
}
fn d_true() -> bool {
    true
}
fn d_recompute_every() -> u64 {
    64
}
fn d_prior_samples() -> f64 {
    16.0
}
fn d_recompute_change() -> f64 {
    0.1
}
fn d_coral_shrinkage() -> f64 {
    0.1
}
fn d_t3a_confidence() -> f64 {
    0.5
}
fn d_t3a_support() -> usize {
    20
}
fn d_t3a_temperature() -> f64 {
    0.05
}
fn d_drift_threshold() -> f64 {
    0.05
}
fn d_persist_interval_secs() -> u64 {
    60
}
fn d_queue() -> usize {
    256
}

/// The `[adapt]` section of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptConfig {
    /// none, mean, coral or t3a.
    #[serde(default = "d_method")]
    pub method: Method,
    /// Memory of the target statistics, in samples (exponential forgetting; 0 = never forget).
    #[serde(default = "d_window")]
    pub window: u64,
    /// No drift value (and so no drift alarm) before this many effective target samples.
    /// Corrections do not wait for it: they start with the first sample, shrunk toward the
    /// source statistics by `prior_samples`.
    #[serde(default = "d_min_samples")]
    pub min_samples: u64,
    /// Strength of the head's (source) statistics as a prior, in samples: the correction uses
    /// `w·target + (1 − w)·source` with `w = n / (n + prior_samples)`, n the effective target
    /// sample count (0 = trust the target statistics from the first sample).
    #[serde(default = "d_prior_samples")]
    pub prior_samples: f64,
    /// Recompute as soon as `w` grew by this fraction since the last recompute (besides every
    /// `recompute_every` samples).
    #[serde(default = "d_recompute_change")]
    pub recompute_change: f64,
    /// mean: also re-scale each dimension (target std → source std); false: re-center only.
    #[serde(default = "d_true")]
    pub mean_rescale: bool,
    /// Recompute the correction after this many new target samples.
    #[serde(default = "d_recompute_every")]
    pub recompute_every: u64,
    /// coral: shrinkage γ of both covariances toward a scaled identity, (1−γ)Σ + γ·tr(Σ)/d·I.
    #[serde(default = "d_coral_shrinkage")]
    pub coral_shrinkage: f64,
    /// t3a: smallest head probability for a pseudo-label to enter a class's support.
    #[serde(default = "d_t3a_confidence")]
    pub t3a_confidence: f64,
    /// t3a: support size per class (the lowest-entropy samples are kept).
    #[serde(default = "d_t3a_support")]
    pub t3a_support: usize,
    /// t3a: no longer used (the adjusted classifier keeps the head's own scale); accepted so
    /// that existing config files load.
    #[serde(default = "d_t3a_temperature")]
    pub t3a_temperature: f64,
    /// Drift alarm threshold (normalized Fréchet distance, see `docs/adaptation.md`).
    #[serde(default = "d_drift_threshold")]
    pub drift_threshold: f64,
    /// How often the target statistics are written to the state directory.
    #[serde(default = "d_persist_interval_secs")]
    pub persist_interval_secs: u64,
    /// Embeddings waiting for the adaptation thread; more are dropped (never delays a reply).
    #[serde(default = "d_queue")]
    pub queue: usize,
}

impl Default for AdaptConfig {
    fn default() -> AdaptConfig {
        AdaptConfig {
            method: d_method(),
            window: d_window(),
            min_samples: d_min_samples(),
            prior_samples: d_prior_samples(),
            recompute_change: d_recompute_change(),
            mean_rescale: true,
            recompute_every: d_recompute_every(),
            coral_shrinkage: d_coral_shrinkage(),
            t3a_confidence: d_t3a_confidence(),
            t3a_support: d_t3a_support(),
            t3a_temperature: d_t3a_temperature(),
            drift_threshold: d_drift_threshold(),
            persist_interval_secs: d_persist_interval_secs(),
            queue: d_queue(),
        }
    }
}

impl AdaptConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), String> {
        let unit = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be in [0, 1], got {v}"))
            }
        };
        unit("coral_shrinkage", self.coral_shrinkage)?;
        unit("t3a_confidence", self.t3a_confidence)?;
        if !(self.t3a_temperature.is_finite() && self.t3a_temperature > 0.0) {
            return Err("t3a_temperature must be > 0".into());
        }
        if !(self.drift_threshold.is_finite() && self.drift_threshold > 0.0) {
            return Err("drift_threshold must be > 0".into());
        }
        if self.t3a_support == 0 || self.t3a_support > 10_000 {
            return Err("t3a_support must be in 1..=10000".into());
        }
        if !(self.prior_samples.is_finite() && self.prior_samples >= 0.0) {
            return Err("prior_samples must be ≥ 0".into());
        }
        if !(self.recompute_change.is_finite() && self.recompute_change > 0.0) {
            return Err("recompute_change must be > 0".into());
        }
        if self.recompute_every == 0 {
            return Err("recompute_every must be ≥ 1".into());
        }
        if self.queue == 0 {
            return Err("queue must be ≥ 1".into());
        }
        Ok(())
    }
}

/// The head's domain (the *source* domain of domain adaptation, named apart from the input
/// topics that "source" means on MQTT): mean and variance of everything it learned,
/// and for `coral` the full covariance when the learner keeps one (`slda`, `ridge`).
#[derive(Clone, Debug)]
pub struct HeadDomain {
    /// Head version these statistics were taken at.
    pub version: u64,
    /// Samples behind them.
    pub count: u64,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    pub cov: Option<DMatrix<f64>>,
}

impl HeadDomain {
    /// The source statistics of `head`; `full` asks for the covariance (O(C·d²)).
    pub fn of(head: &Head, full: bool) -> HeadDomain {
        let s = head.source_stats();
        HeadDomain {
            version: head.version(),
            count: s.count(),
            mean: s.mean(),
            var: s.var(),
            cov: if full { head.covariance() } else { None },
        }
    }
}

/// Drift distance: the Fréchet distance between diagonal Gaussians fitted to the source and
/// the target embeddings, normalized by the source's total variance:
/// `(|μt − μs|² + |σt − σs|²) / Σ σs²`. 0 = same distribution; a pure shift of the mean by
/// one source standard deviation in every direction gives 1.
pub fn drift(source: &HeadDomain, target: &TargetStats) -> Option<f64> {
    if source.count < 2 || target.weight() < 2.0 {
        return None;
    }
    let (mt, vt) = (target.mean(), target.var());
    let total: f64 = source.var.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let mut d = 0.0;
    for j in 0..source.mean.len() {
        let dm = mt[j] - source.mean[j];
        let ds = vt[j].sqrt() - source.var[j].sqrt();
        d += dm * dm + ds * ds;
    }
    Some(d / total)
}

/// The affine correction applied to embeddings before the head.
#[derive(Clone, Debug)]
pub enum InputMap {
    Identity,
    /// `x' = (x − mt) ⊙ r + ms`.
    Diag {
        mt: Vec<f32>,
        r: Vec<f32>,
        ms: Vec<f32>,
    },
    /// `x' = A (x − mt) + ms`, `A` row-major d × d.
    Full {
        a: Vec<f32>,
        mt: Vec<f32>,
        ms: Vec<f32>,
    },
}

/// An immutable adaptation snapshot: what the inference workers apply. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Adapted {
    pub method: Method,
    pub map: InputMap,
    /// t3a's adjusted classifier, valid for the head version it was built from.
    pub classifier: Option<Predictor>,
    /// Effective target samples behind the snapshot.
    pub target_weight: f64,
}

impl Adapted {
    /// No correction.
    pub fn identity(method: Method) -> Adapted {
        Adapted {
            method,
            map: InputMap::Identity,
            classifier: None,
            target_weight: 0.0,
        }
    }

    /// Whether anything is corrected.
    pub fn is_active(&self) -> bool {
        !matches!(self.map, InputMap::Identity) || self.classifier.is_some()
    }

    /// The corrected embedding (borrowed when there is nothing to correct).
    pub fn apply<'a>(&self, x: &'a [f32]) -> Cow<'a, [f32]> {
        match &self.map {
            InputMap::Identity => Cow::Borrowed(x),
            InputMap::Diag { mt, r, ms } if mt.len() == x.len() => Cow::Owned(
                x.iter()
                    .zip(mt)
                    .zip(r)
                    .zip(ms)
                    .map(|(((&v, &m), &s), &o)| (v - m) * s + o)
                    .collect(),
            ),
            InputMap::Full { a, mt, ms } if mt.len() == x.len() => {
                let c: Vec<f32> = x.iter().zip(mt).map(|(&v, &m)| v - m).collect();
                Cow::Owned(
                    a.chunks_exact(c.len())
                        .zip(ms)
                        .map(|(row, &o)| crate::head::linalg::dot_f32(row, &c) + o)
                        .collect(),
                )
            }
            _ => Cow::Borrowed(x),
        }
    }

    /// Predicts `x` with the correction and, when current, t3a's classifier; else `head`.
    pub fn predict(&self, head: &Predictor, x: &[f32], k: usize) -> Result<Prediction, HeadError> {
        let z = self.apply(x);
        match &self.classifier {
            Some(c) if c.version() == head.version() && c.labels() == head.labels() => {
                // t3a's classifier keeps no open-set scorer: the head's says what is known.
                let mut p = c.predict(&z, k)?;
                p.novelty = head.novelty(&z);
                Ok(p)
            }
            _ => head.predict(&z, k),
        }
    }
}

/// Target statistics shrunk toward the source's: `w·target + (1 − w)·source` for the mean,
/// the per-dimension variance and (when both exist) the covariance.
#[derive(Clone, Debug)]
pub struct Shrunk {
    /// The weight of the target statistics, `n / (n + prior_samples)`.
    pub w: f64,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
}

/// `w` for `n` effective target samples and a prior of `k` samples.
pub fn shrink_weight(n: f64, k: f64) -> f64 {
    if n <= 0.0 {
        0.0
    } else if k <= 0.0 {
        1.0
    } else {
        n / (n + k)
    }
}

fn blend(w: f64, t: &[f64], s: &[f64]) -> Vec<f64> {
    if w >= 1.0 {
        return t.to_vec();
    }
    t.iter()
        .zip(s)
        .map(|(&t, &s)| w * t + (1.0 - w) * s)
        .collect()
}

/// The adaptation state machine: target statistics, t3a supports, and the current snapshot.
pub struct Adapter {
    config: AdaptConfig,
    target: TargetStats,
    t3a: t3a::T3a,
    since: u64,
    /// The shrinkage weight at the last recompute.
    w_last: f64,
    snapshot: Arc<Adapted>,
    /// `Σs^{1/2}` for coral, cached per source version.
    colour: Option<(u64, coral::Colour)>,
}

impl Adapter {
    /// A fresh adapter for `dim`-dimensional embeddings.
    pub fn new(config: AdaptConfig, dim: usize) -> Adapter {
        let full = config.method == Method::Coral;
        Adapter::with_target(config.clone(), TargetStats::new(dim, config.window, full))
    }

    /// An adapter over restored target statistics.
    pub fn with_target(config: AdaptConfig, target: TargetStats) -> Adapter {
        let t3a = t3a::T3a::new(&config);
        Adapter {
            snapshot: Arc::new(Adapted::identity(config.method)),
            config,
            target,
            t3a,
            since: 0,
            w_last: 0.0,
            colour: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AdaptConfig {
        &self.config
    }

    /// The target statistics.
    pub fn target(&self) -> &TargetStats {
        &self.target
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Adapted> {
        self.snapshot.clone()
    }

    /// Takes one unlabeled embedding (dimension and finiteness already checked by the head
    /// that predicted it). `head` is the current prediction snapshot (for t3a's pseudo-labels).
    pub fn observe(&mut self, x: &[f32], head: &Predictor) {
        if x.len() != self.target.dim() || !x.iter().all(|v| v.is_finite()) {
            return;
        }
        self.target.push(x);
        if self.config.method == Method::T3a {
            self.t3a.observe(x, head);
        }
        self.since += 1;
    }

    /// The current weight of the target statistics against the source's.
    pub fn weight(&self) -> f64 {
        shrink_weight(self.target.weight(), self.config.prior_samples)
    }

    /// Whether a recompute is due: `recompute_every` new samples, or the shrinkage weight grew
    /// by `recompute_change` (often at first, when each frame changes the correction most).
    pub fn due(&self) -> bool {
        if self.since == 0 {
            return false;
        }
        self.since >= self.config.recompute_every
            || self.weight() >= self.w_last * (1.0 + self.config.recompute_change)
    }

    /// The target mean and variance shrunk toward `source`'s.
    pub fn shrunk(&self, source: &HeadDomain) -> Shrunk {
        let w = self.weight();
        Shrunk {
            w,
            mean: blend(w, &self.target.mean(), &source.mean),
            var: blend(w, &self.target.var(), &source.var),
        }
    }

    /// Recomputes the snapshot from the current statistics.
    pub fn recompute(&mut self, source: &HeadDomain, head: &Predictor) -> Arc<Adapted> {
        self.since = 0;
        self.w_last = self.weight();
        let enough = self.target.weight() > 0.0 && source.count >= 2;
        let mut a = Adapted::identity(self.config.method);
        a.target_weight = self.target.weight();
        if enough {
            match self.config.method {
                Method::None => {}
                Method::Mean => a.map = self.mean_map(source),
                // Without a source covariance (ncm, sgd heads) whitening with the full target
                // covariance and re-colouring with a diagonal would rotate the embedding away
                // from the head: fall back to the diagonal form, i.e. `mean`.
                Method::Coral if source.cov.is_none() => a.map = self.mean_map(source),
                Method::Coral => {
                    if self.colour.as_ref().map(|c| c.0) != Some(source.version) {
                        let c = coral::Colour::of(source, self.config.coral_shrinkage);
                        self.colour = Some((source.version, c));
                    }
                    let mean = self.shrunk(source).mean;
                    let cov = self.shrunk_cov(source);
                    if let Some((_, colour)) = &self.colour {
                        a.map = cov
                            .and_then(|c| coral::map(colour, &mean, c, self.config.coral_shrinkage))
                            .unwrap_or_else(|| self.mean_map(source));
                    }
                }
                Method::T3a => a.classifier = self.t3a.classifier(head),
            }
        }
        self.snapshot = Arc::new(a);
        self.snapshot.clone()
    }

    /// The target covariance shrunk toward the source's, `w·Σt + (1 − w)·Σs`.
    pub fn shrunk_cov(&self, source: &HeadDomain) -> Option<DMatrix<f64>> {
        let mut ct = self.target.cov()?;
        let w = self.weight();
        if w < 1.0 {
            let cs = source.cov.as_ref()?;
            if cs.shape() != ct.shape() {
                return None;
            }
            ct *= w;
            ct += cs * (1.0 - w);
        }
        Some(ct)
    }

    fn mean_map(&self, source: &HeadDomain) -> InputMap {
        let Shrunk {
            mean: mt, var: vt, ..
        } = self.shrunk(source);
        // Variance floor relative to the typical variance: near-constant dimensions are not
        // blown up.
        let d = vt.len().max(1) as f64;
        let floor_t = 1e-2 * vt.iter().sum::<f64>() / d + 1e-12;
        let floor_s = 1e-2 * source.var.iter().sum::<f64>() / d + 1e-12;
        let r = vt
            .iter()
            .zip(&source.var)
            .map(|(&t, &s)| {
                if self.config.mean_rescale {
                    (((s + floor_s) / (t + floor_t)).sqrt()) as f32
                } else {
                    1.0
                }
            })
            .collect();
        InputMap::Diag {
            mt: mt.iter().map(|&v| v as f32).collect(),
            r,
            ms: source.mean.iter().map(|&v| v as f32).collect(),
        }
    }

    /// The drift distance, once there are enough target samples.
    pub fn drift(&self, source: &HeadDomain) -> Option<f64> {
        if self.target.weight() < self.config.min_samples as f64 {
            return None;
        }
        drift(source, &self.target)
    }

    /// Forgets the target domain.
    pub fn reset(&mut self) {
        self.target.clear();
        self.t3a.clear();
        self.since = 0;
        self.w_last = 0.0;
        self.snapshot = Arc::new(Adapted::identity(self.config.method));
    }
}

#[cfg(test)]
mod tests;
