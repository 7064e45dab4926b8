//! `adaptd bench`: backbone latency (median of many runs after warm-up) and load-to-ready time,
//! the Rust side of `scripts/bench_backbone.py`, which runs onnxruntime beside it.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::backbone::{self, Backbone};
use crate::model::ModelDir;
use crate::stats::quantile;

/// One benchmark result.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub runtime: &'static str,
    pub version: &'static str,
    pub model: String,
    pub threads: usize,
    pub runs: usize,
    pub load_ms: f64,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
}

/// Loads the backbone and times `runs` forward passes after `warmup`, on `input` (raw f32) or
/// zeros, with tract's matrix products on `threads` threads.
pub fn backbone(
    model: &ModelDir,
    input: Option<&Path>,
    runs: usize,
    warmup: usize,
    threads: usize,
) -> anyhow::Result<BenchReport> {
    backbone::set_threads(threads);
    let started = Instant::now();
    let b = Backbone::load(model, false)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let n: usize = b.info().input_shape.iter().product();
    let x = match input {
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
                .collect()
        }
        None => vec![0f32; n],
    };
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
        runtime: "tract",
        version: backbone::TRACT_VERSION,
        model: b.info().name.clone(),
        threads,
        runs: times.len(),
        load_ms,
        median_ms: at(0.5),
        p90_ms: at(0.9),
        min_ms: times[0],
    })
}
