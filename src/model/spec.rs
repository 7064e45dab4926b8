//! The model description (`model.toml` beside an ONNX file): which file, which outputs, which
//! preprocessing, which labels; and where the shipped model is found.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use sha2::{Digest, Sha256};

use crate::model::audio::AudioSpec;
use crate::model::input::InputSpec;
use crate::model::sensor::SensorSpec;
use crate::model::text::TextSpec;

/// The name of the description file inside a model directory.
pub const MODEL_TOML: &str = "model.toml";

/// The shipped model's directory name under `models/` (and under `/usr/share/adaptd/models/`).
pub const SHIPPED_MODEL: &str = "efficientnet-lite0";

/// A model description as written in `model.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Human name of the backbone, published in `{root}/info`.
    pub name: String,
    /// The ONNX file, relative to the model directory.
    pub file: PathBuf,
    /// Expected SHA-256 of the ONNX file (hex). When present, a mismatch refuses to load.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Graph output (or node name) that gives the embedding.
    pub embedding_output: String,
    /// Optional graph output with class logits (used by `adaptd classify`).
    #[serde(default)]
    pub logits_output: Option<String>,
    /// Optional label list for the logits, one per line, relative to the model directory.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// Input tensor and preprocessing.
    pub input: InputSpec,
    /// Present for a sound model: how a clip becomes backbone inputs (the log-mel front-end and
    /// its windows); the clip embedding is the mean of the windows' embeddings.
    #[serde(default)]
    pub audio: Option<AudioSpec>,
    /// Present for a text model: the tokenizer (vocabulary, casing, length limits) and the
    /// graph's extra token inputs.
    #[serde(default)]
    pub text: Option<TextSpec>,
    /// Present for a sensor model: the window's channels (the input shape is
    /// `[1, channels, samples]`) and its normalisation.
    #[serde(default)]
    pub sensor: Option<SensorSpec>,
    /// The command that fetches `file` when it is not shipped (a model over ~25 MB): named in
    /// the error when the file is missing.
    #[serde(default)]
    pub fetch: Option<String>,
    /// Present when the end of the backbone can be fine-tuned: where the frozen part ends.
    #[serde(default)]
    pub finetune: Option<FinetuneSpec>,
}

/// `[finetune]` of `model.toml`: the cut between the frozen part of the backbone (tract) and
/// the trainable tail (`crate::finetune`), which runs from the cut to the embedding output.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FinetuneSpec {
    /// The ONNX value (tensor) name where the tail starts, e.g. the input of the last block.
    pub cut: String,
}

/// What kind of payload a model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    /// Photos (JPEG, PNG), preprocessed by `[input]`.
    Image,
    /// Sound (WAV, PCM), through the `[audio]` front-end.
    Audio,
    /// Tensors only (raw f32, JSON): a model whose input is not an image.
    Tensor,
    /// UTF-8 text, through the `[text]` tokenizer.
    Text,
    /// Sensor windows (channels × samples: JSON, CSV, raw f32), through `[sensor]`.
    Sensor,
}

impl ModelSpec {
    /// The kind of payload this model takes.
    pub fn modality(&self) -> Modality {
        if self.sensor.is_some() {
            return Modality::Sensor;
        }
        match (&self.audio, &self.text, self.input.image_size()) {
            (Some(_), _, _) => Modality::Audio,
            (None, Some(_), _) => Modality::Text,
            (None, None, Some(_)) => Modality::Image,
            (None, None, None) => Modality::Tensor,
        }
    }

    /// The stages from a payload to an embedding, one line each (`adaptd inspect`).
    pub fn stages(&self) -> Vec<String> {
        let backbone = format!(
            "backbone {} → output {:?}",
            self.file.display(),
            self.embedding_output
        );
        if let Some(sensor) = &self.sensor {
            let (c, t) = sensor_shape(&self.input.shape).unwrap_or((0, 0));
            return vec![
                format!(
                    "a window of {c} channels ({}) × {t} samples: JSON (one array per channel), \
                     CSV (one reading per line) or raw f32; no missing or non-finite values",
                    sensor.channels.join(", ")
                ),
                format!("normalise: {:?}", sensor.normalise).to_lowercase(),
                format!("{backbone}: one window embedding"),
            ];
        }
        if let Some(t) = &self.text {
            return vec![
                format!(
                    "UTF-8 text (at most {} bytes); BERT normalizer: drop control characters, \
                     space out CJK ideographs{}",
                    t.max_bytes,
                    if t.lowercase {
                        ", strip accents (NFD), lowercase"
                    } else {
                        ""
                    }
                ),
                format!(
                    "WordPiece over {} (split on whitespace and punctuation, ## continuations, \
                     {} for unknown words); [CLS] … [SEP], cut to {} tokens",
                    t.vocab.display(),
                    t.unknown_token,
                    t.max_tokens
                ),
                format!("{backbone}: one sentence embedding"),
            ];
        }
        match &self.audio {
            None => {
                let input = &self.input;
                vec![
                    format!(
                        "decode JPEG/PNG (or a raw/JSON tensor of shape {:?}); {:?} crop, {:?} \
                         resize, (pixel - mean) / std, {:?}",
                        input.shape, input.crop, input.resize, input.layout
                    )
                    .to_lowercase(),
                    backbone,
                ]
            }
            Some(a) => {
                let rate = f64::from(a.sample_rate);
                vec![
                    format!(
                        "decode WAV (or JSON pcm), mix to mono, resample to {} Hz; at most {} s",
                        a.sample_rate, a.max_seconds
                    ),
                    format!(
                        "log-mel: periodic Hann {} samples, hop {}, FFT {}, |X|, {} HTK mel bands \
                         {}–{} Hz, ln(mel + {})",
                        a.window, a.hop, a.fft, a.mel_bands, a.fmin, a.fmax, a.log_offset
                    ),
                    format!(
                        "windows of {} frames ({:.3} s) every {} frames ({:.3} s), the last \
                         zero-padded",
                        a.patch_frames,
                        a.patch_samples() as f64 / rate,
                        a.patch_hop_frames,
                        (a.patch_hop_frames * a.hop) as f64 / rate
                    ),
                    format!("{backbone}, once per window"),
                    "clip embedding: mean of the window embeddings".to_string(),
                ]
            }
        }
    }

    /// The model's identity, given its ONNX file's SHA-256: heads, adaptation state and the
    /// embedding cache are tied to it. For an image model it is the file's hash (the identity
    /// heads have always carried); a sound model's embedding also depends on the front-end, so
    /// its identity hashes the file's hash together with the recipe.
    pub fn identity(&self, onnx_sha256: &str) -> String {
        let recipe = match (&self.audio, &self.text, &self.sensor) {
            (Some(audio), _, _) => audio.recipe(),
            (None, Some(text), _) => text.recipe(&text.vocab_sha256),
            // Raw windows are the image case: the file is the identity. A normalisation
            // changes every embedding, so it is part of the identity.
            (None, None, Some(sensor)) if sensor.normalise != Default::default() => {
                format!("sensor normalise={:?}", sensor.normalise)
            }
            (None, None, _) => return onnx_sha256.to_string(),
        };
        let mut h = Sha256::new();
        h.update(b"adaptd model identity v1\0");
        h.update(onnx_sha256.as_bytes());
        h.update(b"\0");
        h.update(recipe.as_bytes());
        hex::encode(h.finalize())
    }
}

/// A model description together with the directory it was read from.
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// Directory holding `model.toml` and the files it names.
    pub dir: PathBuf,
    /// The parsed description.
    pub spec: ModelSpec,
}

/// Errors reading a model description.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid model description {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(
        "no model found: pass --model DIR, set [model] dir in the config or ADAPTD_MODEL_DIR \
         (searched: {searched})"
    )]
    NotFound { searched: String },
}

impl ModelDir {
    /// Reads `DIR/model.toml`; a path to an `.onnx` file uses the `model.toml` beside it.
    pub fn load(path: &Path) -> Result<ModelDir, ModelError> {
        let dir = if path.is_file() {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            path.to_path_buf()
        };
        let toml_path = dir.join(MODEL_TOML);
        let text = std::fs::read_to_string(&toml_path).map_err(|source| ModelError::Read {
            path: toml_path.clone(),
            source,
        })?;
        let spec: ModelSpec = toml::from_str(&text).map_err(|e| ModelError::Invalid {
            path: toml_path.clone(),
            message: e.to_string(),
        })?;
        spec.input
            .validate()
            .and_then(|()| match (&spec.audio, &spec.text, &spec.sensor) {
                (Some(_), Some(_), _) | (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                    Err("a model has one of [audio], [text] and [sensor]".into())
                }
                (Some(audio), None, None) => audio.validate(spec.input.element_count()),
                (None, Some(text), None) => text.validate(&spec.input.shape),
                (None, None, Some(sensor)) => match sensor_shape(&spec.input.shape) {
                    Some((c, _)) if c == sensor.channels.len() => Ok(()),
                    _ => Err(format!(
                        "a [sensor] model's input shape is [1, channels, samples] with one \
                         channel per name in sensor.channels ({}); it is {:?}",
                        sensor.channels.len(),
                        spec.input.shape
                    )),
                },
                (None, None, None) => Ok(()),
            })
            .map_err(|message| ModelError::Invalid {
                path: toml_path.clone(),
                message,
            })?;
        if path.is_file() && spec.file != path.file_name().map(PathBuf::from).unwrap_or_default() {
            return Err(ModelError::Invalid {
                path: toml_path,
                message: format!(
                    "describes {} but {} was given",
                    spec.file.display(),
                    path.display()
                ),
            });
        }
        Ok(ModelDir { dir, spec })
    }

    /// Finds the shipped model: `$ADAPTD_MODEL_DIR`, then the install location
    /// (`/usr/share/adaptd/models/…`), then next to the executable (`../share/adaptd/models/…`),
    /// then the source tree this binary was built from (for `cargo run`).
    pub fn shipped() -> Result<ModelDir, ModelError> {
        let candidates = shipped_candidates();
        for dir in &candidates {
            if dir.join(MODEL_TOML).is_file() {
                return ModelDir::load(dir);
            }
        }
        Err(ModelError::NotFound {
            searched: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The model at `path` when one is given (a flag or `[model] dir`), else the shipped one:
    /// the one rule the daemon, the CLI and `eval` follow.
    pub fn find(path: Option<&Path>) -> Result<ModelDir, ModelError> {
        match path {
            Some(p) => ModelDir::load(p),
            None => ModelDir::shipped(),
        }
    }

    /// Full path of the ONNX file.
    pub fn onnx_path(&self) -> PathBuf {
        self.dir.join(&self.spec.file)
    }

    /// Reads the label list, if the description names one.
    pub fn labels(&self) -> Result<Option<Vec<String>>, ModelError> {
        let Some(rel) = &self.spec.labels else {
            return Ok(None);
        };
        let path = self.dir.join(rel);
        let text =
            std::fs::read_to_string(&path).map_err(|source| ModelError::Read { path, source })?;
        Ok(Some(text.lines().map(|l| l.trim().to_string()).collect()))
    }
}

/// `(channels, samples)` of a sensor model's input shape `[1, channels, samples]`.
pub fn sensor_shape(shape: &[usize]) -> Option<(usize, usize)> {
    match shape {
        [1, c, t] if *c > 0 && *t > 0 => Some((*c, *t)),
        _ => None,
    }
}

fn shipped_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = std::env::var_os("ADAPTD_MODEL_DIR") {
        out.push(PathBuf::from(dir));
    }
    out.push(Path::new("/usr/share/adaptd/models").join(SHIPPED_MODEL));
    if let Ok(exe) = std::env::current_exe() {
        if let Some(bin) = exe.parent() {
            out.push(bin.join("../share/adaptd/models").join(SHIPPED_MODEL));
        }
    }
    out.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(SHIPPED_MODEL),
    );
    out
}
