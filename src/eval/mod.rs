//! `adaptd eval`: the learning benchmark. Loads a folder-per-class dataset (images or WAV sound
//! clips embedded by the backbone, with an on-disk cache, or precomputed `.npy`/`.csv`
//! embeddings), splits it,
//! streams the training samples once in seeded order through each learner (test-then-train)
//! and reports held-out accuracy, few-shot accuracy, prequential accuracy, costs, head size and
//! learning curves, optionally against offline baselines (`scripts/ref_offline.py`).
//!
//! See `docs/learners.md` for the protocol and results.

pub mod data;
pub mod embed;
pub mod finetune;
pub mod npy;
pub mod openset;
pub mod prequential;
pub mod report;
pub mod review;
pub mod shift;
pub mod ts;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use crate::head::{Algorithm, HeadConfig};
use data::{InputKind, Item, Origin};
use embed::{Cache, EmbedStats, ModelId};
use prequential::{Data, Plan};
use report::{Baseline, Report};

/// Backbone hash recorded for datasets of precomputed embeddings.
pub const NO_BACKBONE: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Whether the learners standardize their inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Standardize {
    /// Raw embeddings (the daemon's default).
    No,
    /// Standardized with the head's running statistics.
    Yes,
    /// Run every learner both ways.
    Both,
}

impl Standardize {
    fn variants(self) -> &'static [bool] {
        match self {
            Standardize::No => &[false],
            Standardize::Yes => &[true],
            Standardize::Both => &[false, true],
        }
    }
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.trim().parse::<Algorithm>().map_err(|e| e.to_string())
}

/// Arguments of `adaptd eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Folder-per-class dataset (DIR/<label>/<files>), split into train and test by
    /// --test-fraction and --seed. Files: JPEG/PNG images or WAV sound clips (embedded by
    /// --model), or .npy/.csv embeddings.
    #[arg(long, value_name = "DIR", required_unless_present = "train", conflicts_with_all = ["train", "test"])]
    pub data: Option<PathBuf>,
    /// Training set (folder-per-class, or a UCR/UEA `.ts` file of sensor windows for a
    /// sensor model), with --test: your own split.
    #[arg(long, value_name = "DIR|FILE.ts", requires = "test")]
    pub train: Option<PathBuf>,
    /// Test set (folder-per-class, or a `.ts` file), with --train.
    #[arg(long, value_name = "DIR|FILE.ts", requires = "train")]
    pub test: Option<PathBuf>,
    /// Fraction of each class held out for testing (with --data).
    #[arg(long, default_value_t = 0.3)]
    pub test_fraction: f64,
    /// Seed of the split and of the training stream order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Learners to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "auto,ncm,slda,ridge,sgd", value_parser = parse_algorithm)]
    pub learners: Vec<Algorithm>,
    /// Standardize the embeddings in the heads: no, yes, or both (run each learner twice).
    #[arg(long, value_enum, default_value_t = Standardize::No)]
    pub standardize: Standardize,
    /// Model directory (with model.toml) that embeds the images or sound clips; default: the
    /// shipped image model (for WAV clips: a sound model, e.g. models/yamnet-l10).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Embedding cache directory; default $XDG_CACHE_HOME/adaptd or ~/.cache/adaptd.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Do not read or write the embedding cache.
    #[arg(long, conflicts_with = "cache")]
    pub no_cache: bool,
    /// Embedding worker threads; default: the number of CPUs.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Report test accuracy when every class has reached k training samples, for each k.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    pub shots: Vec<usize>,
    /// About how many learning-curve points.
    #[arg(long, default_value_t = 20)]
    pub curve_points: usize,
    /// slda/ridge: refresh the prequential snapshot when the samples since the last refresh
    /// reach this fraction of all samples seen (0: after every sample; ncm/sgd always do).
    #[arg(long, default_value_t = 0.05)]
    pub refresh_growth: f64,
    /// Head settings (TOML: the fields of the daemon's `[head]` section, at the top level or
    /// in a `[head]` table); `algorithm` and `standardize` are ignored (see --learners,
    /// --standardize). Default: the daemon's defaults.
    #[arg(long, value_name = "FILE.toml")]
    pub head_config: Option<PathBuf>,
    /// Dataset name in the report; default: the folder name.
    #[arg(long)]
    pub name: Option<String>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write the learning curves as an SVG line plot.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Offline baselines (JSON from scripts/ref_offline.py) to compare with.
    #[arg(long, value_name = "FILE.json")]
    pub baseline: Option<PathBuf>,
    /// Write the train/test embeddings and labels as .npy, and the samples' files (for
    /// scripts/ref_offline.py and scripts/ref_sound_baseline.py).
    #[arg(long, value_name = "DIR")]
    pub export_embeddings: Option<PathBuf>,
    /// Domain-adaptation benchmark (images only): corrupt the images (NAME[:SEVERITY], severity 1-5,
    /// default 3; names: brightness, contrast, colour, noise, blur, jpeg, or all), stream
    /// the corrupted test split as unlabeled traffic through each adaptation method, and
    /// compare with the clean accuracy and a head trained on corrupted data. Needs --data.
    #[arg(long, value_delimiter = ',', value_name = "NAME[:SEVERITY]")]
    pub shift: Vec<String>,
    /// Adaptation settings for --shift (TOML: the fields of the daemon's `[adapt]` section);
    /// `method` is ignored (every method runs). Default: the daemon's defaults.
    #[arg(long, value_name = "FILE.toml")]
    pub adapt_config: Option<PathBuf>,
    /// Open-set benchmark: hold out --unknown-classes classes, teach the others in one pass,
    /// and report how well each learner's novelty score separates the held-out classes
    /// (AUROC) and what its calibrated threshold (`open_set_frr` of --head-config) does.
    #[arg(long, conflicts_with = "shift")]
    pub open_set: bool,
    /// Classes held out as unknown in each split of --open-set; default a third.
    #[arg(long, requires = "open_set")]
    pub unknown_classes: Option<usize>,
    /// Seeded choices of the unknown classes for --open-set (results are averaged).
    #[arg(long, default_value_t = 3, requires = "open_set")]
    pub open_set_splits: usize,
    /// Review-queue benchmark: from 2 labeled samples per class, label K inputs of the
    /// training stream chosen by the review rule, or K random ones, and compare test accuracy
    /// (one K per comma).
    #[arg(long, value_delimiter = ',', value_name = "K,…", conflicts_with_all = ["shift", "open_set"])]
    pub review: Vec<usize>,
    /// The review rule's margin (`service.review_margin`).
    #[arg(long, default_value_t = 0.2)]
    pub review_margin: f32,
    /// Seeded stream orders of --review (results are averaged).
    #[arg(long, default_value_t = 3)]
    pub review_orders: usize,
    /// With --shift: also score each method after only this many unlabeled frames (the
    /// correction the daemon would apply at that point), to measure adaptation from few frames.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "N,…",
        default_values_t = [4usize, 8, 16, 32, 64]
    )]
    pub frames: Vec<usize>,
    /// Fine-tuning benchmark (an image model with a `[finetune]` cut): at each --shots point,
    /// half the stream and all of it, the linear learners against a fine-tuned tail taught the
    /// same samples (a fifth held out for the guard), with the trainer's CPU seconds.
    #[arg(long, conflicts_with_all = ["shift", "open_set", "review"])]
    pub finetune: bool,
    /// The trainer's settings for --finetune (TOML: the fields of `finetune::train::Config`,
    /// at the top level). Default: the daemon's defaults.
    #[arg(long, value_name = "FILE.toml", requires = "finetune")]
    pub finetune_config: Option<PathBuf>,
}

/// A sample after embedding: embedding, class label and where it came from.
struct Embedded {
    x: Vec<f32>,
    label: String,
    id: String,
}

/// Refuses, before anything is embedded, a model that does not take the dataset's inputs
/// (each input would otherwise fail with `wrong_modality`).
fn check_modality(kind: InputKind, model: &crate::model::ModelDir) -> Result<()> {
    let name = format!("{} ({})", model.spec.name, model.dir.display());
    match kind.refused_by(model.spec.modality(), &name) {
        Some(why) => anyhow::bail!("{why}: pass --model DIR"),
        None => Ok(()),
    }
}

/// The cache identity of a model: [`ModelId::of`] with the model's identity
/// ([`crate::model::ModelSpec::identity`]) as its backbone hash — the ONNX file's hash for an
/// image model, that hash with the `[audio]` front-end's recipe for a sound model. So the cache
/// of a sound model follows its front-end too, the hash matches the loaded backbone's, and the
/// report names the identity heads are tied to.
pub(crate) fn model_id(model: &crate::model::ModelDir) -> Result<ModelId> {
    let mut id = ModelId::of(model)?;
    id.backbone_sha256 = model.spec.identity(&id.backbone_sha256);
    Ok(id)
}

/// Embeds the items of one or more scans (images and sound clips through the model, vectors
/// as they are). Returns the embedded samples per scan, the stats and the backbone hash.
fn embed_all(
    scans: Vec<Vec<Item>>,
    args: &EvalArgs,
) -> Result<(Vec<Vec<Embedded>>, Option<EmbedStats>, String)> {
    let has_inputs = scans
        .iter()
        .flatten()
        .any(|i| matches!(i.origin, Origin::Input(_)));
    let model = match has_inputs {
        true => Some(crate::model::ModelDir::find(args.model.as_deref())?),
        false => None,
    };
    let picked = InputKind::for_model(
        scans.iter().flatten().filter_map(|i| match &i.origin {
            Origin::Input(p) => Some(p.as_path()),
            Origin::Vector(_) => None,
        }),
        model.as_ref().map(|m| m.spec.modality()),
    )?;
    // Inputs of another kind than the model's are left out, like files that are not inputs.
    let scans: Vec<Vec<Item>> = match picked {
        Some((kind, skipped)) if skipped > 0 => {
            tracing::warn!(
                "left out {skipped} input(s) that are not {}: the model takes {}",
                kind.plural(),
                kind.plural()
            );
            scans
                .into_iter()
                .map(|scan| {
                    scan.into_iter()
                        .filter(|i| match &i.origin {
                            Origin::Input(p) => {
                                InputKind::of_in(p, kind == InputKind::Window) == Some(kind)
                            }
                            Origin::Vector(_) => true,
                        })
                        .collect()
                })
                .collect()
        }
        _ => scans,
    };
    let inputs: Vec<PathBuf> = scans
        .iter()
        .flatten()
        .filter_map(|i| match &i.origin {
            Origin::Input(p) => Some(p.clone()),
            Origin::Vector(_) => None,
        })
        .collect();
    let (mut vectors, stats, backbone) = if let (Some((kind, _)), Some(model)) = (picked, model) {
        check_modality(kind, &model)?;
        let id = model_id(&model)?;
        let cache = cache_for(args, &id);
        let (v, stats) = embed::embed_images(&inputs, &model, &id, cache.as_ref(), jobs(args))?;
        if stats.failed > 0 {
            tracing::warn!(
                "{} of {} {} failed and are left out",
                stats.failed,
                inputs.len(),
                kind.plural()
            );
        }
        (v, Some(stats), id.backbone_sha256)
    } else {
        (Vec::new(), None, NO_BACKBONE.to_string())
    };
    vectors.reverse();
    let mut out = Vec::with_capacity(scans.len());
    for scan in scans {
        let mut samples = Vec::with_capacity(scan.len());
        for item in scan {
            let x = match item.origin {
                Origin::Vector(v) => Some(v),
                Origin::Input(_) => vectors.pop().flatten(),
            };
            if let Some(x) = x {
                samples.push(Embedded {
                    x,
                    label: item.label,
                    id: item.id,
                });
            }
        }
        out.push(samples);
    }
    Ok((out, stats, backbone))
}

/// The embedding cache of the model `id`, unless --no-cache.
fn cache_for(args: &EvalArgs, id: &ModelId) -> Option<Cache> {
    let root = if args.no_cache {
        None
    } else {
        args.cache.clone().or_else(embed::default_cache_dir)
    };
    let cache = root.as_deref().map(|r| Cache::new(r, id));
    if cache.is_none() && !args.no_cache {
        tracing::warn!("no cache directory (set --cache or HOME): embeddings are not cached");
    }
    cache
}

/// Embedding worker threads: --jobs, else the number of CPUs.
fn jobs(args: &EvalArgs) -> usize {
    args.jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A `.ts` train/test pair embedded: the dataset name (`@problemName`), the embedded train and
/// test samples, the stats and the model identity.
type EmbeddedTs = (String, Vec<Vec<Embedded>>, Option<EmbedStats>, String);

/// Embeds a `.ts` train/test pair (the UCR/UEA archive's files) through a sensor model: each
/// series is one window.
fn embed_ts(train: &Path, test: &Path, args: &EvalArgs) -> Result<EmbeddedTs> {
    let files = [ts::TsFile::read(train)?, ts::TsFile::read(test)?];
    let shape = files[0]
        .shape()
        .with_context(|| format!("{}", train.display()))?;
    let test_shape = files[1]
        .shape()
        .with_context(|| format!("{}", test.display()))?;
    anyhow::ensure!(
        shape == test_shape,
        "the training series are {}×{} (channels × samples) but the test series {}×{}",
        shape.0,
        shape.1,
        test_shape.0,
        test_shape.1
    );
    let model = crate::model::ModelDir::find(args.model.as_deref())?;
    let name = format!("{} ({})", model.spec.name, model.dir.display());
    anyhow::ensure!(
        model.spec.modality() == crate::model::Modality::Sensor,
        "the .ts series need a sensor model (a [sensor] model.toml, e.g. one made by \
         models/minirocket/build.py): the model {name} is not one; pass --model DIR"
    );
    let want = crate::model::spec::sensor_shape(&model.spec.input.shape).unwrap_or((0, 0));
    anyhow::ensure!(
        want == shape,
        "the series are {}×{} (channels × samples) but the model {name} takes windows of {}×{}",
        shape.0,
        shape.1,
        want.0,
        want.1
    );
    let id = model_id(&model)?;
    let cache = cache_for(args, &id);
    let mut sets = Vec::with_capacity(2);
    let mut total: Option<EmbedStats> = None;
    for (file, path) in files.iter().zip([train, test]) {
        // A window as the daemon takes it: JSON, one array per channel, null for missing.
        let load = |i: usize| -> Result<Vec<u8>> {
            Ok(serde_json::json!({"window": file.series[i].0})
                .to_string()
                .into_bytes())
        };
        let label = |i: usize| format!("{}#{}", path.display(), i + 1);
        let (vectors, stats) = embed::embed_with(
            file.series.len(),
            &load,
            &label,
            &model,
            &id,
            cache.as_ref(),
            jobs(args),
        )?;
        if stats.failed > 0 {
            tracing::warn!(
                "{} of {} series of {} failed and are left out",
                stats.failed,
                file.series.len(),
                path.display()
            );
        }
        total = Some(match total {
            None => stats,
            Some(t) => t.combined(&stats),
        });
        let samples = vectors
            .into_iter()
            .zip(&file.series)
            .enumerate()
            .filter_map(|(i, (x, (_, class)))| {
                Some(Embedded {
                    x: x?,
                    label: class.clone(),
                    id: label(i),
                })
            })
            .collect();
        sets.push(samples);
    }
    let dataset = files[0].name.clone().unwrap_or_else(|| {
        train
            .file_stem()
            .map(|s| s.to_string_lossy().trim_end_matches("_TRAIN").to_string())
            .unwrap_or_else(|| "dataset".into())
    });
    Ok((dataset, sets, total, id.backbone_sha256))
}

/// Whether `--model` is a sensor model, whose dataset's `.csv` files are windows to embed, not
/// embeddings.
fn csv_windows(args: &EvalArgs) -> bool {
    args.model
        .as_deref()
        .and_then(|p| crate::model::ModelDir::load(p).ok())
        .is_some_and(|m| m.spec.modality() == crate::model::Modality::Sensor)
}

fn scan_items(dir: &Path, windows: bool) -> Result<Vec<Item>> {
    let s = data::scan_in(dir, windows)?;
    if s.skipped > 0 {
        tracing::info!(
            "{}: skipped {} file(s) that are not inputs ({}) or embeddings ({})",
            dir.display(),
            s.skipped,
            extensions(&data::INPUT_EXTENSIONS),
            extensions(&data::VECTOR_EXTENSIONS)
        );
    }
    anyhow::ensure!(
        !s.items.is_empty(),
        "{} has no inputs (images {}, sound clips {}, texts {}) or embeddings ({})",
        dir.display(),
        extensions(&data::IMAGE_EXTENSIONS),
        extensions(&data::SOUND_EXTENSIONS),
        extensions(&data::TEXT_EXTENSIONS),
        extensions(&data::VECTOR_EXTENSIONS)
    );
    Ok(s.items)
}

/// `.a, .b` for messages.
fn extensions(list: &[&str]) -> String {
    list.iter()
        .map(|e| format!(".{e}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn dir_name(p: &Path) -> String {
    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into())
}

/// A dataset loaded, embedded and split.
struct Loaded {
    /// Dataset name in the report.
    name: String,
    /// The training stream and the test split.
    data: Data,
    /// How the inputs were embedded (`None` for a dataset of embeddings).
    stats: Option<EmbedStats>,
    /// Backbone hash ([`NO_BACKBONE`] for a dataset of embeddings).
    backbone: String,
    /// Where each training sample (in stream order) came from: its file, `#row` for a row of a
    /// multi-vector file.
    train_ids: Vec<String>,
    /// Where each test sample came from.
    test_ids: Vec<String>,
}

/// Loads, embeds and splits the dataset named by the arguments.
fn load(args: &EvalArgs) -> Result<Loaded> {
    let windows = csv_windows(args);
    let (name, train, test, stats, backbone) = if let Some(dir) = &args.data {
        anyhow::ensure!(
            args.test_fraction > 0.0 && args.test_fraction < 1.0,
            "--test-fraction must be in (0, 1)"
        );
        let (mut sets, stats, backbone) = embed_all(vec![scan_items(dir, windows)?], args)?;
        let all = sets.pop().unwrap_or_default();
        let classes: Vec<String> = all
            .iter()
            .map(|e| e.label.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let labels: Vec<usize> = all
            .iter()
            .map(|e| classes.binary_search(&e.label).unwrap_or(0))
            .collect();
        let (train_ix, test_ix) = data::stratified_split(&labels, args.test_fraction, args.seed);
        let mut slots: Vec<Option<Embedded>> = all.into_iter().map(Some).collect();
        let mut take = |ix: &[usize]| -> Vec<Embedded> {
            ix.iter().filter_map(|&i| slots[i].take()).collect()
        };
        let (train, test) = (take(&train_ix), take(&test_ix));
        (dir_name(dir), train, test, stats, backbone)
    } else {
        let (train_dir, test_dir) = match (&args.train, &args.test) {
            (Some(a), Some(b)) => (a, b),
            _ => anyhow::bail!("give --data DIR, or --train DIR and --test DIR"),
        };
        if ts::is_ts(train_dir) || ts::is_ts(test_dir) {
            let (name, mut sets, stats, backbone) = embed_ts(train_dir, test_dir, args)?;
            let test = sets.pop().unwrap_or_default();
            let train = sets.pop().unwrap_or_default();
            (name, train, test, stats, backbone)
        } else {
            let (mut sets, stats, backbone) = embed_all(
                vec![
                    scan_items(train_dir, windows)?,
                    scan_items(test_dir, windows)?,
                ],
                args,
            )?;
            let test = sets.pop().unwrap_or_default();
            let train = sets.pop().unwrap_or_default();
            let name = match train_dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => dir_name(p),
                _ => dir_name(train_dir),
            };
            (name, train, test, stats, backbone)
        }
    };
    anyhow::ensure!(!train.is_empty(), "the training split is empty");
    anyhow::ensure!(!test.is_empty(), "the test split is empty");
    let dim = train[0].x.len();
    if let Some(bad) = train.iter().chain(&test).find(|e| e.x.len() != dim) {
        anyhow::bail!(
            "embeddings of different dimensions: {dim} and {} (class {})",
            bad.x.len(),
            bad.label
        );
    }
    let classes: Vec<String> = train
        .iter()
        .chain(&test)
        .map(|e| e.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let missing: BTreeSet<&str> = test
        .iter()
        .map(|e| e.label.as_str())
        .filter(|l| !train.iter().any(|t| t.label == *l))
        .collect();
    if !missing.is_empty() {
        tracing::warn!("classes only in the test split (always wrong): {missing:?}");
    }
    let order = data::stream_order(train.len(), args.seed);
    let train_ids: Vec<String> = order.iter().map(|&i| train[i].id.clone()).collect();
    let test_ids: Vec<String> = test.iter().map(|e| e.id.clone()).collect();
    let to_pair = |e: Embedded| {
        let c = classes.binary_search(&e.label).unwrap_or(0);
        (e.x, c)
    };
    let mut train: Vec<(Vec<f32>, usize)> = train.into_iter().map(to_pair).collect();
    let test: Vec<(Vec<f32>, usize)> = test.into_iter().map(to_pair).collect();
    let mut slots: Vec<Option<(Vec<f32>, usize)>> = train.drain(..).map(Some).collect();
    let train: Vec<(Vec<f32>, usize)> = order.iter().filter_map(|&i| slots[i].take()).collect();
    Ok(Loaded {
        name: args.name.clone().unwrap_or(name),
        data: Data {
            classes,
            dim,
            train,
            test,
        },
        stats,
        backbone,
        train_ids,
        test_ids,
    })
}

/// Writes `train_x.npy`, `train_y.npy` (stream order), `test_x.npy`, `test_y.npy` (class
/// indices, int64), `classes.txt`, `files.json` (`{"train": [...], "test": [...]}`: each
/// row's file as the scan named it, `#row` for a row of a multi-vector file) and `meta.json`
/// into `dir`.
fn export(dir: &Path, loaded: &Loaded, args: &EvalArgs) -> Result<()> {
    let (name, data, backbone) = (&loaded.name, &loaded.data, &loaded.backbone);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |file: &str, bytes: Vec<u8>| -> Result<()> {
        let p = dir.join(file);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))
    };
    for (split, samples) in [("train", &data.train), ("test", &data.test)] {
        let x: Vec<f32> = samples
            .iter()
            .flat_map(|(x, _)| x.iter().copied())
            .collect();
        let y: Vec<i64> = samples.iter().map(|(_, y)| *y as i64).collect();
        write(
            &format!("{split}_x.npy"),
            npy::encode_f32(samples.len(), data.dim, &x),
        )?;
        write(&format!("{split}_y.npy"), npy::encode_i64(&y))?;
    }
    write(
        "classes.txt",
        format!("{}\n", data.classes.join("\n")).into_bytes(),
    )?;
    let files = serde_json::json!({"train": loaded.train_ids, "test": loaded.test_ids});
    write("files.json", serde_json::to_vec_pretty(&files)?)?;
    let meta = serde_json::json!({
        "dataset": name,
        "dim": data.dim,
        "classes": data.classes,
        "train": data.train.len(),
        "test": data.test.len(),
        "seed": args.seed,
        "test_fraction": args.data.as_ref().map(|_| args.test_fraction),
        "backbone_sha256": backbone,
    });
    write("meta.json", serde_json::to_vec_pretty(&meta)?)?;
    tracing::info!("embeddings written to {}", dir.display());
    Ok(())
}

/// Reads `--head-config`: `HeadConfig` fields at the top level or in a `[head]` table.
fn read_head_config(path: &Path) -> Result<HeadConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_head_config(&text).with_context(|| format!("reading {}", path.display()))
}

fn parse_head_config(text: &str) -> Result<HeadConfig> {
    let mut value: toml::Table = toml::from_str(text)?;
    let table = match value.remove("head") {
        Some(toml::Value::Table(t)) => t,
        Some(_) => anyhow::bail!("[head] is not a table"),
        None => value,
    };
    let config: HeadConfig = toml::Value::Table(table).try_into()?;
    config.validate()?;
    Ok(config)
}

/// `adaptd eval`.
/// Prints a benchmark's report: one JSON object with `--json`, else its table.
fn print_report(json: bool, report: &impl serde::Serialize, table: String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{table}");
    }
    Ok(())
}

pub fn run(args: &EvalArgs) -> Result<()> {
    anyhow::ensure!(!args.learners.is_empty(), "--learners is empty");
    anyhow::ensure!(
        args.refresh_growth.is_finite() && args.refresh_growth >= 0.0,
        "--refresh-growth must be ≥ 0"
    );
    let head = match &args.head_config {
        Some(p) => read_head_config(p)?,
        None => HeadConfig::default(),
    };
    if !args.shift.is_empty() {
        let report = shift::run(args, &head)?;
        print_report(args.json, &report, report.table())?;
        if let Some(p) = &args.plot {
            std::fs::write(p, shift::plot_svg(&report))
                .with_context(|| format!("writing {}", p.display()))?;
        }
        return Ok(());
    }
    if !args.review.is_empty() {
        let loaded = load(args)?;
        let results = review::run(
            &loaded.data,
            &args.learners,
            &head,
            &loaded.backbone,
            &review::ReviewPlan {
                budgets: args.review.clone(),
                margin: args.review_margin,
                orders: args.review_orders,
                seed: args.seed,
            },
        )?;
        let report = review::ReviewReport {
            dataset: loaded.name,
            margin: args.review_margin,
            open_set_frr: head.open_set_frr,
            seed: args.seed,
            results,
        };
        print_report(args.json, &report, report.table())?;
        return Ok(());
    }
    if args.finetune {
        let loaded = load(args)?;
        let model = crate::model::ModelDir::find(args.model.as_deref())?;
        let config = match &args.finetune_config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
            }
            None => crate::finetune::train::Config::default(),
        };
        let report = finetune::run(
            &loaded.data,
            &finetune::FinetunePlan {
                name: loaded.name.clone(),
                model: &model,
                train_files: &loaded.train_ids,
                test_files: &loaded.test_ids,
                shots: &args.shots,
                learners: &args.learners,
                head: &head,
                backbone: &loaded.backbone,
                config,
                jobs: jobs(args),
            },
        )?;
        print_report(args.json, &report, report.table())?;
        return Ok(());
    }
    if args.open_set {
        let loaded = load(args)?;
        let c = loaded.data.classes.len();
        let unknown = args
            .unknown_classes
            .unwrap_or(c / 3)
            .clamp(1, c.saturating_sub(2).max(1));
        let results = openset::run(
            &loaded.data,
            &args.learners,
            &head,
            &loaded.backbone,
            unknown,
            args.open_set_splits,
            args.seed,
        )?;
        let report = openset::OpenSetReport {
            dataset: loaded.name,
            classes: c,
            unknown_classes: unknown,
            open_set_frr: head.open_set_frr,
            seed: args.seed,
            results,
        };
        print_report(args.json, &report, report.table())?;
        return Ok(());
    }
    let baseline = args.baseline.as_deref().map(Baseline::read).transpose()?;
    let loaded = load(args)?;
    if let Some(dir) = &args.export_embeddings {
        export(dir, &loaded, args)?;
    }
    let Loaded {
        name,
        data,
        stats,
        backbone,
        ..
    } = loaded;
    if let Some(b) = &baseline {
        b.check(data.train.len(), data.test.len(), data.dim);
    }
    let plan = Plan {
        shots: args.shots.clone(),
        curve_points: args.curve_points,
        refresh_growth: args.refresh_growth,
        backbone_sha256: backbone.clone(),
        head: head.clone(),
    };
    let mut results = Vec::new();
    let mut learners: Vec<Algorithm> = Vec::new();
    for a in &args.learners {
        if !learners.contains(a) {
            learners.push(*a);
        }
    }
    for &algorithm in &learners {
        for &standardize in args.standardize.variants() {
            let mut r = prequential::run(&data, algorithm, standardize, &plan)
                .with_context(|| format!("running {algorithm}"))?;
            r.ratio_to_logreg = baseline.as_ref().map(|b| r.accuracy / b.logreg);
            tracing::info!(
                "{algorithm}{}: accuracy {:.3}, prequential {:.3}",
                if standardize { " (standardized)" } else { "" },
                r.accuracy,
                r.prequential_accuracy
            );
            results.push(r);
        }
    }
    let report = Report {
        dataset: name,
        dim: data.dim,
        classes: data.classes.len(),
        class_names: data.classes.clone(),
        train: data.train.len(),
        test: data.test.len(),
        split: if args.data.is_some() {
            "stratified".into()
        } else {
            "given".into()
        },
        test_fraction: args.data.as_ref().map(|_| args.test_fraction),
        seed: args.seed,
        backbone_sha256: backbone,
        embedding: stats,
        head_config: head,
        baseline,
        results,
    };
    if let Some(path) = &args.plot {
        std::fs::write(path, report::plot_svg(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        eval: EvalArgs,
    }

    fn args(extra: &[&str]) -> EvalArgs {
        let mut v = vec!["eval"];
        v.extend_from_slice(extra);
        Cmd::try_parse_from(v).unwrap().eval
    }

    /// Writes a folder-per-class dataset of CSV embeddings: Gaussian blobs.
    fn blob_dir(dir: &Path, classes: usize, per_class: usize, noise: f64) {
        let mut rng = data::Rng::new(5, 5);
        for c in 0..classes {
            let center: Vec<f64> = (0..8).map(|_| 3.0 * rng.normal()).collect();
            let d = dir.join(format!("class{c}"));
            std::fs::create_dir_all(&d).unwrap();
            let mut csv = String::new();
            for _ in 0..per_class {
                let row: Vec<String> = center
                    .iter()
                    .map(|m| format!("{}", m + noise * rng.normal()))
                    .collect();
                csv.push_str(&row.join(","));
                csv.push('\n');
            }
            std::fs::write(d.join("samples.csv"), csv).unwrap();
        }
    }

    #[test]
    fn parses_arguments() {
        let a = args(&["--data", "d"]);
        assert_eq!(a.learners, Algorithm::ALL.to_vec());
        assert_eq!(
            (a.test_fraction, a.seed, a.standardize),
            (0.3, 0, Standardize::No)
        );
        assert_eq!(a.shots, vec![1, 5, 10]);
        let a = args(&[
            "--train",
            "a",
            "--test",
            "b",
            "--learners",
            "sgd,ncm",
            "--standardize",
            "both",
        ]);
        assert_eq!(a.learners, vec![Algorithm::Sgd, Algorithm::Ncm]);
        assert_eq!(a.standardize.variants(), &[false, true]);
        let bad = |v: &[&str]| {
            let mut all = vec!["eval"];
            all.extend_from_slice(v);
            Cmd::try_parse_from(all).is_err()
        };
        assert!(bad(&[]));
        assert!(bad(&["--data", "d", "--train", "a", "--test", "b"]));
        assert!(bad(&["--train", "a"]));
        assert!(bad(&["--data", "d", "--learners", "knn"]));
        assert!(bad(&["--data", "d", "--no-cache", "--cache", "c"]));
    }

    #[test]
    fn end_to_end_on_csv_embeddings() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blobs");
        blob_dir(&root, 3, 30, 0.5);
        let export_dir = dir.path().join("export");
        let a = args(&[
            "--data",
            root.to_str().unwrap(),
            "--export-embeddings",
            export_dir.to_str().unwrap(),
            "--learners",
            "ncm,ridge",
        ]);
        let loaded = load(&a).unwrap();
        let d = &loaded.data;
        assert_eq!(
            (loaded.name.as_str(), d.dim, d.classes.len()),
            ("blobs", 8, 3)
        );
        assert_eq!((d.train.len(), d.test.len()), (63, 27));
        assert!(loaded.stats.is_none());
        assert_eq!(loaded.backbone, NO_BACKBONE);
        // Each sample names its file and row, in stream order.
        assert_eq!((loaded.train_ids.len(), loaded.test_ids.len()), (63, 27));
        for (id, (_, y)) in loaded.train_ids.iter().zip(&d.train) {
            let want = format!("class{y}{}samples.csv#", std::path::MAIN_SEPARATOR);
            assert!(id.contains(&want), "{id} is not of class {y}");
        }
        // The same seed loads the same stream.
        let again = load(&a).unwrap();
        assert_eq!(d.train, again.data.train);
        assert_eq!(loaded.train_ids, again.train_ids);
        run(&a).unwrap();
        let x = npy::parse_npy(&std::fs::read(export_dir.join("train_x.npy")).unwrap()).unwrap();
        assert_eq!((x.rows, x.dim), (63, 8));
        assert_eq!(x.data[..8], d.train[0].0[..]);
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(export_dir.join("meta.json")).unwrap()).unwrap();
        assert_eq!(meta["test"], 27);
        let files: serde_json::Value =
            serde_json::from_slice(&std::fs::read(export_dir.join("files.json")).unwrap()).unwrap();
        assert_eq!(files["train"], serde_json::json!(loaded.train_ids));
        assert_eq!(files["test"], serde_json::json!(loaded.test_ids));
        // Given split: train on the blobs, test on a copy.
        let g = args(&[
            "--train",
            root.to_str().unwrap(),
            "--test",
            root.to_str().unwrap(),
        ]);
        let d = load(&g).unwrap().data;
        assert_eq!((d.train.len(), d.test.len()), (90, 90));
        let r = prequential::run(
            &d,
            Algorithm::Slda,
            false,
            &Plan {
                shots: vec![1],
                curve_points: 5,
                refresh_growth: 0.05,
                backbone_sha256: NO_BACKBONE.into(),
                head: HeadConfig::default(),
            },
        )
        .unwrap();
        assert!(r.accuracy > 0.95, "{}", r.accuracy);
    }

    #[test]
    fn sound_clips_need_a_sound_model() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let image_model =
            crate::model::ModelDir::load(&manifest.join("models/efficientnet-lite0")).unwrap();
        let sound_model =
            crate::model::ModelDir::load(&manifest.join("models/yamnet-l10")).unwrap();
        let kind = |names: &[&str], model: &crate::model::ModelDir| {
            InputKind::for_model(names.iter().map(Path::new), Some(model.spec.modality()))
        };
        assert_eq!(kind(&[], &sound_model).unwrap(), None);
        assert_eq!(
            kind(&["a/x.wav", "b/y.WAV"], &sound_model).unwrap(),
            Some((InputKind::Sound, 0))
        );
        assert_eq!(
            kind(&["a/x.jpg", "b/y.png"], &image_model).unwrap(),
            Some((InputKind::Image, 0))
        );
        // Mixed: the model's kind, the other left out; with no model, refused.
        assert_eq!(
            kind(&["a/x.wav", "b/y.png"], &sound_model).unwrap(),
            Some((InputKind::Sound, 1))
        );
        let err = format!(
            "{:#}",
            InputKind::for_model(["a/x.wav", "b/y.png"].iter().map(Path::new), None).unwrap_err()
        );
        assert!(err.contains("mixes 1 images and 1 sound clips"), "{err}");
        check_modality(InputKind::Sound, &sound_model).unwrap();
        check_modality(InputKind::Image, &image_model).unwrap();
        let err = format!(
            "{:#}",
            check_modality(InputKind::Sound, &image_model).unwrap_err()
        );
        assert!(
            err.contains("takes images") && err.contains("--model"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            check_modality(InputKind::Image, &sound_model).unwrap_err()
        );
        assert!(err.contains("takes sound"), "{err}");
    }

    #[test]
    fn model_identity_names_the_cache() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let sound = crate::model::ModelDir::load(&manifest.join("models/yamnet-l10")).unwrap();
        let file = ModelId::of(&sound).unwrap().backbone_sha256;
        let id = model_id(&sound).unwrap();
        assert_eq!(Some(file.as_str()), sound.spec.sha256.as_deref());
        assert_eq!(id.backbone_sha256, sound.spec.identity(&file));
        assert_ne!(id.backbone_sha256, file);
        // Another front-end recipe, another identity and so another cache.
        let mut other = sound.clone();
        if let Some(a) = other.spec.audio.as_mut() {
            a.fmin = 60.0;
        }
        assert_ne!(
            model_id(&other).unwrap().backbone_sha256,
            id.backbone_sha256
        );
        // An image model's identity is its file's hash (the cache it always had).
        let image =
            crate::model::ModelDir::load(&manifest.join("models/efficientnet-lite0")).unwrap();
        assert_eq!(
            model_id(&image).unwrap().backbone_sha256,
            ModelId::of(&image).unwrap().backbone_sha256
        );
    }

    #[test]
    fn end_to_end_on_wav_clips() {
        // Four fixture clips (16 kHz mono, 44.1 kHz stereo), two classes, through the shipped
        // sound model; a second run is served from the cache.
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let fixtures = manifest.join("tests/fixtures/sound");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sounds");
        for (class, files) in [
            ("bell", ["doorbell.wav", "clicks_short.wav"]),
            ("voice", ["speech.wav", "stereo_44k.wav"]),
        ] {
            std::fs::create_dir_all(root.join(class)).unwrap();
            for f in files {
                std::fs::copy(fixtures.join(f), root.join(class).join(f)).unwrap();
            }
        }
        let model = manifest.join("models/yamnet-l10");
        let cache = dir.path().join("cache");
        let export_dir = dir.path().join("export");
        let a = args(&[
            "--data",
            root.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
            "--jobs",
            "2",
            "--export-embeddings",
            export_dir.to_str().unwrap(),
        ]);
        let loaded = load(&a).unwrap();
        let stats = loaded.stats.clone().unwrap();
        assert_eq!((stats.embedded, stats.cache_hits, stats.failed), (4, 0, 0));
        assert_eq!(loaded.data.dim, 512);
        assert_eq!((loaded.data.train.len(), loaded.data.test.len()), (2, 2));
        let sound = crate::model::ModelDir::load(&model).unwrap();
        assert_eq!(loaded.backbone, model_id(&sound).unwrap().backbone_sha256);
        assert!(loaded.train_ids.iter().all(|i| i.ends_with(".wav")));
        // The same embedding as the daemon's path for that file.
        let embedder = crate::model::Embedder::load(sound, false).unwrap();
        let want = embedder
            .embed_payload(&std::fs::read(&loaded.test_ids[0]).unwrap())
            .unwrap();
        assert_eq!(loaded.data.test[0].0, want);
        let again = load(&a).unwrap();
        let stats = again.stats.unwrap();
        assert_eq!((stats.embedded, stats.cache_hits), (0, 4));
        assert_eq!(again.data.train, loaded.data.train);
        run(&a).unwrap();
        let files: serde_json::Value =
            serde_json::from_slice(&std::fs::read(export_dir.join("files.json")).unwrap()).unwrap();
        assert_eq!(files["test"], serde_json::json!(loaded.test_ids));
    }

    #[test]
    fn refuses_sound_with_the_image_model_before_embedding() {
        // WAV clips (not even valid ones) with the shipped image model: refused by name, before
        // the model is loaded or any clip is read.
        let dir = tempfile::tempdir().unwrap();
        for c in ["yes", "no"] {
            std::fs::create_dir_all(dir.path().join(c)).unwrap();
            for i in 0..3 {
                std::fs::write(dir.path().join(c).join(format!("{i}.wav")), b"junk").unwrap();
            }
        }
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet-lite0");
        let a = args(&[
            "--data",
            dir.path().to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--no-cache",
        ]);
        let err = format!("{:#}", load(&a).err().unwrap());
        assert!(
            err.contains("sound clips") && err.contains("takes images"),
            "{err}"
        );
        // A folder of nothing usable names every accepted extension.
        let empty = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(empty.path().join("a")).unwrap();
        std::fs::write(empty.path().join("a/x.ogg"), b"OggS").unwrap();
        let err = format!(
            "{:#}",
            load(&args(&["--data", empty.path().to_str().unwrap()]))
                .err()
                .unwrap()
        );
        assert!(
            err.contains(".wav") && err.contains(".png") && err.contains(".npy"),
            "{err}"
        );
    }

    #[test]
    fn head_config_files() {
        let c = parse_head_config("ridge_lambda = 100.0\n").unwrap();
        assert_eq!(c.ridge_lambda, 100.0);
        let c = parse_head_config("[head]\nslda_shrinkage = 0.1\n[other]\nx = 1\n").unwrap();
        assert_eq!(c.slda_shrinkage, 0.1);
        assert!(parse_head_config("ridge_lambda = -1.0\n").is_err());
        assert!(parse_head_config("no_such_field = 1\n").is_err());
        assert!(parse_head_config("head = 3\n").is_err());
        assert!(parse_head_config("not toml [").is_err());
    }

    #[test]
    fn mismatched_dimensions_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        for (c, row) in [("a", "1,2\n3,4\n"), ("b", "1,2,3\n4,5,6\n")] {
            std::fs::create_dir_all(dir.path().join(c)).unwrap();
            std::fs::write(dir.path().join(c).join("x.csv"), row).unwrap();
        }
        let a = args(&["--data", dir.path().to_str().unwrap()]);
        let err = format!("{:#}", load(&a).err().unwrap());
        assert!(err.contains("different dimensions"), "{err}");
        let bad_fraction = args(&[
            "--data",
            dir.path().to_str().unwrap(),
            "--test-fraction",
            "1",
        ]);
        assert!(load(&bad_fraction).is_err());
    }
}
