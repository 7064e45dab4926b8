//! `adaptd eval --shift`: the domain-adaptation benchmark. Deterministic image corruptions
//! (brightness, contrast, colour cast, Gaussian noise, blur, JPEG quality; severities 1–5),
//! a head trained on the clean split and moved through its file format (the two-board case),
//! the corrupted test split streamed as unlabeled traffic through each adaptation method, and
//! the target oracle (a head trained on the corrupted training split). See
//! `docs/adaptation.md`. Images only: a dataset of sound clips is refused.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use image::{imageops, ImageFormat, RgbImage};
use serde::Serialize;

use super::data::{self, InputKind, Origin, Rng};
use super::embed::{self, Cache};
use super::EvalArgs;
use crate::adapt::{AdaptConfig, Adapted, Adapter, HeadDomain, Method};
use crate::head::{Algorithm, Expect, Head, HeadConfig, Predictor};

/// A corruption of the camera image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Corruption {
    Brightness,
    Contrast,
    Colour,
    Noise,
    Blur,
    Jpeg,
}

impl Corruption {
    /// Every corruption, in report order.
    pub const ALL: [Corruption; 6] = [
        Corruption::Brightness,
        Corruption::Contrast,
        Corruption::Colour,
        Corruption::Noise,
        Corruption::Blur,
        Corruption::Jpeg,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Corruption::Brightness => "brightness",
            Corruption::Contrast => "contrast",
            Corruption::Colour => "colour",
            Corruption::Noise => "noise",
            Corruption::Blur => "blur",
            Corruption::Jpeg => "jpeg",
        }
    }

    /// The parameter at severity 1..=5 (ImageNet-C's values where it has the corruption).
    pub fn parameter(self, severity: u8) -> f32 {
        let i = usize::from(severity.clamp(1, 5) - 1);
        let table: [f32; 5] = match self {
            // Added to every channel, on [0, 1].
            Corruption::Brightness => [0.1, 0.2, 0.3, 0.4, 0.5],
            // Contrast factor around the image mean.
            Corruption::Contrast => [0.4, 0.3, 0.2, 0.1, 0.05],
            // Red gain 1 + a, blue gain 1 − a (a warm cast).
            Corruption::Colour => [0.1, 0.2, 0.3, 0.4, 0.5],
            // Standard deviation of additive Gaussian noise, on [0, 1].
            Corruption::Noise => [0.08, 0.12, 0.18, 0.26, 0.38],
            // Gaussian blur sigma, pixels at the model's input size.
            Corruption::Blur => [1.0, 2.0, 3.0, 4.0, 6.0],
            // JPEG quality.
            Corruption::Jpeg => [25.0, 18.0, 15.0, 10.0, 7.0],
        };
        table[i]
    }
}

/// A corruption at a severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shift {
    pub corruption: Corruption,
    pub severity: u8,
}

/// Parses `NAME[:SEVERITY]` (severity 1–5, default 3); `all[:S]` is every corruption.
pub fn parse_shifts(specs: &[String]) -> Result<Vec<Shift>> {
    let mut out: Vec<Shift> = Vec::new();
    for spec in specs {
        let (name, sev) = match spec.split_once(':') {
            Some((n, s)) => (n.trim(), s.trim()),
            None => (spec.trim(), "3"),
        };
        let severity: u8 = sev
            .parse()
            .ok()
            .filter(|s| (1..=5).contains(s))
            .with_context(|| format!("--shift {spec}: severity must be 1..5"))?;
        let list: Vec<Corruption> = if name == "all" {
            Corruption::ALL.to_vec()
        } else {
            vec![Corruption::ALL
                .into_iter()
                .find(|c| c.name() == name)
                .with_context(|| {
                    format!(
                        "--shift {spec}: unknown corruption (all, {})",
                        Corruption::ALL.map(Corruption::name).join(", ")
                    )
                })?]
        };
        for corruption in list {
            let s = Shift {
                corruption,
                severity,
            };
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// Decodes an image and resizes it to the model's input size (the camera frame the
/// corruptions act on).
pub fn prepare(bytes: &[u8], size: (u32, u32)) -> Result<RgbImage> {
    let img = image::load_from_memory(bytes).context("decoding the image")?;
    let rgb = img.to_rgb8();
    let (h, w) = size;
    if rgb.dimensions() == (w, h) {
        return Ok(rgb);
    }
    Ok(imageops::resize(
        &rgb,
        w,
        h,
        imageops::FilterType::CatmullRom,
    ))
}

fn to_u8(v: f32) -> u8 {
    (v * 255.0).round().clamp(0.0, 255.0) as u8
}

fn encode(img: &RgbImage, jpeg_quality: Option<u8>) -> Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    match jpeg_quality {
        Some(q) => {
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, q);
            img.write_with_encoder(enc).context("encoding JPEG")?;
        }
        None => img
            .write_to(&mut out, ImageFormat::Png)
            .context("encoding PNG")?,
    }
    Ok(out.into_inner())
}

/// Applies `shift` (or nothing) to `img` and encodes the result (PNG, or JPEG for the JPEG
/// corruption). Deterministic: noise is seeded by `seed`.
pub fn corrupt(img: &RgbImage, shift: Option<Shift>, seed: u64) -> Result<Vec<u8>> {
    let Some(s) = shift else {
        return encode(img, None);
    };
    let p = s.corruption.parameter(s.severity);
    let mut out = img.clone();
    match s.corruption {
        Corruption::Brightness => out.pixels_mut().for_each(|px| {
            px.0 = px.0.map(|c| to_u8(f32::from(c) / 255.0 + p));
        }),
        Corruption::Contrast => {
            let n = (img.width() * img.height() * 3).max(1) as f32;
            let mean = img.pixels().flat_map(|px| px.0).map(f32::from).sum::<f32>() / 255.0 / n;
            out.pixels_mut().for_each(|px| {
                px.0 =
                    px.0.map(|c| to_u8((f32::from(c) / 255.0 - mean) * p + mean));
            });
        }
        Corruption::Colour => out.pixels_mut().for_each(|px| {
            let [r, g, b] = px.0.map(|c| f32::from(c) / 255.0);
            px.0 = [to_u8(r * (1.0 + p)), to_u8(g), to_u8(b * (1.0 - p))];
        }),
        Corruption::Noise => {
            let mut rng = Rng::new(seed, 0x6e6f697365);
            out.pixels_mut().for_each(|px| {
                px.0 =
                    px.0.map(|c| to_u8(f32::from(c) / 255.0 + p * rng.normal() as f32));
            });
        }
        Corruption::Blur => out = imageops::blur(img, p),
        Corruption::Jpeg => return encode(img, Some(p as u8)),
    }
    encode(&out, None)
}

/// Accuracy after the first `frames` unlabeled frames of the stream.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    pub frames: usize,
    pub accuracy: f64,
}

/// One method's result on one domain.
#[derive(Debug, Clone, Serialize)]
pub struct MethodResult {
    pub method: Method,
    /// Test accuracy after the whole unlabeled stream.
    pub accuracy: f64,
    /// Test accuracy with the correction the daemon would apply after each of `--frames`
    /// unlabeled frames (its recompute schedule, without its CPU bound).
    pub curve: Vec<Point>,
    /// Median µs per unlabeled sample (statistics update, plus t3a's support update).
    pub observe_us: f64,
    /// Drift distance after the stream.
    pub drift: Option<f64>,
}

/// One corruption for one learner.
#[derive(Debug, Clone, Serialize)]
pub struct ShiftResult {
    pub learner: Algorithm,
    pub shift: Shift,
    /// Accuracy of the clean head on the clean test split (no adaptation).
    pub clean: f64,
    /// Per method, on the corrupted test split (`none` = the shifted accuracy).
    pub shifted: Vec<MethodResult>,
    /// A head trained on the corrupted training split, on the corrupted test split.
    pub oracle: f64,
}

impl ShiftResult {
    fn accuracy(&self, m: Method) -> Option<f64> {
        self.shifted
            .iter()
            .find(|r| r.method == m)
            .map(|r| r.accuracy)
    }

    /// Fraction of the accuracy lost to the shift that `m` recovers (`None` when the shift
    /// cost less than one point).
    pub fn recovered(&self, m: Method) -> Option<f64> {
        let none = self.accuracy(Method::None)?;
        let lost = self.clean - none;
        let acc = self.accuracy(m)?;
        (lost >= 0.01).then(|| (acc - none) / lost)
    }
}

/// The whole `--shift` report.
#[derive(Debug, Clone, Serialize)]
pub struct ShiftReport {
    pub dataset: String,
    pub classes: usize,
    pub train: usize,
    pub test: usize,
    pub seed: u64,
    pub backbone_sha256: String,
    pub adapt: AdaptConfig,
    pub methods: Vec<Method>,
    /// Per learner and method: accuracy on the clean test split after streaming it as
    /// unlabeled traffic (the cost of adapting when nothing shifted).
    pub clean: Vec<(Algorithm, Vec<MethodResult>)>,
    pub results: Vec<ShiftResult>,
}

type Set = Vec<(Vec<f32>, usize)>;

/// The frames (1-based) after which the daemon's schedule recomputes, over `n` frames. The
/// schedule depends only on sample counts, so a `none` adapter fed zeros finds it cheaply.
fn recompute_points(config: &AdaptConfig, dim: usize, n: usize, head: &Head) -> Vec<usize> {
    let config = AdaptConfig {
        method: Method::None,
        ..config.clone()
    };
    let (source, predictor) = (HeadDomain::of(head, false), head.snapshot());
    let mut a = Adapter::new(config, dim);
    let zero = vec![0.0f32; dim];
    let mut out = Vec::new();
    for i in 1..=n {
        a.observe(&zero, &predictor);
        if a.due() {
            a.recompute(&source, &predictor);
            out.push(i);
        }
    }
    out
}

/// Streams `test` as unlabeled traffic through a fresh adapter for `method`, recomputing
/// as the daemon does, then scores `test`: after each of `frames` frames (with the latest
/// correction of the daemon's schedule) and after the whole stream.
#[allow(clippy::too_many_arguments)]
fn adapt_and_score(
    config: &AdaptConfig,
    method: Method,
    head: &Head,
    predictor: &Predictor,
    classes: &[String],
    test: &Set,
    seed: u64,
    frames: &[usize],
) -> MethodResult {
    let config = AdaptConfig {
        method,
        ..config.clone()
    };
    let source = HeadDomain::of(head, method == Method::Coral);
    let frames: Vec<usize> = frames
        .iter()
        .copied()
        .filter(|&f| f >= 1 && f <= test.len())
        .collect();
    // Only the last recompute before each checkpoint is scored: skip the others (coral's
    // eigendecompositions are the slow part of the benchmark).
    let points = recompute_points(
        &config,
        head.dim(),
        frames.iter().max().copied().unwrap_or(0),
        head,
    );
    let needed: BTreeSet<usize> = frames
        .iter()
        .filter_map(|&f| points.iter().rev().find(|&&p| p <= f).copied())
        .collect();
    let mut adapter = Adapter::new(config, head.dim());
    let order = data::stream_order(test.len(), seed ^ 0xada9);
    let mut times = Vec::with_capacity(test.len());
    let mut curve = Vec::with_capacity(frames.len());
    let mut current = Arc::new(Adapted::identity(method));
    for (k, &i) in order.iter().enumerate() {
        let started = Instant::now();
        adapter.observe(&test[i].0, predictor);
        times.push(started.elapsed().as_secs_f64() * 1e6);
        let seen = k + 1;
        if needed.contains(&seen) {
            current = adapter.recompute(&source, predictor);
        }
        if frames.contains(&seen) {
            curve.push(Point {
                frames: seen,
                accuracy: score(&current, predictor, classes, test),
            });
        }
    }
    // After the whole stream: the correction of the last recompute, made now (t3a's
    // pseudo-labels come from the head, not from the adjusted classifier).
    let snapshot = adapter.recompute(&source, predictor);
    let accuracy = score(&snapshot, predictor, classes, test);
    MethodResult {
        method,
        accuracy,
        curve,
        observe_us: super::prequential::Timing::of(times).median_us,
        drift: adapter.drift(&HeadDomain::of(head, false)),
    }
}

fn train_head(
    config: &HeadConfig,
    dim: usize,
    backbone: &str,
    classes: &[String],
    train: &Set,
) -> Result<Head> {
    let mut head = Head::new(config, dim, backbone);
    for (x, y) in train {
        head.update(x, &classes[*y])?;
    }
    Ok(head)
}

/// The two-board case: the head leaves one board as a file and arrives on another.
fn export_import(head: &Head) -> Result<Head> {
    let bytes = head.to_bytes()?;
    Ok(Head::from_bytes(
        &bytes,
        &Expect {
            backbone_sha256: Some(head.backbone_sha256()),
            dim: Some(head.dim()),
            max_bytes: usize::MAX,
        },
    )?)
}

/// Accuracy of `p` without adaptation.
fn accuracy(p: &Predictor, classes: &[String], test: &Set) -> f64 {
    score(&Adapted::identity(Method::None), p, classes, test)
}

/// Accuracy of `p` on `test` with the adaptation snapshot `a` applied.
fn score(a: &Adapted, p: &Predictor, classes: &[String], test: &Set) -> f64 {
    let right = test
        .iter()
        .filter(|(x, y)| {
            a.predict(p, x, 1)
                .ok()
                .and_then(|r| r.top.first().map(|s| s.label == classes[*y]))
                .unwrap_or(false)
        })
        .count();
    right as f64 / test.len().max(1) as f64
}

/// Runs the benchmark for `args` (which has `--data` and `--shift`).
pub fn run(args: &EvalArgs, head_config: &HeadConfig) -> Result<ShiftReport> {
    let dir = args
        .data
        .as_deref()
        .context("--shift needs --data DIR (a folder-per-class image dataset)")?;
    let shifts = parse_shifts(&args.shift)?;
    let adapt = match &args.adapt_config {
        Some(p) => read_adapt_config(p)?,
        None => AdaptConfig::default(),
    };
    let scan = data::scan(dir)?;
    let sounds = scan
        .items
        .iter()
        .filter(
            |i| matches!(&i.origin, Origin::Input(p) if InputKind::of(p) == Some(InputKind::Sound)),
        )
        .count();
    anyhow::ensure!(
        sounds == 0,
        "--shift corrupts images ({}); {} has {sounds} sound clip(s) (.wav), to which none of \
         them applies: run adaptd eval on it without --shift",
        Corruption::ALL.map(Corruption::name).join(", "),
        dir.display()
    );
    let items: Vec<(std::path::PathBuf, String)> = scan
        .items
        .into_iter()
        .filter_map(|i| match i.origin {
            Origin::Input(p) => Some((p, i.label)),
            Origin::Vector(_) => None,
        })
        .collect();
    anyhow::ensure!(!items.is_empty(), "{} has no images", dir.display());
    let classes: Vec<String> = items
        .iter()
        .map(|(_, l)| l.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let labels: Vec<usize> = items
        .iter()
        .map(|(_, l)| classes.binary_search(l).unwrap_or(0))
        .collect();
    let (train_ix, test_ix) = data::stratified_split(&labels, args.test_fraction, args.seed);
    let order = data::stream_order(train_ix.len(), args.seed);
    let train_ix: Vec<usize> = order.iter().map(|&i| train_ix[i]).collect();

    let model = crate::model::ModelDir::find(args.model.as_deref())?;
    let id = super::model_id(&model)?;
    let size = model
        .spec
        .input
        .image_size()
        .context("the model does not take images")?;
    let root = if args.no_cache {
        None
    } else {
        args.cache.clone().or_else(embed::default_cache_dir)
    };
    let cache = root.as_deref().map(|r| Cache::new(r, &id));
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

    // Embeds every item under one shift (None = clean) → per item, the embedding.
    let embed_variant = |shift: Option<Shift>| -> Result<Vec<Option<Vec<f32>>>> {
        let label = shift.map_or("clean".to_string(), |s| {
            format!("{}:{}", s.corruption.name(), s.severity)
        });
        tracing::info!("embedding {} images ({label})", items.len());
        let load = |i: usize| -> Result<Vec<u8>> {
            let (path, _) = &items[i];
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            corrupt(
                &prepare(&bytes, size)?,
                shift,
                args.seed.wrapping_add(i as u64),
            )
        };
        let name = |i: usize| format!("{} ({label})", items[i].0.display());
        let (v, _) =
            embed::embed_with(items.len(), &load, &name, &model, &id, cache.as_ref(), jobs)?;
        Ok(v)
    };
    let pick = |v: &[Option<Vec<f32>>], ix: &[usize]| -> Set {
        ix.iter()
            .filter_map(|&i| v[i].clone().map(|x| (x, labels[i])))
            .collect()
    };
    let clean = embed_variant(None)?;
    let (clean_train, clean_test) = (pick(&clean, &train_ix), pick(&clean, &test_ix));
    anyhow::ensure!(
        !clean_train.is_empty() && !clean_test.is_empty(),
        "empty split"
    );
    let dim = clean_train[0].0.len();
    let backbone = id.backbone_sha256.clone();
    let mut learners: Vec<Algorithm> = Vec::new();
    for a in &args.learners {
        if !learners.contains(a) {
            learners.push(*a);
        }
    }
    let methods = Method::ALL.to_vec();
    let mut heads = Vec::new();
    let mut clean_rows = Vec::new();
    for &algorithm in &learners {
        let config = HeadConfig {
            algorithm,
            ..head_config.clone()
        };
        let head = export_import(&train_head(
            &config,
            dim,
            &backbone,
            &classes,
            &clean_train,
        )?)?;
        let predictor = head.snapshot();
        let rows: Vec<MethodResult> = methods
            .iter()
            .map(|&m| {
                adapt_and_score(
                    &adapt,
                    m,
                    &head,
                    &predictor,
                    &classes,
                    &clean_test,
                    args.seed,
                    &args.frames,
                )
            })
            .collect();
        tracing::info!(
            "{algorithm}: clean {:.3}; after adapting to clean traffic: {}",
            accuracy(&predictor, &classes, &clean_test),
            rows.iter()
                .map(|r| format!("{} {:.3}", r.method, r.accuracy))
                .collect::<Vec<_>>()
                .join(", ")
        );
        clean_rows.push((algorithm, rows));
        heads.push((config, head, predictor));
    }
    let mut results = Vec::new();
    for shift in shifts {
        let v = embed_variant(Some(shift))?;
        let (train, test) = (pick(&v, &train_ix), pick(&v, &test_ix));
        for (config, head, predictor) in &heads {
            let oracle_head = train_head(config, dim, &backbone, &classes, &train)?;
            let oracle = accuracy(&oracle_head.snapshot(), &classes, &test);
            let shifted = methods
                .iter()
                .map(|&m| {
                    adapt_and_score(
                        &adapt,
                        m,
                        head,
                        predictor,
                        &classes,
                        &test,
                        args.seed,
                        &args.frames,
                    )
                })
                .collect();
            let r = ShiftResult {
                learner: config.algorithm,
                shift,
                clean: accuracy(predictor, &classes, &clean_test),
                shifted,
                oracle,
            };
            tracing::info!(
                "{} {}:{}: clean {:.3}, {}, oracle {:.3}",
                r.learner,
                shift.corruption.name(),
                shift.severity,
                r.clean,
                r.shifted
                    .iter()
                    .map(|m| format!("{} {:.3}", m.method, m.accuracy))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.oracle
            );
            results.push(r);
        }
    }
    Ok(ShiftReport {
        dataset: args.name.clone().unwrap_or_else(|| super::dir_name(dir)),
        classes: classes.len(),
        train: clean_train.len(),
        test: clean_test.len(),
        seed: args.seed,
        backbone_sha256: backbone,
        adapt,
        methods,
        clean: clean_rows,
        results,
    })
}

/// Reads `--adapt-config`: `AdaptConfig` fields at the top level or in an `[adapt]` table.
fn read_adapt_config(path: &Path) -> Result<AdaptConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut value: toml::Table =
        toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    let table = match value.remove("adapt") {
        Some(toml::Value::Table(t)) => t,
        Some(_) => anyhow::bail!("[adapt] is not a table"),
        None => value,
    };
    let config: AdaptConfig = toml::Value::Table(table).try_into()?;
    config.validate().map_err(anyhow::Error::msg)?;
    Ok(config)
}

impl ShiftReport {
    /// Markdown tables: per learner, one row per corruption plus the mean.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} — {} classes, {} train / {} test, seed {}\n",
            self.dataset, self.classes, self.train, self.test, self.seed
        );
        for (learner, rows) in &self.clean {
            let _ = writeln!(s, "### {learner}\n");
            let _ = writeln!(
                s,
                "Unshifted domain (clean test streamed as unlabeled traffic): {}\n",
                rows.iter()
                    .map(|r| format!("{} {:.3}", r.method, r.accuracy))
                    .collect::<Vec<_>>()
                    .join(" · ")
            );
            let mut header = "| shift | clean | shifted |".to_string();
            let mut rule = "|---|---|---|".to_string();
            for m in self.methods.iter().filter(|m| **m != Method::None) {
                let _ = write!(header, " {m} | {m} rec. |");
                rule.push_str("---|---|");
            }
            header.push_str(" oracle | drift |");
            rule.push_str("---|---|");
            let _ = writeln!(s, "{header}\n{rule}");
            let mine: Vec<&ShiftResult> = self
                .results
                .iter()
                .filter(|r| r.learner == *learner)
                .collect();
            for r in &mine {
                let _ = write!(
                    s,
                    "| {}:{} | {:.3} | {:.3} |",
                    r.shift.corruption.name(),
                    r.shift.severity,
                    r.clean,
                    r.accuracy(Method::None).unwrap_or(f64::NAN)
                );
                for m in self.methods.iter().filter(|m| **m != Method::None) {
                    let rec = r
                        .recovered(*m)
                        .map_or("-".to_string(), |v| format!("{:.0}%", v * 100.0));
                    let _ = write!(s, " {:.3} | {rec} |", r.accuracy(*m).unwrap_or(f64::NAN));
                }
                let drift = r
                    .shifted
                    .first()
                    .and_then(|m| m.drift)
                    .map_or("-".to_string(), |d| format!("{d:.2}"));
                let _ = writeln!(s, " {:.3} | {drift} |", r.oracle);
            }
            if !mine.is_empty() {
                let n = mine.len() as f64;
                let avg =
                    |f: &dyn Fn(&ShiftResult) -> f64| mine.iter().map(|r| f(r)).sum::<f64>() / n;
                let clean = avg(&|r| r.clean);
                let none = avg(&|r| r.accuracy(Method::None).unwrap_or(0.0));
                let _ = write!(s, "| **mean** | {clean:.3} | {none:.3} |");
                for m in self.methods.iter().filter(|m| **m != Method::None) {
                    let acc = avg(&|r| r.accuracy(*m).unwrap_or(0.0));
                    let rec = if clean - none >= 0.01 {
                        format!("**{:.0}%**", (acc - none) / (clean - none) * 100.0)
                    } else {
                        "-".into()
                    };
                    let _ = write!(s, " {acc:.3} | {rec} |");
                }
                let _ = writeln!(s, " {:.3} | |", avg(&|r| r.oracle));
                let _ = writeln!(s);
                self.curve_table(&mut s, rows, &mine);
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(
            s,
            "rec. = (adapted − shifted) / (clean − shifted), per row; the mean row uses the mean accuracies. \
             µs per unlabeled sample (median): {}",
            self.clean
                .first()
                .map(|(_, rows)| rows
                    .iter()
                    .map(|r| format!("{} {:.0}", r.method, r.observe_us))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
        s
    }
}

impl ShiftReport {
    /// Per method, after each `--frames` count: the accuracy averaged over the corruptions with
    /// the fraction of the loss it recovers, and the change on the unshifted domain.
    fn curve_table(&self, s: &mut String, clean_rows: &[MethodResult], mine: &[&ShiftResult]) {
        let frames: Vec<usize> = clean_rows
            .first()
            .map(|r| r.curve.iter().map(|p| p.frames).collect())
            .unwrap_or_default();
        if frames.is_empty() || mine.is_empty() {
            return;
        }
        let n = mine.len() as f64;
        let at = |r: &MethodResult, f: usize| {
            r.curve
                .iter()
                .find(|p| p.frames == f)
                .map_or(f64::NAN, |p| p.accuracy)
        };
        let shifted_at = |m: Method, f: Option<usize>| -> f64 {
            mine.iter()
                .map(|r| {
                    r.shifted
                        .iter()
                        .find(|x| x.method == m)
                        .map_or(f64::NAN, |x| f.map_or(x.accuracy, |f| at(x, f)))
                })
                .sum::<f64>()
                / n
        };
        let clean = mine.iter().map(|r| r.clean).sum::<f64>() / n;
        let none = shifted_at(Method::None, None);
        let mut header = "| after … frames |".to_string();
        let mut rule = "|---|".to_string();
        for f in &frames {
            let _ = write!(header, " {f} |");
            rule.push_str("---|");
        }
        let _ = writeln!(
            s,
            "After few frames, shifted (mean over the corruptions; recovered = (acc − {none:.3}) / ({clean:.3} − {none:.3})):\n\n{header} all |\n{rule}---|"
        );
        for m in self.methods.iter().filter(|m| **m != Method::None) {
            let _ = write!(s, "| {m} |");
            for f in frames.iter().map(|&f| Some(f)).chain(std::iter::once(None)) {
                let acc = shifted_at(*m, f);
                if clean - none >= 0.01 {
                    let _ = write!(
                        s,
                        " {acc:.3} ({:.0}%) |",
                        (acc - none) / (clean - none) * 100.0
                    );
                } else {
                    let _ = write!(s, " {acc:.3} |");
                }
            }
            let _ = writeln!(s);
        }
        let base = clean_rows
            .iter()
            .find(|r| r.method == Method::None)
            .map_or(f64::NAN, |r| r.accuracy);
        let _ = writeln!(
            s,
            "\nAfter few frames, unshifted (accuracy − {base:.3}, points):\n\n{header} all |\n{rule}---|"
        );
        for r in clean_rows.iter().filter(|r| r.method != Method::None) {
            let _ = write!(s, "| {} |", r.method);
            for f in &frames {
                let _ = write!(s, " {:+.1} |", (at(r, *f) - base) * 100.0);
            }
            let _ = writeln!(s, " {:+.1} |", (r.accuracy - base) * 100.0);
        }
    }
}

/// A grouped bar chart: per corruption, the accuracy of the first learner shifted, with each
/// method and with the oracle; a dashed line at the clean accuracy.
pub fn plot_svg(report: &ShiftReport) -> String {
    let Some((learner, _)) = report.clean.first() else {
        return String::new();
    };
    let rows: Vec<&ShiftResult> = report
        .results
        .iter()
        .filter(|r| r.learner == *learner)
        .collect();
    let series: Vec<(String, &str)> = report
        .methods
        .iter()
        .map(|m| {
            let name = if *m == Method::None {
                "shifted".to_string()
            } else {
                m.to_string()
            };
            let colour = match m {
                Method::None => "#999999",
                Method::Mean => "#1f77b4",
                Method::Coral => "#2ca02c",
                Method::T3a => "#ff7f0e",
            };
            (name, colour)
        })
        .chain(std::iter::once(("oracle".to_string(), "#444444")))
        .collect();
    let (w, h, left, top, bottom) = (760.0, 360.0, 50.0, 30.0, 60.0);
    let plot_h = h - top - bottom;
    let group = (w - left - 10.0) / rows.len().max(1) as f64;
    let bar = group * 0.8 / series.len() as f64;
    let y = |acc: f64| top + plot_h * (1.0 - acc.clamp(0.0, 1.0));
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"13\">{} — {learner}: test accuracy under each shift</text>\n",
        report.dataset
    );
    for t in 0..=5 {
        let v = f64::from(t) / 5.0;
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#eeeeee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>",
            w - 10.0,
            left - 4.0,
            y(v) + 4.0,
            yy = y(v)
        );
    }
    for (g, r) in rows.iter().enumerate() {
        let x0 = left + group * g as f64 + group * 0.1;
        let values: Vec<f64> = report
            .methods
            .iter()
            .map(|m| r.accuracy(*m).unwrap_or(0.0))
            .chain(std::iter::once(r.oracle))
            .collect();
        for (k, (v, (_, colour))) in values.iter().zip(&series).enumerate() {
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>",
                x0 + bar * k as f64,
                y(*v),
                bar * 0.9,
                y(0.0) - y(*v)
            );
        }
        let _ = writeln!(
            s,
            "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"black\" stroke-dasharray=\"4 3\"/>",
            x0,
            x0 + group * 0.8,
            yy = y(r.clean)
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}:{}</text>",
            x0 + group * 0.4,
            h - bottom + 16.0,
            r.shift.corruption.name(),
            r.shift.severity
        );
    }
    let mut lx = left;
    for (name, colour) in series.iter() {
        let _ = writeln!(
            s,
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\">{name}</text>",
            h - 22.0,
            lx + 14.0,
            h - 13.0
        );
        lx += 90.0;
    }
    let _ = writeln!(
        s,
        "<line x1=\"{lx:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{:.1}\">clean</text>\n</svg>",
        lx + 20.0,
        h - 17.0,
        h - 17.0,
        lx + 24.0,
        h - 13.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> RgbImage {
        RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([(x * 8) as u8, (y * 8) as u8, 128])
        })
    }

    #[test]
    fn parses_shift_specs() {
        let s = parse_shifts(&["blur:2".into(), "noise".into()]).unwrap();
        assert_eq!(s[0].corruption, Corruption::Blur);
        assert_eq!(s[0].severity, 2);
        assert_eq!(s[1].severity, 3);
        assert_eq!(parse_shifts(&["all:5".into()]).unwrap().len(), 6);
        assert!(parse_shifts(&["blur:0".into()]).is_err());
        assert!(parse_shifts(&["fog".into()]).is_err());
    }

    #[test]
    fn corruptions_are_deterministic_and_change_the_image() {
        let base = img();
        let clean = corrupt(&base, None, 1).unwrap();
        for c in Corruption::ALL {
            for severity in [1, 5] {
                let s = Some(Shift {
                    corruption: c,
                    severity,
                });
                let a = corrupt(&base, s, 1).unwrap();
                assert_eq!(a, corrupt(&base, s, 1).unwrap(), "{c:?} not deterministic");
                assert_ne!(a, clean, "{c:?}:{severity} changed nothing");
                let back = image::load_from_memory(&a).unwrap().to_rgb8();
                assert_eq!(back.dimensions(), base.dimensions());
            }
        }
        // Severity orders the damage (mean absolute difference to the clean image).
        let diff = |s: u8| {
            let a = image::load_from_memory(
                &corrupt(
                    &base,
                    Some(Shift {
                        corruption: Corruption::Noise,
                        severity: s,
                    }),
                    1,
                )
                .unwrap(),
            )
            .unwrap()
            .to_rgb8();
            a.pixels()
                .zip(base.pixels())
                .map(|(p, q)| {
                    (0..3)
                        .map(|k| (i32::from(p.0[k]) - i32::from(q.0[k])).abs())
                        .sum::<i32>()
                })
                .sum::<i32>()
        };
        assert!(diff(1) < diff(5));
    }

    #[test]
    fn refuses_sound_clips() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cmd {
            #[command(flatten)]
            eval: EvalArgs,
        }
        let dir = tempfile::tempdir().unwrap();
        for c in ["yes", "no"] {
            std::fs::create_dir_all(dir.path().join(c)).unwrap();
            for i in 0..3 {
                std::fs::write(dir.path().join(c).join(format!("{i}.wav")), b"junk").unwrap();
            }
        }
        let args = Cmd::try_parse_from([
            "eval",
            "--data",
            dir.path().to_str().unwrap(),
            "--shift",
            "noise",
            "--no-cache",
        ])
        .unwrap()
        .eval;
        // Refused before any model is loaded or any clip is read.
        let err = format!("{:#}", run(&args, &HeadConfig::default()).unwrap_err());
        assert!(
            err.contains("--shift corrupts images") && err.contains("6 sound clip(s)"),
            "{err}"
        );
    }

    #[test]
    fn prepare_resizes_to_the_input() {
        let mut png = Vec::new();
        img()
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        assert_eq!(prepare(&png, (224, 224)).unwrap().dimensions(), (224, 224));
        assert!(prepare(b"junk", (224, 224)).is_err());
    }
}
