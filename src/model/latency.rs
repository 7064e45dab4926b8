//! `adaptd bench`: backbone latency (median of many runs after warm-up) and load-to-ready time,
//! the Rust side of `scripts/bench_backbone.py`, which runs onnxruntime beside it; with `--clip`,
//! a sound model's path stage by stage (the Rust side of `scripts/bench_sound.py`); with `--text`,
//! a text model's (the Rust side of `scripts/bench_text.py`).

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::model::audio;
use crate::model::backbone::{self, Backbone, DepthwiseLayout};
use crate::model::{Embedder, ModelDir};

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
    /// Convolutions and products that ran on adaptd's own matrix product.
    pub adaptd_products: usize,
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
            adaptd_products: b.info().adaptd_products,
        }
    }
}

impl std::fmt::Display for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [last, total] = self.channel_last_depthwise;
        write!(
            f,
            "{} {} on {}: {} thread(s), batch {}, depthwise {last}/{total} channel-last ({} on adaptd's kernel), {} products on adaptd's kernel",
            self.runtime, self.version, self.model, self.threads, self.batch, self.adaptd_depthwise, self.adaptd_products
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
    let t = Timing::of(warmup, runs, || b.embed(&x).map(drop))?;
    Ok(BenchReport {
        setup: Setup::of(&b, threads, batch, t.runs),
        load_ms,
        cached: b.info().cached,
        median_ms: t.median_ms,
        p90_ms: t.p90_ms,
        min_ms: t.min_ms,
        median_ms_per_frame: t.median_ms / batch as f64,
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

/// Times of one measured stage, in ms: `runs` timed calls after `warmup` untimed ones.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timing {
    pub median_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
    pub runs: usize,
}

impl Timing {
    /// Calls `f` `warmup` times untimed, then `runs` (at least 1) times timed.
    fn of<E>(
        warmup: usize,
        runs: usize,
        mut f: impl FnMut() -> Result<(), E>,
    ) -> Result<Timing, E> {
        for _ in 0..warmup {
            f()?;
        }
        let mut times = Vec::with_capacity(runs.max(1));
        for _ in 0..runs.max(1) {
            let t = Instant::now();
            f()?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok(Timing {
            median_ms: quantile(&times, 0.5),
            p90_ms: quantile(&times, 0.9),
            min_ms: times[0],
            runs: times.len(),
        })
    }
}

/// `adaptd bench --clip`: the sound path of one clip, stage by stage and end to end, on one
/// thread (the Rust side of `scripts/bench_sound.py`, which runs numpy and onnxruntime beside it).
#[derive(Debug, Serialize)]
pub struct ClipReport {
    #[serde(flatten)]
    pub setup: Setup,
    /// The clip file, as given.
    pub clip: String,
    /// Its rate and channel count as stored (before down-mix and resampling).
    pub sample_rate: u32,
    pub channels: u16,
    /// Its duration: samples per channel / rate.
    pub clip_seconds: f64,
    /// Backbone inputs (windows) the clip makes.
    pub windows: usize,
    /// Load of the embedder (front-end and backbone), ms.
    pub load_ms: f64,
    pub cached: bool,
    /// (a) WAV bytes → windows: decode, down-mix, resample, log-mel, windows
    /// ([`Embedder::preprocess_payload`]).
    pub front_end: Timing,
    /// (b) One backbone pass on the clip's first window.
    pub backbone_per_window: Timing,
    /// (c) WAV bytes → clip embedding: the front-end, the backbone once per window and the
    /// mean ([`Embedder::embed_payload`]).
    pub end_to_end: Timing,
    /// Seconds of audio per second of single-core compute, end to end (median):
    /// `clip_seconds / end_to_end.median_ms · 1000`.
    pub real_time_factor: f64,
}

/// Times the sound path of the WAV file `clip` with the daemon's embedder (its front-end and
/// backbone, loaded through the model cache in `cache_dir` when given), each stage `o.runs`
/// times after `o.warmup`, one stage after the other. Runs on one thread: `o.threads`, `o.batch`,
/// `o.input` and a depthwise layout other than the daemon's are refused.
pub fn clip(
    model: &ModelDir,
    o: &Options<'_>,
    clip: &Path,
    cache_dir: Option<&Path>,
) -> anyhow::Result<ClipReport> {
    anyhow::ensure!(
        model.spec.audio.is_some(),
        "--clip needs a sound model (one with an [audio] section), e.g. --model models/yamnet-l10; \
         {} has none",
        model.dir.display()
    );
    anyhow::ensure!(
        o.threads == 1 && o.batch <= 1 && o.input.is_none() && o.layout == DepthwiseLayout::Adaptd,
        "--clip measures the daemon's path on one thread: no --threads, --batch, --input or \
         --depthwise-layout with it"
    );
    backbone::set_threads(1);
    let bytes = std::fs::read(clip).with_context(|| format!("reading {}", clip.display()))?;
    let (sample_rate, channels, frames) = wav_shape(&bytes)
        .with_context(|| format!("{} is not a WAV file adaptd can read", clip.display()))?;
    let started = Instant::now();
    let embedder = Embedder::load_cached(model.clone(), false, cache_dir)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let windows = embedder
        .preprocess_payload(&bytes)
        .with_context(|| format!("front-end of {}", clip.display()))?;
    let first = windows
        .first()
        .context("the front-end made no window")?
        .clone();
    let (runs, warmup) = (o.runs, o.warmup);
    let front_end = Timing::of(warmup, runs, || {
        embedder.preprocess_payload(&bytes).map(drop)
    })?;
    let backbone_per_window =
        Timing::of(warmup, runs, || embedder.backbone.embed(&first).map(drop))?;
    let end_to_end = Timing::of(warmup, runs, || embedder.embed_payload(&bytes).map(drop))?;
    let clip_seconds = frames as f64 / f64::from(sample_rate);
    Ok(ClipReport {
        setup: Setup::of(&embedder.backbone, 1, 1, end_to_end.runs),
        clip: clip.display().to_string(),
        sample_rate,
        channels,
        clip_seconds,
        windows: windows.len(),
        load_ms,
        cached: embedder.backbone.info().cached,
        front_end,
        backbone_per_window,
        end_to_end,
        real_time_factor: clip_seconds / (end_to_end.median_ms / 1e3),
    })
}

/// `adaptd bench --text`: the text path of one text, stage by stage and end to end, on one
/// thread (the Rust side of `scripts/bench_text.py`, which runs `tokenizers` and onnxruntime).
#[derive(Debug, Serialize)]
pub struct TextReport {
    #[serde(flatten)]
    pub setup: Setup,
    /// The text file, as given.
    pub text: String,
    pub bytes: usize,
    /// Token ids the encoder runs (`[CLS]` and `[SEP]` included) and whether the text was cut.
    pub tokens: usize,
    pub truncated: bool,
    /// The ids, so the reference runs exactly the same input.
    pub ids: Vec<i64>,
    /// Load of the embedder (vocabulary and encoder), ms.
    pub load_ms: f64,
    /// (a) text → ids.
    pub tokenizer: Timing,
    /// (b) ids → embedding.
    pub encoder: Timing,
    /// (c) payload bytes → embedding ([`Embedder::embed_payload`]).
    pub end_to_end: Timing,
}

/// Times the text path of the UTF-8 file `text` with the daemon's embedder, each stage `o.runs`
/// times after `o.warmup`. One thread; `o.threads`, `o.batch`, `o.input` are refused.
pub fn text(model: &ModelDir, o: &Options<'_>, text: &Path) -> anyhow::Result<TextReport> {
    anyhow::ensure!(
        model.spec.text.is_some(),
        "--text needs a text model (one with a [text] section), e.g. --model \
         models/paraphrase-minilm-l3; {} has none",
        model.dir.display()
    );
    anyhow::ensure!(
        o.threads == 1 && o.batch <= 1 && o.input.is_none(),
        "--text measures the daemon's path on one thread: no --threads, --batch or --input with it"
    );
    backbone::set_threads(1);
    let bytes = std::fs::read(text).with_context(|| format!("reading {}", text.display()))?;
    let started = Instant::now();
    let embedder = Embedder::load(model.clone(), false)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let tokenizer = embedder.tokenizer.as_ref().context("no tokenizer")?;
    let s = tokenizer
        .text(&bytes)
        .with_context(|| format!("{} is not a text the model takes", text.display()))?;
    let tokens = tokenizer.encode(s);
    let (runs, warmup) = (o.runs, o.warmup);
    let tokenizer_t = Timing::of(warmup, runs, || {
        std::hint::black_box(tokenizer.encode(s));
        Ok::<(), std::convert::Infallible>(())
    })?;
    let encoder = Timing::of(warmup, runs, || {
        embedder.backbone.run_tokens(&tokens.ids).map(drop)
    })?;
    let end_to_end = Timing::of(warmup, runs, || embedder.embed_payload(&bytes).map(drop))?;
    Ok(TextReport {
        setup: Setup::of(&embedder.backbone, 1, 1, end_to_end.runs),
        text: text.display().to_string(),
        bytes: bytes.len(),
        tokens: tokens.ids.len(),
        truncated: tokens.truncated,
        ids: tokens.ids,
        load_ms,
        tokenizer: tokenizer_t,
        encoder,
        end_to_end,
    })
}

/// `adaptd bench --image`: the image path of one photo, stage by stage and end to end, on one
/// thread (the Rust side of `scripts/bench_image.py`, which runs PIL and onnxruntime beside it).
#[derive(Debug, Serialize)]
pub struct ImageReport {
    #[serde(flatten)]
    pub setup: Setup,
    /// The image file, as given, and its size.
    pub image: String,
    pub bytes: usize,
    pub width: u32,
    pub height: u32,
    /// Load of the embedder, ms.
    pub load_ms: f64,
    pub cached: bool,
    /// (a) file bytes → pixels (JPEG/PNG decoding).
    pub decode: Timing,
    /// (b) pixels → input tensor: crop, resize, normalise (the model's `[input]` recipe).
    pub preprocess: Timing,
    /// (c) One backbone pass on that tensor.
    pub backbone: Timing,
    /// (d) file bytes → embedding ([`Embedder::embed_payload`], the path a worker takes).
    pub end_to_end: Timing,
}

/// Times the image path of `image` with the daemon's embedder (its backbone loaded through the
/// model cache in `cache_dir` when given), each stage `o.runs` times after `o.warmup`. One
/// thread, the daemon's layout.
pub fn image(
    model: &ModelDir,
    o: &Options<'_>,
    image: &Path,
    cache_dir: Option<&Path>,
) -> anyhow::Result<ImageReport> {
    anyhow::ensure!(
        model.spec.audio.is_none() && model.spec.text.is_none() && model.spec.sensor.is_none(),
        "--image needs an image model; {} takes sound, text or sensor windows",
        model.dir.display()
    );
    anyhow::ensure!(
        o.threads == 1 && o.batch <= 1 && o.input.is_none() && o.layout == DepthwiseLayout::Adaptd,
        "--image measures the daemon's path on one thread: no --threads, --batch, --input or \
         --depthwise-layout with it"
    );
    backbone::set_threads(1);
    let bytes = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let started = Instant::now();
    let embedder = Embedder::load_cached(model.clone(), false, cache_dir)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let decoded = crate::model::input::decode_image(&bytes)
        .with_context(|| format!("{} is not an image adaptd can read", image.display()))?;
    let tensor = embedder.preprocessor.from_image(&decoded)?;
    let (runs, warmup) = (o.runs, o.warmup);
    let decode = Timing::of(warmup, runs, || {
        crate::model::input::decode_image(&bytes).map(drop)
    })?;
    let preprocess = Timing::of(warmup, runs, || {
        embedder.preprocessor.from_image(&decoded).map(drop)
    })?;
    let backbone_t = Timing::of(warmup, runs, || embedder.backbone.embed(&tensor).map(drop))?;
    let end_to_end = Timing::of(warmup, runs, || embedder.embed_payload(&bytes).map(drop))?;
    Ok(ImageReport {
        setup: Setup::of(&embedder.backbone, 1, 1, end_to_end.runs),
        image: image.display().to_string(),
        bytes: bytes.len(),
        width: decoded.width(),
        height: decoded.height(),
        load_ms,
        cached: embedder.backbone.info().cached,
        decode,
        preprocess,
        backbone: backbone_t,
        end_to_end,
    })
}

/// Rate, channels and frames (samples per channel) of a WAV file, as the front-end decodes it
/// (no duration limit); the channel count is read from the `fmt ` chunk.
fn wav_shape(bytes: &[u8]) -> anyhow::Result<(u32, u16, usize)> {
    let clip = audio::decode_wav(bytes, f64::from(u32::MAX))?;
    let mut at = 12;
    let channels = loop {
        let Some(header) = bytes.get(at..at + 8) else {
            anyhow::bail!("no fmt chunk");
        };
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if &header[..4] == b"fmt " {
            let c = bytes.get(at + 10..at + 12).context("short fmt chunk")?;
            break u16::from_le_bytes([c[0], c[1]]);
        }
        at = at
            .saturating_add(8)
            .saturating_add(len)
            .saturating_add(len % 2);
    };
    Ok((clip.rate, channels, clip.samples.len()))
}
