//! `adaptd eval`: the learning benchmark. Loads a folder-per-class dataset (images embedded by
//! the backbone, with an on-disk cache, or precomputed `.npy`/`.csv` embeddings), splits it,
//! streams the training samples once in seeded order through each learner (test-then-train)
//! and reports held-out accuracy, few-shot accuracy, prequential accuracy, costs, head size and
//! learning curves, optionally against offline baselines (`scripts/ref_offline.py`).
//!
//! See `docs/learners.md` for the protocol and results.

pub mod data;
pub mod embed;
pub mod npy;
pub mod prequential;
pub mod report;
pub mod shift;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use crate::head::{Algorithm, HeadConfig};
use data::{Item, Origin};
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
    /// --test-fraction and --seed. Files: JPEG/PNG images, or .npy/.csv embeddings.
    #[arg(long, value_name = "DIR", required_unless_present = "train", conflicts_with_all = ["train", "test"])]
    pub data: Option<PathBuf>,
    /// Training set (folder-per-class), with --test: your own split.
    #[arg(long, value_name = "DIR", requires = "test")]
    pub train: Option<PathBuf>,
    /// Test set (folder-per-class), with --train.
    #[arg(long, value_name = "DIR", requires = "train")]
    pub test: Option<PathBuf>,
    /// Fraction of each class held out for testing (with --data).
    #[arg(long, default_value_t = 0.3)]
    pub test_fraction: f64,
    /// Seed of the split and of the training stream order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Learners to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "ncm,slda,ridge,sgd", value_parser = parse_algorithm)]
    pub learners: Vec<Algorithm>,
    /// Standardize the embeddings in the heads: no, yes, or both (run each learner twice).
    #[arg(long, value_enum, default_value_t = Standardize::No)]
    pub standardize: Standardize,
    /// Model directory (with model.toml) for images; default: the shipped model.
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
    /// Write the train/test embeddings and labels as .npy (for scripts/ref_offline.py).
    #[arg(long, value_name = "DIR")]
    pub export_embeddings: Option<PathBuf>,
    /// Domain-adaptation benchmark: corrupt the images (NAME[:SEVERITY], severity 1-5,
    /// default 3; names: brightness, contrast, colour, noise, blur, jpeg, or all), stream
    /// the corrupted test split as unlabeled traffic through each adaptation method, and
    /// compare with the clean accuracy and a head trained on corrupted data. Needs --data.
    #[arg(long, value_delimiter = ',', value_name = "NAME[:SEVERITY]")]
    pub shift: Vec<String>,
    /// Adaptation settings for --shift (TOML: the fields of the daemon's `[adapt]` section);
    /// `method` is ignored (every method runs). Default: the daemon's defaults.
    #[arg(long, value_name = "FILE.toml")]
    pub adapt_config: Option<PathBuf>,
}

/// A sample after embedding: embedding and class label.
struct Embedded {
    x: Vec<f32>,
    label: String,
}

/// Embeds the items of one or more scans (images through the model, vectors as they are).
/// Returns the embedded samples per scan, the stats and the backbone hash.
fn embed_all(
    scans: Vec<Vec<Item>>,
    args: &EvalArgs,
) -> Result<(Vec<Vec<Embedded>>, Option<EmbedStats>, String)> {
    let images: Vec<PathBuf> = scans
        .iter()
        .flatten()
        .filter_map(|i| match &i.origin {
            Origin::Image(p) => Some(p.clone()),
            Origin::Vector(_) => None,
        })
        .collect();
    let (mut vectors, stats, backbone) = if images.is_empty() {
        (Vec::new(), None, NO_BACKBONE.to_string())
    } else {
        let model = crate::model::ModelDir::find(args.model.as_deref())?;
        let id = ModelId::of(&model)?;
        let root = if args.no_cache {
            None
        } else {
            args.cache.clone().or_else(embed::default_cache_dir)
        };
        let cache = root.as_deref().map(|r| Cache::new(r, &id));
        if cache.is_none() && !args.no_cache {
            tracing::warn!("no cache directory (set --cache or HOME): embeddings are not cached");
        }
        let jobs = args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let (v, stats) = embed::embed_images(&images, &model, &id, cache.as_ref(), jobs)?;
        if stats.failed > 0 {
            tracing::warn!("{} image(s) failed and are left out", stats.failed);
        }
        (v, Some(stats), id.backbone_sha256)
    };
    vectors.reverse();
    let mut out = Vec::with_capacity(scans.len());
    for scan in scans {
        let mut samples = Vec::with_capacity(scan.len());
        for item in scan {
            let x = match item.origin {
                Origin::Vector(v) => Some(v),
                Origin::Image(_) => vectors.pop().flatten(),
            };
            if let Some(x) = x {
                samples.push(Embedded {
                    x,
                    label: item.label,
                });
            }
        }
        out.push(samples);
    }
    Ok((out, stats, backbone))
}

fn scan_items(dir: &Path) -> Result<Vec<Item>> {
    let s = data::scan(dir)?;
    if s.skipped > 0 {
        tracing::info!(
            "{}: skipped {} file(s) that are not images or embeddings",
            dir.display(),
            s.skipped
        );
    }
    anyhow::ensure!(
        !s.items.is_empty(),
        "{} has no images (.jpg, .jpeg, .png) or embeddings (.npy, .csv)",
        dir.display()
    );
    Ok(s.items)
}

fn dir_name(p: &Path) -> String {
    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into())
}

/// Loads, embeds and splits the dataset named by the arguments.
fn load(args: &EvalArgs) -> Result<(String, Data, Option<EmbedStats>, String)> {
    let (name, train, test, stats, backbone) = if let Some(dir) = &args.data {
        anyhow::ensure!(
            args.test_fraction > 0.0 && args.test_fraction < 1.0,
            "--test-fraction must be in (0, 1)"
        );
        let (mut sets, stats, backbone) = embed_all(vec![scan_items(dir)?], args)?;
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
        let (mut sets, stats, backbone) =
            embed_all(vec![scan_items(train_dir)?, scan_items(test_dir)?], args)?;
        let test = sets.pop().unwrap_or_default();
        let train = sets.pop().unwrap_or_default();
        let name = match train_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => dir_name(p),
            _ => dir_name(train_dir),
        };
        (name, train, test, stats, backbone)
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
    let to_pair = |e: Embedded| {
        let c = classes.binary_search(&e.label).unwrap_or(0);
        (e.x, c)
    };
    let mut train: Vec<(Vec<f32>, usize)> = train.into_iter().map(to_pair).collect();
    let test: Vec<(Vec<f32>, usize)> = test.into_iter().map(to_pair).collect();
    let order = data::stream_order(train.len(), args.seed);
    let mut slots: Vec<Option<(Vec<f32>, usize)>> = train.drain(..).map(Some).collect();
    let train: Vec<(Vec<f32>, usize)> = order.iter().filter_map(|&i| slots[i].take()).collect();
    let name = args.name.clone().unwrap_or(name);
    Ok((
        name,
        Data {
            classes,
            dim,
            train,
            test,
        },
        stats,
        backbone,
    ))
}

/// Writes `train_x.npy`, `train_y.npy` (stream order), `test_x.npy`, `test_y.npy` (class
/// indices, int64), `classes.txt` and `meta.json` into `dir`.
fn export(dir: &Path, name: &str, data: &Data, args: &EvalArgs, backbone: &str) -> Result<()> {
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
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.table());
        }
        if let Some(p) = &args.plot {
            std::fs::write(p, shift::plot_svg(&report))
                .with_context(|| format!("writing {}", p.display()))?;
        }
        return Ok(());
    }
    let baseline = args.baseline.as_deref().map(Baseline::read).transpose()?;
    let (name, data, stats, backbone) = load(args)?;
    if let Some(b) = &baseline {
        b.check(data.train.len(), data.test.len(), data.dim);
    }
    if let Some(dir) = &args.export_embeddings {
        export(dir, &name, &data, args, &backbone)?;
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
        let (name, d, stats, backbone) = load(&a).unwrap();
        assert_eq!((name.as_str(), d.dim, d.classes.len()), ("blobs", 8, 3));
        assert_eq!((d.train.len(), d.test.len()), (63, 27));
        assert!(stats.is_none());
        assert_eq!(backbone, NO_BACKBONE);
        // The same seed loads the same stream.
        let (_, again, _, _) = load(&a).unwrap();
        assert_eq!(d.train, again.train);
        run(&a).unwrap();
        let x = npy::parse_npy(&std::fs::read(export_dir.join("train_x.npy")).unwrap()).unwrap();
        assert_eq!((x.rows, x.dim), (63, 8));
        assert_eq!(x.data[..8], d.train[0].0[..]);
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(export_dir.join("meta.json")).unwrap()).unwrap();
        assert_eq!(meta["test"], 27);
        // Given split: train on the blobs, test on a copy.
        let g = args(&[
            "--train",
            root.to_str().unwrap(),
            "--test",
            root.to_str().unwrap(),
        ]);
        let (_, d, _, _) = load(&g).unwrap();
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
