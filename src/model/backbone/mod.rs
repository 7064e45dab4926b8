//! The frozen backbone: the only module that names tract types (load, fix shape, the channel-last
//! rewrites, optimize, embed, the NNEF model cache, per-node profiling). Its submodules are
//! adaptd's own ops for tract: `depthwise` (depthwise convolutions), `pointwise` (the matrix
//! product of 1×1 convolutions and dense layers), `conv` (a small-patch conv such as the stem,
//! through `pointwise`), with the graph surgery they share in `graph`; and `tokens` (the text
//! encoder's load).
//!
//! tract's API moves between versions; keeping every tract call here means an upgrade touches
//! this directory only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::Framework;
use tract_onnx::WithOnnx;

use crate::model::ModelDir;

mod conv;
mod depthwise;
mod graph;
mod pointwise;
mod tail;
mod tokens;

pub use tail::{read_tail, TailLayer};

/// The tract version adaptd is built with (pinned in Cargo.toml).
pub const TRACT_VERSION: &str = "0.23.9";

/// Sets how many threads tract uses inside one forward pass (matrix products). 1 = none; the
/// daemon instead runs independent requests on parallel workers.
pub fn set_threads(threads: usize) {
    use tract_onnx::prelude::multithread::{set_default_executor, Executor};
    set_default_executor(if threads <= 1 {
        Executor::SingleThread
    } else {
        Executor::multithread(threads)
    });
}

/// Errors of the backbone layer. `code()` is the stable machine-readable kind.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    #[error("cannot read model {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("model file {path} is missing: fetch it with `{fetch}` (model.toml's fetch)")]
    Missing { path: String, fetch: String },
    #[error("{path} is not a loadable ONNX model: {message}")]
    NotOnnx { path: String, message: String },
    #[error("model {path} has SHA-256 {actual}, its model.toml expects {expected}")]
    Checksum {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("output {name:?} not found in the model; its outputs are {available:?}")]
    MissingOutput {
        name: String,
        available: Vec<String>,
    },
    #[error("cannot prepare the model for input shape {shape:?}: {message}")]
    Prepare { shape: Vec<usize>, message: String },
    #[error("input has {got} values, the model needs {want} ({shape:?})")]
    InputLength {
        got: usize,
        want: usize,
        shape: Vec<usize>,
    },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("model produced a non-finite embedding value")]
    NonFinite,
    #[error("the trainable tail of {path}: {message}")]
    Tail { path: String, message: String },
}

impl BackboneError {
    /// Stable error code for replies.
    pub fn code(&self) -> &'static str {
        match self {
            BackboneError::InputLength { .. } => "shape_mismatch",
            BackboneError::NonFinite => "non_finite",
            _ => "backbone",
        }
    }
}

/// What identifies a loaded backbone: published in `{root}/info` and checked against heads.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackboneInfo {
    /// Human name from `model.toml`.
    pub name: String,
    /// The model's identity ([`crate::model::ModelSpec::identity`]): the ONNX file's SHA-256
    /// (hex), hashed with the front-end recipe for a sound model or the tokenizer recipe for a text model. A head is only valid for the
    /// model it was trained on.
    pub sha256: String,
    /// SHA-256 (hex) of the ONNX file itself.
    pub onnx_sha256: String,
    /// Fixed input shape.
    pub input_shape: Vec<usize>,
    /// Embedding dimension (elements of the embedding output, batch excluded).
    pub embedding_dim: usize,
    /// Number of logits when the model has a logits output.
    pub logits_dim: Option<usize>,
    /// Milliseconds from reading the file to a runnable plan.
    pub load_ms: f64,
    /// Whether the decluttered graph came from the model cache (`cache_dir` of
    /// [`Backbone::load_cached`]) instead of the ONNX file.
    pub cached: bool,
    /// Depthwise convolutions that run channel-last, of all of them: `[channel_last, total]`.
    pub channel_last_depthwise: [usize; 2],
    /// How many of them run on adaptd's own kernel ([`DepthwiseLayout::Adaptd`]).
    pub adaptd_depthwise: usize,
    /// Convolutions and matrix products that run on adaptd's own matrix product
    /// ([`DepthwiseLayout::Adaptd`]): the 1×1 convolutions, a classifier, a stem conv.
    pub adaptd_products: usize,
    /// Shape of the value at the fine-tuning cut, batch included, when it is an output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut_shape: Option<Vec<usize>>,
}

/// How depthwise convolutions run: their layout, and whose kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DepthwiseLayout {
    /// Channel-last ([`channel_last_depthwise`]), run by adaptd's AVX2 + FMA op with the ReLU6
    /// fused ([`depthwise`]) on CPUs that have them, by tract's channel-last path elsewhere.
    /// The 1×1 convolutions between them run on adaptd's own matrix product with their bias,
    /// ReLU6 and residual add fused ([`pointwise`]) where the CPU has AVX-512 or AVX2 + FMA.
    #[default]
    Adaptd,
    /// As `adaptd`, but tract's own matrix products for the 1×1 convolutions.
    AdaptdDepthwise,
    /// Channel-last, run by tract's own kernels.
    ChannelLast,
    /// Whatever tract's optimizer picks on this CPU: channel-last where tract-linalg has a
    /// channel-inner depthwise kernel (aarch64, wasm), ONNX's NCHW elsewhere (x86_64, armv7).
    Tract,
}

/// Outputs of one forward pass.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// The embedding, flattened.
    pub embedding: Vec<f32>,
    /// Logits, when requested and available.
    pub logits: Option<Vec<f32>>,
    /// The value at the fine-tuning cut ([`Backbone::load_with_cut`]), in the model's layout
    /// (`BackboneInfo::cut_shape`).
    pub cut: Option<Vec<f32>>,
}

/// A loaded, optimized backbone ready to embed inputs; cheap to share behind an `Arc`.
pub struct Backbone {
    plan: Arc<TypedRunnableModel>,
    info: BackboneInfo,
    logits_plan_ix: Option<usize>,
    cut_plan_ix: Option<usize>,
    /// For a text encoder, what each graph input takes; `None` for a tensor backbone.
    tokens: Option<Vec<tokens::TokenInput>>,
}

impl std::fmt::Debug for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backbone")
            .field("info", &self.info)
            .finish()
    }
}

/// Refuses a file whose SHA-256 is not the one its `model.toml` names.
fn check_sha256(expected: Option<&str>, path: &Path, actual: &str) -> Result<(), BackboneError> {
    match expected {
        Some(want) if !want.eq_ignore_ascii_case(actual) => Err(BackboneError::Checksum {
            path: path.display().to_string(),
            expected: want.to_string(),
            actual: actual.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Reads the model's ONNX file and returns its bytes with their SHA-256 (hex); a missing file
/// of a model that says how to fetch it names that command.
fn read_model(model: &ModelDir) -> Result<(PathBuf, Vec<u8>, String), BackboneError> {
    let path = model.onnx_path();
    match (read_hashed(&path), &model.spec.fetch) {
        (Err(BackboneError::Read { source, .. }), Some(fetch))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Err(BackboneError::Missing {
                path: path.display().to_string(),
                fetch: fetch.clone(),
            })
        }
        (Ok((bytes, sha)), _) => Ok((path, bytes, sha)),
        (Err(e), _) => Err(e),
    }
}

/// Reads a file and returns its bytes with their SHA-256 (hex).
fn read_hashed(path: &Path) -> Result<(Vec<u8>, String), BackboneError> {
    let bytes = std::fs::read(path).map_err(|source| BackboneError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let sha = hex::encode(Sha256::digest(&bytes));
    Ok((bytes, sha))
}

fn parse_onnx(path: &Path, bytes: &[u8]) -> Result<InferenceModel, BackboneError> {
    tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(bytes))
        .map_err(|e| BackboneError::NotOnnx {
            path: path.display().to_string(),
            message: format!("{e:#}"),
        })
}

/// Names of a model's outputs as tract labels them (ONNX output value names).
fn output_names(model: &InferenceModel) -> Vec<String> {
    model
        .output_outlets()
        .map(|outs| {
            outs.iter()
                .map(|o| {
                    model
                        .outlet_label(*o)
                        .map(str::to_string)
                        .unwrap_or_else(|| model.node(o.node).name.clone())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Resolves an output by graph output name first, then outlet label, then node name.
fn resolve_output(model: &InferenceModel, name: &str) -> Result<OutletId, BackboneError> {
    let outputs = model
        .output_outlets()
        .map(|o| o.to_vec())
        .unwrap_or_default();
    if let Some(o) = outputs
        .iter()
        .find(|o| model.outlet_label(**o) == Some(name))
    {
        return Ok(*o);
    }
    if let Some((o, _)) = model.outlet_labels.iter().find(|(_, l)| l.as_str() == name) {
        return Ok(*o);
    }
    if let Some(node) = model.nodes().iter().find(|n| n.name == name) {
        return Ok(OutletId::new(node.id, 0));
    }
    Err(BackboneError::MissingOutput {
        name: name.to_string(),
        available: output_names(model),
    })
}

/// The model cache: the decluttered typed graph, with the input shape fixed and the outputs
/// selected, serialized as NNEF, so a restart skips ONNX parsing, type analysis and decluttering.
/// File layout: magic `ADNNEF01`, CRC-32 of the payload (u32 LE), payload length (u64 LE), then
/// the NNEF tar. The name carries a key over everything that changes the graph: the ONNX
/// SHA-256, adaptd's and tract's versions, the input shape and the selected outputs; a file with
/// another key is stale and removed when a new one is written.
mod cache {
    use super::*;

    const MAGIC: &[u8; 8] = b"ADNNEF01";
    const HEADER: usize = 8 + 4 + 8;

    pub fn key(onnx_sha256: &str, shape: &[usize], outputs: &[&str]) -> String {
        let mut h = Sha256::new();
        h.update(b"adaptd model cache v1\0");
        for part in [onnx_sha256, env!("CARGO_PKG_VERSION"), TRACT_VERSION] {
            h.update(part.as_bytes());
            h.update(b"\0");
        }
        h.update(format!("{shape:?}\0{outputs:?}").as_bytes());
        hex::encode(&h.finalize()[..12])
    }

    pub fn path(dir: &Path, key: &str) -> PathBuf {
        crate::state::files::model_cache(dir, key)
    }

    fn nnef() -> tract_nnef::framework::Nnef {
        tract_nnef::nnef().with_onnx()
    }

    /// The cached graph, or `None` when there is none or it is corrupt (then it is removed,
    /// with a warning, and the caller rebuilds it from the ONNX file).
    pub fn read(dir: &Path, key: &str, shape: &[usize], outputs: usize) -> Option<TypedModel> {
        let path = path(dir, key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the model cache; rebuilding it");
                return None;
            }
        };
        match decode(&bytes, shape, outputs) {
            Ok(m) => Some(m),
            Err(why) => {
                tracing::warn!(path = %path.display(), %why, "model cache is corrupt or does not match; rebuilding it");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    fn decode(bytes: &[u8], shape: &[usize], outputs: usize) -> Result<TypedModel, String> {
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err("bad header".into());
        }
        let crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[12..HEADER]);
        let payload = &bytes[HEADER..];
        if u64::from_le_bytes(len) != payload.len() as u64 {
            return Err(format!(
                "length {} != header {}",
                payload.len(),
                u64::from_le_bytes(len)
            ));
        }
        if crc32fast::hash(payload) != crc {
            return Err("CRC-32 mismatch".into());
        }
        // NNEF reads back with a no-op `Cast` around every op; decluttering removes them (the
        // optimizer would at its start anyway), so the graph is the one that was written and
        // the layout rewrite can propagate through it.
        let model = nnef()
            .model_for_read(&mut std::io::Cursor::new(payload))
            .and_then(|m| m.into_decluttered())
            .map_err(|e| format!("NNEF: {e:#}"))?;
        let input = model.input_fact(0).map_err(|e| format!("{e:#}"))?;
        if input.shape.as_concrete() != Some(shape) {
            return Err(format!("input shape {:?} != {shape:?}", input.shape));
        }
        if model.output_outlets().map(|o| o.len()).unwrap_or(0) != outputs {
            return Err("output count differs".into());
        }
        Ok(model)
    }

    /// Writes the graph atomically and removes stale cache files. Failures are reported, not
    /// fatal: the backbone runs without a cache.
    pub fn write(dir: &Path, key: &str, model: &TypedModel) {
        let result = (|| -> anyhow::Result<()> {
            let payload = nnef().write_to_tar_with_config(model, Vec::new(), false, true)?;
            let mut bytes = Vec::with_capacity(HEADER + payload.len());
            bytes.extend_from_slice(MAGIC);
            bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            bytes.extend_from_slice(&payload);
            std::fs::create_dir_all(dir)?;
            let path = path(dir, key);
            crate::state::files::write_atomic(&path, &bytes)?;
            for entry in std::fs::read_dir(dir)?.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if crate::state::files::is_model_cache(&name) && entry.path() != path {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(dir = %dir.display(), error = %format!("{e:#}"), "cannot write the model cache");
        }
    }
}

impl Backbone {
    /// Loads the model described by `model`: read + hash, parse ONNX, fix the input fact, select
    /// the embedding (and logits) outputs, optimize, make runnable.
    pub fn load(model: &ModelDir, with_logits: bool) -> Result<Backbone, BackboneError> {
        Self::load_cached(model, with_logits, None)
    }

    /// [`Backbone::load`], with the decluttered graph cached in `cache_dir` (the state directory):
    /// read from there when a valid cache for this exact model, version and output set exists,
    /// else built from the ONNX file and written there for the next start.
    pub fn load_cached(
        model: &ModelDir,
        with_logits: bool,
        cache_dir: Option<&Path>,
    ) -> Result<Backbone, BackboneError> {
        Self::load_with(model, with_logits, cache_dir, DepthwiseLayout::default())
    }

    /// [`Backbone::load_cached`] with an explicit depthwise layout (`adaptd bench
    /// --depthwise-layout` compares them; everything else uses the default).
    pub fn load_with(
        model: &ModelDir,
        with_logits: bool,
        cache_dir: Option<&Path>,
        layout: DepthwiseLayout,
    ) -> Result<Backbone, BackboneError> {
        Self::load_outputs(model, with_logits, cache_dir, layout, None)
    }

    /// Loads an image backbone that also outputs the value at its fine-tuning cut (`[finetune]
    /// cut` of `model.toml`) for [`Outputs::cut`]; with the layers after it from
    /// [`Backbone::tail`], `crate::finetune` continues the pass in Rust.
    pub fn load_with_cut(
        model: &ModelDir,
        cache_dir: Option<&Path>,
    ) -> Result<Backbone, BackboneError> {
        let cut = model.spec.finetune.as_ref().map(|f| f.cut.as_str());
        let Some(cut) = cut.filter(|_| model.spec.text.is_none()) else {
            return Err(BackboneError::Tail {
                path: model.dir.display().to_string(),
                message: "model.toml has no [finetune] cut".into(),
            });
        };
        Self::load_outputs(
            model,
            false,
            cache_dir,
            DepthwiseLayout::default(),
            Some(cut),
        )
    }

    /// The layers from the fine-tuning cut to the embedding, with the pretrained weights.
    pub fn tail(model: &ModelDir) -> Result<Vec<TailLayer>, BackboneError> {
        let cut = model.spec.finetune.as_ref().map(|f| f.cut.as_str());
        let Some(cut) = cut else {
            return Err(BackboneError::Tail {
                path: model.dir.display().to_string(),
                message: "model.toml has no [finetune] cut".into(),
            });
        };
        read_tail(&model.onnx_path(), cut, &model.spec.embedding_output)
    }

    fn load_outputs(
        model: &ModelDir,
        with_logits: bool,
        cache_dir: Option<&Path>,
        layout: DepthwiseLayout,
        cut: Option<&str>,
    ) -> Result<Backbone, BackboneError> {
        if let Some(text) = &model.spec.text {
            return tokens::load(model, text);
        }
        let started = Instant::now();
        let spec = &model.spec;
        // 1. Read and identify: the SHA-256 names this backbone everywhere, cached or not.
        let (path, bytes, sha256) = read_model(model)?;
        check_sha256(spec.sha256.as_deref(), &path, &sha256)?;
        let shape = spec.input.shape.clone();
        let prepare = |e: TractError| BackboneError::Prepare {
            shape: shape.clone(),
            message: format!("{e:#}"),
        };
        let mut outputs = vec![spec.embedding_output.as_str()];
        let logits_plan_ix = match (&spec.logits_output, with_logits) {
            (Some(name), true) => {
                outputs.push(name.as_str());
                Some(1)
            }
            _ => None,
        };
        let cut_plan_ix = cut.map(|name| {
            outputs.push(name);
            outputs.len() - 1
        });
        let key = cache::key(&sha256, &shape, &outputs);
        let hashed_ms = started.elapsed().as_secs_f64() * 1e3;
        let cached = cache_dir.and_then(|d| cache::read(d, &key, &shape, outputs.len()));
        let from_cache = cached.is_some();
        let decluttered = match cached {
            Some(m) => m,
            None => {
                // 2. Parse the ONNX protobuf into tract's inference graph.
                let mut graph = parse_onnx(&path, &bytes)?;
                // 3. Choose outputs: the embedding first, the logits second when asked for.
                let outlets = outputs
                    .iter()
                    .map(|name| resolve_output(&graph, name))
                    .collect::<Result<Vec<_>, _>>()?;
                graph.select_output_outlets(&outlets).map_err(prepare)?;
                // 4. Fix the input fact: fixed shapes let tract pick its fastest kernels.
                graph
                    .set_input_fact(0, f32::fact(shape.clone()).into())
                    .map_err(prepare)?;
                // 5. Type and declutter (what the cache holds).
                let typed = graph
                    .into_typed()
                    .and_then(|t| t.into_decluttered())
                    .map_err(prepare)?;
                if let Some(d) = cache_dir {
                    cache::write(d, &key, &typed);
                }
                typed
            }
        };
        drop(bytes);
        let decluttered_ms = started.elapsed().as_secs_f64() * 1e3;
        // 6. Exact layout rewrite (not cached: cheap, and the cache stays tract's own graph),
        //    then optimize (kernel selection for this CPU: never cached). A model the rewrite
        //    cannot handle runs in tract's own layout instead of failing to load.
        let rewritten = match layout {
            DepthwiseLayout::Adaptd
            | DepthwiseLayout::AdaptdDepthwise
            | DepthwiseLayout::ChannelLast => {
                let mut m = decluttered.clone();
                let own_kernel = layout != DepthwiseLayout::ChannelLast && depthwise::available();
                let own_products = layout == DepthwiseLayout::Adaptd && pointwise::available();
                channel_last_depthwise(&mut m)
                    .and_then(|()| {
                        let counts = count_depthwise(&m);
                        let replaced = match own_kernel {
                            true => depthwise::replace_depthwise(&mut m)?,
                            false => 0,
                        };
                        let products = match own_products {
                            true => {
                                pointwise::channel_last_products(&mut m)?;
                                pointwise::replace_pointwise(&mut m)? + conv::replace_convs(&mut m)?
                            }
                            false => 0,
                        };
                        Ok((counts, replaced, products, m.into_optimized()?))
                    })
                    .map_err(|e| tracing::warn!("channel-last depthwise rewrite skipped: {e:#}"))
                    .ok()
            }
            DepthwiseLayout::Tract => None,
        };
        let (channel_last_depthwise, adaptd_depthwise, adaptd_products, typed) = match rewritten {
            Some(done) => done,
            None => (
                count_depthwise(&decluttered),
                0,
                0,
                decluttered.into_optimized().map_err(prepare)?,
            ),
        };
        let cut_shape = cut_plan_ix.and_then(|ix| {
            let fact = typed.output_fact(ix).ok()?;
            fact.shape.as_concrete().map(|s| s.to_vec())
        });
        let dims: Vec<usize> = (0..outputs.len())
            .map(|ix| {
                typed
                    .output_fact(ix)
                    .ok()
                    .and_then(|f| f.shape.as_concrete().map(|s| s.iter().skip(1).product()))
                    .unwrap_or(0)
            })
            .collect();
        let plan = typed.into_runnable().map_err(prepare)?;
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        tracing::debug!(
            hashed_ms,
            decluttered_ms,
            load_ms,
            from_cache,
            "backbone load steps (cumulative ms)"
        );
        let info = BackboneInfo {
            name: spec.name.clone(),
            sha256: spec.identity(&sha256),
            onnx_sha256: sha256,
            input_shape: shape,
            embedding_dim: dims[0],
            logits_dim: logits_plan_ix.map(|ix| dims[ix]),
            load_ms,
            cached: from_cache,
            channel_last_depthwise,
            adaptd_depthwise,
            adaptd_products,
            cut_shape,
        };
        if info.embedding_dim == 0 {
            return Err(BackboneError::Prepare {
                shape: info.input_shape,
                message: "the embedding output has no concrete shape".into(),
            });
        }
        Ok(Backbone {
            plan,
            info,
            logits_plan_ix,
            cut_plan_ix,
            tokens: None,
        })
    }

    /// Identity and shapes of this backbone.
    pub fn info(&self) -> &BackboneInfo {
        &self.info
    }

    /// Runs one input (batch 1) and returns the embedding.
    pub fn embed(&self, input: &[f32]) -> Result<Vec<f32>, BackboneError> {
        Ok(self.run(input)?.embedding)
    }

    /// An input must have exactly the model's input element count.
    fn check_len(&self, input: &[f32]) -> Result<(), BackboneError> {
        let want = self.info.input_shape.iter().product::<usize>();
        if input.len() != want {
            return Err(BackboneError::InputLength {
                got: input.len(),
                want,
                shape: self.info.input_shape.clone(),
            });
        }
        Ok(())
    }

    /// Runs one input (batch 1) and returns the embedding and, when loaded, the logits.
    pub fn run(&self, input: &[f32]) -> Result<Outputs, BackboneError> {
        if self.tokens.is_some() {
            return Err(BackboneError::Run(
                "this backbone takes tokens, not tensors".into(),
            ));
        }
        self.check_len(input)?;
        let tensor = Tensor::from_shape(&self.info.input_shape, input)
            .map_err(|e| BackboneError::Run(format!("{e:#}")))?;
        let outputs = self
            .plan
            .run(tvec!(tensor.into_tvalue()))
            .map_err(|e| BackboneError::Run(format!("{e:#}")))?;
        let flat = |ix: usize| -> Result<Vec<f32>, BackboneError> {
            let run_err = |e: TractError| BackboneError::Run(format!("{e:#}"));
            let view = outputs[ix].try_as_plain_ram().map_err(run_err)?;
            Ok(view.as_slice::<f32>().map_err(run_err)?.to_vec())
        };
        let embedding = flat(0)?;
        if embedding.iter().any(|v| !v.is_finite()) {
            return Err(BackboneError::NonFinite);
        }
        let logits = match self.logits_plan_ix {
            Some(ix) => Some(flat(ix)?),
            None => None,
        };
        let cut = match self.cut_plan_ix {
            Some(ix) => Some(flat(ix)?),
            None => None,
        };
        Ok(Outputs {
            embedding,
            logits,
            cut,
        })
    }
}

/// Time spent in one node of the optimized plan, summed over the profiled runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeTime {
    /// Node id in the optimized graph.
    pub id: usize,
    /// Node name (derived from the ONNX node names by tract's passes).
    pub name: String,
    /// tract operator name after optimization (e.g. `OptMatMul`, `DepthWise`, `Add`).
    pub op: String,
    /// tract's own one-line description of the operator (kernel choice for matrix products).
    pub info: String,
    /// Milliseconds in this node, summed over the profiled runs ([`Backbone::profile`]) or per
    /// forward pass (`bench::ProfileReport`).
    pub ms: f64,
}

impl Backbone {
    /// Runs `runs` forward passes on `input`, timing every node of the optimized plan. The
    /// sum over nodes is the forward time minus the executor's own bookkeeping.
    pub fn profile(&self, input: &[f32], runs: usize) -> Result<Vec<NodeTime>, BackboneError> {
        let run_err = |e: TractError| BackboneError::Run(format!("{e:#}"));
        self.check_len(input)?;
        let model = self.plan.model();
        let mut ms = vec![0f64; model.nodes().len()];
        let mut state = self.plan.spawn().map_err(run_err)?;
        for _ in 0..runs.max(1) {
            let tensor = Tensor::from_shape(&self.info.input_shape, input).map_err(run_err)?;
            state
                .run_plan_with_eval(
                    tvec!(tensor.into_tvalue()),
                    |ctx, op_state, node, inputs| {
                        let t = Instant::now();
                        let r = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                        ms[node.id] += t.elapsed().as_secs_f64() * 1e3;
                        r
                    },
                )
                .map_err(run_err)?;
        }
        Ok(model
            .nodes()
            .iter()
            .filter(|n| ms[n.id] > 0.0)
            .map(|n| NodeTime {
                id: n.id,
                name: n.name.clone(),
                op: n.op().name().to_string(),
                info: n.op().info().map(|v| v.join("; ")).unwrap_or_default(),
                ms: ms[n.id],
            })
            .collect())
    }
}

/// What `adaptd inspect` prints about an ONNX file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelReport {
    /// File path as given.
    pub path: String,
    /// File size in bytes.
    pub bytes: u64,
    /// SHA-256 (hex).
    pub sha256: String,
    /// Graph inputs: name and the shape/type tract infers.
    pub inputs: Vec<(String, String)>,
    /// Graph outputs: name and the shape/type tract infers.
    pub outputs: Vec<(String, String)>,
    /// ONNX operator type → node count.
    pub ops: BTreeMap<String, usize>,
}

/// Reads an ONNX file and describes it (no optimization, any model).
pub fn inspect(path: &Path) -> Result<ModelReport, BackboneError> {
    let (bytes, sha256) = read_hashed(path)?;
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut std::io::Cursor::new(&bytes))
        .map_err(|e| BackboneError::NotOnnx {
            path: path.display().to_string(),
            message: format!("{e:#}"),
        })?;
    let mut ops = BTreeMap::new();
    if let Some(g) = &proto.graph {
        for n in &g.node {
            *ops.entry(n.op_type.clone()).or_insert(0) += 1;
        }
    }
    let model = parse_onnx(path, &bytes)?;
    let describe = |outlets: &[OutletId]| -> Vec<(String, String)> {
        outlets
            .iter()
            .map(|o| {
                let name = model
                    .outlet_label(*o)
                    .map(str::to_string)
                    .unwrap_or_else(|| model.node(o.node).name.clone());
                let fact = model
                    .outlet_fact(*o)
                    .map(|f| format!("{f:?}"))
                    .unwrap_or_default();
                (name, fact)
            })
            .collect()
    };
    let inputs = model.input_outlets().map(describe).unwrap_or_default();
    let outputs = model.output_outlets().map(describe).unwrap_or_default();
    Ok(ModelReport {
        path: path.display().to_string(),
        bytes: bytes.len() as u64,
        sha256,
        inputs,
        outputs,
        ops,
    })
}

/// `[channel-last, total]` float depthwise convolutions in `model`.
fn count_depthwise(model: &TypedModel) -> [usize; 2] {
    use tract_onnx::tract_core::ops::cnn::Conv;
    let layouts = model
        .nodes()
        .iter()
        .filter_map(|n| n.op_as::<Conv>().and_then(depthwise::depthwise_layout));
    layouts.fold([0, 0], |[c, t], last| [c + last as usize, t + 1])
}

/// Moves the channel axis of every depthwise convolution's input last: an exact layout rewrite
/// (same arithmetic per output value; only the memory order changes).
///
/// This is the change tract's own `Conv::suggested_axis_changes` asks for, applied with tract's
/// own `change_axes` propagation, but tract asks for it only where tract-linalg has a
/// channel-inner depthwise kernel (aarch64, wasm). On x86_64 it keeps NCHW, where its depthwise
/// kernel vectorises along the width and 7- or 14-pixel rows leave the vectors mostly empty; the
/// channel-last path's plain loop over contiguous channels is faster there (EfficientNet-Lite0,
/// release build: docs/performance.md, "Depthwise convolutions", the `--depthwise-layout`
/// variants), and it is the layout adaptd's own kernel ([`depthwise`]) needs. The propagation carries the layout on
/// through the 1×1 convolutions (matrix products, which take either layout) and stops at the
/// model's input and outputs, where a single transpose each is inserted.
fn channel_last_depthwise(model: &mut TypedModel) -> TractResult<()> {
    use std::collections::HashSet;
    use tract_onnx::tract_core::ops::change_axes::AxisOp;
    use tract_onnx::tract_core::ops::cnn::Conv;
    let mut tried: HashSet<String> = HashSet::new();
    let mut input_pivot_tried = false;
    loop {
        let mut patch = None;
        for node in model.nodes() {
            let Some(conv) = node.op_as::<Conv>() else {
                continue;
            };
            if depthwise::depthwise_layout(conv) != Some(false) || !tried.insert(node.name.clone())
            {
                continue;
            }
            let fmt = conv.pool_spec.data_format;
            let rank = conv.pool_spec.rank() + 1 + fmt.has_n() as usize;
            let c_axis = usize::from(fmt.has_n());
            patch = graph::propagate(model, node.inputs[0], AxisOp::Move(c_axis, rank - 1))?;
            if patch.is_some() {
                break;
            }
        }
        if patch.is_none() && !input_pivot_tried {
            input_pivot_tried = true;
            if channel_last_from_inputs(model)? {
                continue;
            }
        }
        let Some(patch) = patch else {
            for node in model.nodes() {
                let conv = node.op_as::<Conv>();
                if conv.and_then(depthwise::depthwise_layout) == Some(false) {
                    tracing::debug!(node = %node.name, "depthwise convolution stays channel-first");
                }
            }
            return Ok(());
        };
        patch.apply(model)?;
        *model = std::mem::take(model).into_compact()?;
    }
}

/// Makes the graph channel-last from a rank-4 model input on, keeping the input itself NCHW: the
/// change on a depthwise conv fed by a regular conv on the model input (the stem) is blocked at
/// the locked input, so the input gets a transpose pair (to NHWC and back) and the change starts
/// between them, where the second transpose absorbs it. False (and
/// `model` unchanged) when no input propagates it, or no depthwise conv is left channel-first.
fn channel_last_from_inputs(model: &mut TypedModel) -> TractResult<bool> {
    use tract_onnx::tract_core::ops::change_axes::AxisOp;
    let [last, total] = count_depthwise(model);
    if last == total {
        return Ok(false);
    }
    for &input in model.input_outlets()? {
        if model.outlet_fact(input)?.rank() != 4 {
            continue;
        }
        let mut pivoted = model.clone();
        let mut pair = TypedModelPatch::default();
        let tap = pair.tap_model(&pivoted, input)?;
        let nhwc = pair.wire_node("adaptd.input.nhwc", AxisOp::Move(1, 3), &[tap])?;
        let nchw = pair.wire_node("adaptd.input.nchw", AxisOp::Move(3, 1), &nhwc)?;
        pair.shunt_outside(&pivoted, input, nchw[0])?;
        pair.apply(&mut pivoted)?;
        let pivot = OutletId::new(pivoted.node_by_name("adaptd.input.nchw")?.id, 0);
        if let Some(p) = graph::propagate(&pivoted, pivot, AxisOp::Move(1, 3))? {
            p.apply(&mut pivoted)?;
            *model = pivoted.into_compact()?;
            return Ok(true);
        }
    }
    Ok(false)
}
