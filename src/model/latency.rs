//! `adaptd bench`: backbone latency (median of many runs after warm-up) and load-to-ready time,
//! the Rust side of `scripts/bench_backbone.py`, which runs onnxruntime beside it.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::model::backbone::{self, Backbone, DepthwiseLayout};
use crate::model::ModelDir;

/// The `q` quantile (nearest rank) of sorted, non-empty values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// What was run: the runtime, the model and how its depthwise convolutions ran. Both reports
/// carry it (flattened into their JSON) and print it as their first words.
#[derive(Debug, Serialize)]
pub struct Setup {
    pub runtime: &'static str,
    pub version: &'static str,
    pub model: String,
    pub threads: usize,
    /// Frames per forward pass (the model's batch dimension).
    pub batch: usize,
    pub runs: usize,
    /// Depthwise convolutions that ran channel-last, of all: `[channel_last, total]`.
    pub channel_last_depthwise: [usize; 2],
    /// How many of them ran on adaptd's own kernel.
    pub adaptd_depthwise: usize,
}

impl Setup {
    fn of(b: &Backbone, threads: usize, batch: usize, runs: usize) -> Setup {
        Setup {
            runtime: "tract",
            version: backbone::TRACT_VERSION,
            model: b.info().name.clone(),
            threads,
            batch,
            runs,
            channel_last_depthwise: b.info().channel_last_depthwise,
            adaptd_depthwise: b.info().adaptd_depthwise,
        }
    }
}

impl std::fmt::Display for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [last, total] = self.channel_last_depthwise;
        write!(
            f,
            "{} {} on {}: {} thread(s), batch {}, depthwise {last}/{total} channel-last ({} on adaptd's kernel)",
            self.runtime, self.version, self.model, self.threads, self.batch, self.adaptd_depthwise
        )
    }
}

/// One benchmark result.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    #[serde(flatten)]
    pub setup: Setup,
    pub load_ms: f64,
    /// The load read the model cache (`--cache-dir`).
    pub cached: bool,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
    /// `median_ms / batch`: the time per frame.
    pub median_ms_per_frame: f64,
}

/// What to run, for [`backbone`] and [`profile`].
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// Preprocessed input of one frame as raw little-endian f32; zeros when `None`.
    pub input: Option<&'a Path>,
    /// Timed (or profiled) forward passes.
    pub runs: usize,
    /// Untimed passes before them.
    pub warmup: usize,
    /// Threads inside one forward pass (tract's matrix products).
    pub threads: usize,
    /// Frames per pass: the model's batch dimension is set to this and the input repeated.
    pub batch: usize,
    /// Depthwise layout (the daemon's is the default).
    pub layout: DepthwiseLayout,
}

/// Loads the backbone (through the model cache in `cache_dir` when given) and times
/// `o.runs` forward passes after `o.warmup`.
pub fn backbone(
    model: &ModelDir,
    o: &Options<'_>,
    cache_dir: Option<&Path>,
) -> anyhow::Result<BenchReport> {
    let (runs, warmup, threads, batch) = (o.runs, o.warmup, o.threads, o.batch.max(1));
    backbone::set_threads(threads);
    let model = batched(model, batch)?;
    let started = Instant::now();
    let b = Backbone::load_with(&model, false, cache_dir, o.layout)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let x = input_tensor(&b, o.input)?;
    for _ in 0..warmup {
        b.embed(&x)?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        b.embed(&x)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| quantile(&times, q);
    Ok(BenchReport {
        setup: Setup::of(&b, threads, batch, times.len()),
        load_ms,
        cached: b.info().cached,
        median_ms: at(0.5),
        p90_ms: at(0.9),
        min_ms: times[0],
        median_ms_per_frame: at(0.5) / batch as f64,
    })
}

/// `model` with its input's batch dimension (the first, 1 in the model file) set to `batch`.
fn batched(model: &ModelDir, batch: usize) -> anyhow::Result<ModelDir> {
    let mut model = model.clone();
    if batch > 1 {
        let shape = &mut model.spec.input.shape;
        anyhow::ensure!(
            shape.first() == Some(&1),
            "--batch needs a model whose input has batch dimension 1 first, not {shape:?}"
        );
        shape[0] = batch;
    }
    Ok(model)
}

/// The benchmark input: `input` (raw little-endian f32 of one frame) repeated for every frame of
/// the batch (the model's first dimension), or zeros.
fn input_tensor(b: &Backbone, input: Option<&Path>) -> anyhow::Result<Vec<f32>> {
    let shape = &b.info().input_shape;
    let batch = shape.first().copied().unwrap_or(1).max(1);
    let n: usize = shape.iter().skip(1).product();
    Ok(match input {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            anyhow::ensure!(
                bytes.len() == n * 4,
                "{} is not {n} f32 values",
                p.display()
            );
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect::<Vec<f32>>()
                .repeat(batch)
        }
        None => vec![0f32; n * batch],
    })
}

/// Time per operator type, per forward pass.
#[derive(Debug, Serialize)]
pub struct OpTime {
    pub op: String,
    pub nodes: usize,
    pub ms: f64,
    pub share: f64,
}

/// `adaptd bench --profile`: where one forward pass spends its time in tract's optimized plan.
#[derive(Debug, Serialize)]
pub struct ProfileReport {
    #[serde(flatten)]
    pub setup: Setup,
    /// Sum of the nodes' times per forward pass.
    pub total_ms: f64,
    pub by_op: Vec<OpTime>,
    /// Every timed node, slowest first, in ms per forward pass.
    pub nodes: Vec<backbone::NodeTime>,
}

/// Profiles the backbone node by node over `o.runs` passes after `o.warmup`.
pub fn profile(model: &ModelDir, o: &Options<'_>) -> anyhow::Result<ProfileReport> {
    let (runs, warmup, threads, batch) = (o.runs, o.warmup, o.threads, o.batch.max(1));
    backbone::set_threads(threads);
    let b = Backbone::load_with(&batched(model, batch)?, false, None, o.layout)?;
    let x = input_tensor(&b, o.input)?;
    for _ in 0..warmup {
        b.embed(&x)?;
    }
    let runs = runs.max(1);
    let mut nodes = b.profile(&x, runs)?;
    for n in &mut nodes {
        n.ms /= runs as f64; // per pass
    }
    nodes.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    let total_ms: f64 = nodes.iter().map(|n| n.ms).sum();
    let mut by_op: Vec<OpTime> = Vec::new();
    for n in &nodes {
        match by_op.iter_mut().find(|o| o.op == n.op) {
            Some(o) => {
                o.nodes += 1;
                o.ms += n.ms;
            }
            None => by_op.push(OpTime {
                op: n.op.clone(),
                nodes: 1,
                ms: n.ms,
                share: 0.0,
            }),
        }
    }
    for o in &mut by_op {
        o.share = o.ms / total_ms.max(f64::MIN_POSITIVE);
    }
    by_op.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(ProfileReport {
        setup: Setup::of(&b, threads, batch, runs),
        total_ms,
        by_op,
        nodes,
    })
}
