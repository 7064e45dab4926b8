//! The one-shot commands: inspect, bench, eval, fleet-key, embed, classify, config.

use std::path::Path;

use anyhow::{Context, Result};

use super::ImageArgs;
use crate::config::{Settings, DEFAULT_TOML};
use crate::eval::EvalArgs;
use crate::model::backbone;
use crate::model::Embedder;
use crate::model::ModelDir;

/// `adaptd config`: the shipped commented defaults (`--default`), or the settings merged from
/// defaults, `config` and the environment.
pub fn config(default: bool, config: Option<&Path>) -> Result<()> {
    if default {
        print!("{DEFAULT_TOML}");
        return Ok(());
    }
    let settings = Settings::load(config)?;
    println!("{settings:#?}");
    Ok(())
}

/// `adaptd bench` options.
pub struct BenchArgs<'a> {
    pub model: Option<&'a Path>,
    /// What to run and how often.
    pub run: crate::model::latency::Options<'a>,
    pub cache_dir: Option<&'a Path>,
    pub profile: bool,
    /// A WAV file: time the sound path on it instead.
    pub clip: Option<&'a Path>,
    /// A UTF-8 text file: time the text path on it instead.
    pub text: Option<&'a Path>,
    /// An image file: time the image path on it instead.
    pub image: Option<&'a Path>,
    pub json: bool,
}

/// `adaptd bench`.
pub fn bench(a: BenchArgs<'_>) -> Result<()> {
    let model = ModelDir::find(a.model)?;
    let o = a.run;
    if let Some(text) = a.text {
        let r = crate::model::latency::text(&model, &o, text)?;
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        println!("{}, load {:.0} ms", r.setup, r.load_ms);
        println!(
            "{}: {} bytes, {} tokens{}; medians over {} runs",
            r.text,
            r.bytes,
            r.tokens,
            if r.truncated { " (cut)" } else { "" },
            r.setup.runs
        );
        for (stage, t) in [
            ("tokenizer", &r.tokenizer),
            ("encoder", &r.encoder),
            ("end to end", &r.end_to_end),
        ] {
            println!(
                "  {stage:<12} median {:>9.3} ms, p90 {:>9.3} ms, min {:>9.3} ms",
                t.median_ms, t.p90_ms, t.min_ms
            );
        }
        return Ok(());
    }
    if let Some(image) = a.image {
        let r = crate::model::latency::image(&model, &o, image, a.cache_dir)?;
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        println!("{}, load {:.0} ms", r.setup, r.load_ms);
        println!(
            "{}: {} bytes, {}x{}; medians over {} runs",
            r.image, r.bytes, r.width, r.height, r.setup.runs
        );
        for (stage, t) in [
            ("decode", &r.decode),
            ("preprocess (crop, resize, normalise)", &r.preprocess),
            ("backbone", &r.backbone),
            ("end to end", &r.end_to_end),
        ] {
            println!(
                "  {stage:<38} median {:>9.3} ms, p90 {:>9.3} ms, min {:>9.3} ms",
                t.median_ms, t.p90_ms, t.min_ms
            );
        }
        return Ok(());
    }
    if let Some(clip) = a.clip {
        let r = crate::model::latency::clip(&model, &o, clip, a.cache_dir)?;
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        println!(
            "{}, load {:.0} ms{}",
            r.setup,
            r.load_ms,
            if r.cached {
                " (from the model cache)"
            } else {
                ""
            }
        );
        println!(
            "{}: {} Hz, {} channel(s), {:.3} s, {} window(s); medians over {} runs",
            r.clip, r.sample_rate, r.channels, r.clip_seconds, r.windows, r.setup.runs
        );
        for (stage, t) in [
            (
                "front-end (decode, resample, log-mel, windows)",
                &r.front_end,
            ),
            ("backbone, one window", &r.backbone_per_window),
            ("end to end, the clip", &r.end_to_end),
        ] {
            println!(
                "  {stage:<48} median {:>9.3} ms, p90 {:>9.3} ms, min {:>9.3} ms",
                t.median_ms, t.p90_ms, t.min_ms
            );
        }
        println!(
            "  real-time factor {:.1}× (seconds of audio per second of one core, end to end)",
            r.real_time_factor
        );
        return Ok(());
    }
    if a.profile {
        let r = crate::model::latency::profile(&model, &o)?;
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        println!(
            "{}, {:.2} ms per pass in nodes, {} runs",
            r.setup, r.total_ms, r.setup.runs
        );
        println!(
            "{:<24} {:>6} {:>9} {:>7}",
            "op", "nodes", "ms/pass", "share"
        );
        for o in &r.by_op {
            println!(
                "{:<24} {:>6} {:>9.3} {:>6.1}%",
                o.op,
                o.nodes,
                o.ms,
                o.share * 100.0
            );
        }
        println!("\nslowest nodes:");
        for n in r.nodes.iter().take(15) {
            println!("{:>8.3} ms  {:<14} {}  [{}]", n.ms, n.op, n.name, n.info);
        }
        return Ok(());
    }
    let r = crate::model::latency::backbone(&model, &o, a.cache_dir)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{}, load {:.0} ms{}, median {:.2} ms ({:.2} ms per frame), p90 {:.2} ms, min {:.2} ms over {} runs",
            r.setup,
            r.load_ms,
            if r.cached { " (from the model cache)" } else { "" },
            r.median_ms,
            r.median_ms_per_frame,
            r.p90_ms,
            r.min_ms,
            r.setup.runs
        );
    }
    Ok(())
}

/// `adaptd eval`.
pub fn eval(args: &EvalArgs) -> Result<()> {
    crate::eval::run(args)
}

/// `adaptd inspect`: the ONNX file (inputs, outputs, ops, SHA-256) and, for a model
/// directory, the stages from a payload to an embedding and the identity heads are tied to.
pub fn inspect(model: Option<&Path>, json: bool) -> Result<()> {
    let dir = match model {
        Some(m) if !m.is_dir() => None,
        other => Some(ModelDir::find(other)?),
    };
    let onnx = match (&dir, model) {
        (Some(d), _) => d.onnx_path(),
        (None, m) => m.map(Path::to_path_buf).unwrap_or_default(),
    };
    let report = backbone::inspect(&onnx)?;
    let stages = dir.as_ref().map(|d| d.spec.stages()).unwrap_or_default();
    let identity = dir.as_ref().map(|d| d.spec.identity(&report.sha256));
    if json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("stages".into(), serde_json::json!(stages));
            obj.insert("identity".into(), serde_json::json!(identity));
            let modality = dir.as_ref().map(|d| d.spec.modality());
            obj.insert("modality".into(), serde_json::json!(modality));
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model   {}", report.path);
    println!("bytes   {}", report.bytes);
    println!("sha256  {}", report.sha256);
    if let Some(id) = identity.filter(|id| *id != report.sha256) {
        println!("identity {id} (the file's hash with the front-end or tokenizer recipe)");
    }
    for (name, fact) in &report.inputs {
        println!("input   {name}: {fact}");
    }
    for (name, fact) in &report.outputs {
        println!("output  {name}: {fact}");
    }
    for (i, stage) in stages.iter().enumerate() {
        println!("stage {} {stage}", i + 1);
    }
    let total: usize = report.ops.values().sum();
    println!("ops     {total} nodes");
    for (op, n) in &report.ops {
        println!("  {op:<24} {n}");
    }
    Ok(())
}

/// `adaptd embed`.
pub fn embed(args: &ImageArgs) -> Result<()> {
    let embedder = Embedder::load(ModelDir::find(args.model.as_deref())?, false)?;
    let mut failed = 0;
    for path in &args.inputs {
        let result = std::fs::read(path)
            .with_context(|| format!("reading {}", path.display()))
            .and_then(|bytes| Ok(embedder.embed_payload(&bytes)?));
        match result {
            Ok(e) if args.json => println!(
                "{}",
                serde_json::json!({ "file": path.display().to_string(), "embedding": e })
            ),
            Ok(e) => {
                let head: Vec<String> = e.iter().take(8).map(|v| format!("{v:.4}")).collect();
                println!(
                    "{}: dim {} [{} …]",
                    path.display(),
                    e.len(),
                    head.join(", ")
                );
            }
            Err(e) => {
                failed += 1;
                report_failure(path, &e, args.json);
            }
        }
    }
    finish(failed)
}

/// `adaptd classify`.
pub fn classify(args: &ImageArgs) -> Result<()> {
    let model = ModelDir::find(args.model.as_deref())?;
    anyhow::ensure!(
        model.spec.logits_output.is_some(),
        "model {} has no logits_output in its model.toml",
        model.dir.display()
    );
    let labels = model.labels()?.unwrap_or_default();
    let embedder = Embedder::load(model, true)?;
    let mut failed = 0;
    for path in &args.inputs {
        let result = std::fs::read(path)
            .with_context(|| format!("reading {}", path.display()))
            .and_then(|bytes| Ok(embedder.run_payload(&bytes)?));
        let logits = match result {
            Ok(out) => out.logits.unwrap_or_default(),
            Err(e) => {
                failed += 1;
                report_failure(path, &e, args.json);
                continue;
            }
        };
        let top = top_k_softmax(&logits, 5);
        let named: Vec<(usize, String, f32)> = top
            .into_iter()
            .map(|(i, p)| {
                let name = labels
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("class {i}"));
                (i, name, p)
            })
            .collect();
        if args.json {
            let top5: Vec<_> = named
                .iter()
                .map(|(i, l, p)| serde_json::json!({"index": i, "label": l, "score": p}))
                .collect();
            println!(
                "{}",
                serde_json::json!({ "file": path.display().to_string(), "top5": top5 })
            );
        } else {
            println!("{}", path.display());
            for (i, l, p) in named {
                println!("  {:6.2}%  {l} ({i})", p * 100.0);
            }
        }
    }
    finish(failed)
}

fn report_failure(path: &Path, e: &anyhow::Error, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({ "file": path.display().to_string(), "error": format!("{e:#}") })
        );
    } else {
        eprintln!("{}: {e:#}", path.display());
    }
}

fn finish(failed: usize) -> Result<()> {
    anyhow::ensure!(failed == 0, "{failed} input(s) failed");
    Ok(())
}

/// Indices and softmax probabilities of the `k` largest logits, best first.
pub fn top_k_softmax(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|&l| f64::from(l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    let mut ix: Vec<usize> = (0..logits.len()).collect();
    ix.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    ix.into_iter()
        .take(k)
        .map(|i| (i, (exps[i] / sum) as f32))
        .collect()
}

/// `adaptd fleet-key`.
pub fn fleet_key(config: Option<&Path>) -> Result<()> {
    let settings = Settings::load(config)?;
    let id = crate::fleet::Identity::load_or_create(&settings.state.dir)
        .with_context(|| format!("fleet key in {}", settings.state.dir.display()))?;
    println!("{}", id.public_hex());
    Ok(())
}
