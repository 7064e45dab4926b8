//! The one payload → embedding path: a model directory's preprocessing (an image's, or a sound
//! model's front-end) plus its backbone. The daemon's workers, the CLI and `adaptd eval` all
//! embed through [`Embedder::embed`].

use crate::model::audio::{self, AudioError, Clip, FrontEnd};
use crate::model::backbone::{Backbone, BackboneError, Outputs};
use crate::model::input::{sniff, InputError, PayloadKind, Preprocessor};
use crate::model::sensor::{self, WindowError, Windows};
use crate::model::spec::{sensor_shape, Modality, ModelDir, ModelError};
use crate::model::text::{TextError, Tokenizer};

/// Any failure between a payload and an embedding.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Window(#[from] WindowError),
    #[error(transparent)]
    Backbone(#[from] BackboneError),
    #[error("this board runs {model}, which takes {takes}; the payload is {got}")]
    WrongModality {
        model: String,
        takes: &'static str,
        got: &'static str,
    },
}

impl EmbedError {
    /// Stable error code for replies.
    pub fn code(&self) -> &'static str {
        match self {
            EmbedError::Model(_) => "model",
            EmbedError::Input(e) => e.code(),
            EmbedError::Audio(e) => e.code(),
            EmbedError::Text(e) => e.code(),
            EmbedError::Window(e) => e.code(),
            EmbedError::Backbone(e) => e.code(),
            EmbedError::WrongModality { .. } => "wrong_modality",
        }
    }
}

/// An input as a request carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A payload of any supported kind: JPEG, PNG, WAV, raw little-endian f32, a JSON array.
    Payload(bytes::Bytes),
    /// Image bytes (JPEG/PNG), e.g. from a JSON request's base64 `image`.
    Image(Vec<u8>),
    /// Tensor values, e.g. from a JSON request's `tensor`.
    Tensor(Vec<f64>),
    /// A sound file (WAV), e.g. from a JSON request's base64 `audio`.
    Audio(Vec<u8>),
    /// Mono samples in [-1, 1], e.g. from a JSON request's `pcm` (base64 s16le) and `rate`.
    Pcm(Clip),
    /// A text, e.g. from a JSON request's `text`.
    Text(String),
    /// A sensor window, one vector per channel (`None`: a missing value), e.g. from a JSON
    /// request's `window`.
    Window(Vec<Vec<Option<f64>>>),
    /// A sensor window as CSV text (a reading per line), e.g. from a JSON request's `window`
    /// given as a string.
    Csv(String),
}

/// The model directory's preprocessing plus its backbone.
#[derive(Debug)]
pub struct Embedder {
    /// The model description this embedder was loaded from.
    pub model: ModelDir,
    /// Payload → tensor (images, tensors).
    pub preprocessor: Preprocessor,
    /// Sound → backbone inputs, for a model with an `[audio]` section.
    pub front_end: Option<FrontEnd>,
    /// Text → token ids, for a model with a `[text]` section.
    pub tokenizer: Option<Tokenizer>,
    /// Sensor windows → backbone input, for a model with a `[sensor]` section.
    pub windows: Option<Windows>,
    /// Tensor → embedding.
    pub backbone: Backbone,
}

impl Embedder {
    /// Loads the backbone of `model` (with its logits output when `with_logits`).
    pub fn load(model: ModelDir, with_logits: bool) -> Result<Embedder, EmbedError> {
        Self::load_cached(model, with_logits, None)
    }

    /// [`Embedder::load`] with the backbone's model cache in `cache_dir` (see
    /// [`Backbone::load_cached`]).
    pub fn load_cached(
        model: ModelDir,
        with_logits: bool,
        cache_dir: Option<&std::path::Path>,
    ) -> Result<Embedder, EmbedError> {
        let backbone = Backbone::load_cached(&model, with_logits, cache_dir)?;
        Self::with_backbone(model, backbone)
    }

    /// An image model's embedder whose [`run_payload`](Self::run_payload) also returns the
    /// value at the fine-tuning cut (see [`Backbone::load_with_cut`]).
    pub fn load_with_cut(
        model: ModelDir,
        cache_dir: Option<&std::path::Path>,
    ) -> Result<Embedder, EmbedError> {
        let backbone = Backbone::load_with_cut(&model, cache_dir)?;
        Self::with_backbone(model, backbone)
    }

    fn with_backbone(model: ModelDir, backbone: Backbone) -> Result<Embedder, EmbedError> {
        let preprocessor = Preprocessor::new(model.spec.input.clone());
        let front_end = model.spec.audio.clone().map(FrontEnd::new);
        let tokenizer = match &model.spec.text {
            Some(text) => Some(Tokenizer::load(&model.dir, text)?),
            None => None,
        };
        let windows = model.spec.sensor.clone().map(|spec| {
            let (_, length) = sensor_shape(&model.spec.input.shape).unwrap_or((0, 0));
            Windows::new(spec, length)
        });
        Ok(Embedder {
            model,
            preprocessor,
            front_end,
            tokenizer,
            windows,
            backbone,
        })
    }

    /// What this model takes.
    pub fn modality(&self) -> Modality {
        self.model.spec.modality()
    }

    fn wrong(&self, got: &'static str) -> EmbedError {
        EmbedError::WrongModality {
            model: self.model.spec.name.clone(),
            takes: match self.modality() {
                Modality::Image => "images (JPEG, PNG) or tensors",
                Modality::Audio => "sound (WAV, PCM) or log-mel tensors",
                Modality::Tensor => "tensors",
                Modality::Text => "text (UTF-8, or JSON with \"text\")",
                Modality::Sensor => "sensor windows (JSON, CSV or raw f32)",
            },
            got,
        }
    }

    /// A clip's backbone inputs (one per window), or the refusal of sound by a model that
    /// does not take it.
    fn clip_inputs(&self, clip: &Clip) -> Result<Vec<Vec<f32>>, EmbedError> {
        match &self.front_end {
            Some(front_end) => Ok(front_end.patches(clip)?),
            None => Err(self.wrong("sound")),
        }
    }

    fn wav_inputs(&self, bytes: &[u8]) -> Result<Vec<Vec<f32>>, EmbedError> {
        match &self.front_end {
            Some(front_end) => {
                let clip = audio::decode_wav(bytes, front_end.spec().max_seconds)?;
                self.clip_inputs(&clip)
            }
            None => Err(self.wrong("sound (WAV)")),
        }
    }

    /// A raw payload's backbone inputs: sound is recognised by its RIFF/WAVE header, images by
    /// their magic bytes, anything else goes to the tensor decoders.
    fn payload_inputs(&self, bytes: &[u8]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if let Some(windows) = &self.windows {
            return Ok(vec![self.payload_window(windows, bytes)?]);
        }
        if audio::is_wav(bytes) {
            return self.wav_inputs(bytes);
        }
        let image = matches!(
            sniff(bytes, self.preprocessor.spec().element_count()),
            Some(PayloadKind::Jpeg | PayloadKind::Png)
        );
        if image && self.front_end.is_some() {
            return Err(self.wrong("an image"));
        }
        Ok(vec![self.preprocessor.decode(bytes)?])
    }

    /// The text of a request's input, for a text model: a raw payload is UTF-8 text unless it
    /// is an image or a WAV file (refused: wrong modality).
    fn text_of<'a>(&self, tokenizer: &Tokenizer, input: &'a Input) -> Result<&'a str, EmbedError> {
        match input {
            Input::Payload(bytes) => self.payload_text(tokenizer, bytes),
            Input::Text(text) => {
                tokenizer.check(text)?;
                Ok(text)
            }
            Input::Image(_) => Err(self.wrong("an image")),
            Input::Tensor(_) => Err(self.wrong("a tensor")),
            Input::Audio(_) | Input::Pcm(_) => Err(self.wrong("sound")),
            Input::Window(_) | Input::Csv(_) => Err(self.wrong("a sensor window")),
        }
    }

    fn payload_text<'a>(
        &self,
        tokenizer: &Tokenizer,
        bytes: &'a [u8],
    ) -> Result<&'a str, EmbedError> {
        if audio::is_wav(bytes) {
            return Err(self.wrong("sound (WAV)"));
        }
        if matches!(sniff(bytes, 0), Some(PayloadKind::Jpeg | PayloadKind::Png)) {
            return Err(self.wrong("an image"));
        }
        Ok(tokenizer.text(bytes)?)
    }

    /// A text's embedding: tokens, then the encoder once.
    fn text_embedding(&self, tokenizer: &Tokenizer, text: &str) -> Result<Outputs, EmbedError> {
        let tokens = tokenizer.encode(text);
        Ok(Outputs {
            embedding: self.backbone.run_tokens(&tokens.ids)?,
            logits: None,
            cut: None,
        })
    }

    /// A sensor window's backbone input: JSON windows and tensors, CSV and raw f32 payloads;
    /// everything else is refused.
    fn window_input(&self, windows: &Windows, input: &Input) -> Result<Vec<f32>, EmbedError> {
        match input {
            Input::Window(channels) => Ok(windows.from_channels(channels)?),
            Input::Csv(text) => Ok(windows.from_csv(text)?),
            Input::Tensor(values) => {
                let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
                Ok(windows.from_flat(&values)?)
            }
            Input::Payload(bytes) => self.payload_window(windows, bytes),
            Input::Image(_) => Err(self.wrong("an image")),
            Input::Audio(_) | Input::Pcm(_) => Err(self.wrong("sound")),
            Input::Text(_) => Err(self.wrong("text")),
        }
    }

    /// A raw payload as a window: text (printable ASCII) is a JSON array (one array per
    /// channel, or the flat values) or else CSV; binary is raw little-endian f32 of exactly
    /// the window's size. Text first: a CSV window can have the raw window's byte count.
    fn payload_window(&self, windows: &Windows, bytes: &[u8]) -> Result<Vec<f32>, EmbedError> {
        if audio::is_wav(bytes) {
            return Err(self.wrong("sound (WAV)"));
        }
        if bytes.is_empty() {
            return Err(InputError::Empty.into());
        }
        let text = bytes
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
        if !text {
            return match sniff(bytes, self.preprocessor.spec().element_count()) {
                Some(PayloadKind::Jpeg | PayloadKind::Png) => Err(self.wrong("an image")),
                Some(PayloadKind::RawF32) => {
                    let values: Vec<f32> = bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    Ok(windows.from_flat(&values)?)
                }
                _ => Err(InputError::Unrecognised(bytes.len()).into()),
            };
        }
        // Printable ASCII is valid UTF-8.
        let text = String::from_utf8_lossy(bytes);
        if !matches!(text.trim_start().chars().next(), Some('[' | '{')) {
            return Ok(windows.from_csv(&text)?);
        }
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| InputError::Json(e.to_string()))?;
        let v = match v {
            serde_json::Value::Object(mut o) => o
                .remove("window")
                .or_else(|| o.remove("tensor"))
                .unwrap_or(serde_json::Value::Null),
            v => v,
        };
        let flat = v
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|x| !x.is_array()));
        if flat {
            // The flat values, channel after channel (a tensor).
            let one = sensor::parse_json_window(&serde_json::Value::Array(vec![v]))
                .map_err(InputError::Json)?;
            let values: Vec<f32> = one
                .into_iter()
                .flatten()
                .map(|x| x.map_or(f32::NAN, |x| x as f32))
                .collect();
            return Ok(windows.from_flat(&values)?);
        }
        let channels = sensor::parse_json_window(&v).map_err(InputError::Json)?;
        Ok(windows.from_channels(&channels)?)
    }

    /// The backbone inputs of a request's input: one for an image or a tensor, one per window
    /// of a clip.
    fn inputs(&self, input: &Input) -> Result<Vec<Vec<f32>>, EmbedError> {
        if self.tokenizer.is_some() {
            return Err(self.wrong("a tensor input"));
        }
        if let Some(windows) = &self.windows {
            return Ok(vec![self.window_input(windows, input)?]);
        }
        match input {
            Input::Window(_) | Input::Csv(_) => Err(self.wrong("a sensor window")),
            Input::Text(_) => Err(self.wrong("text")),
            Input::Payload(bytes) => self.payload_inputs(bytes),
            Input::Image(_) if self.front_end.is_some() => Err(self.wrong("an image")),
            Input::Image(bytes) => Ok(vec![self.preprocessor.from_image_bytes(bytes)?]),
            Input::Tensor(values) => Ok(vec![self.preprocessor.from_values(values)?]),
            Input::Audio(bytes) => self.wav_inputs(bytes),
            Input::Pcm(clip) => self.clip_inputs(clip),
        }
    }

    /// Runs every backbone input and pools: the clip embedding (and logits) is the mean over
    /// its windows; an image has one.
    fn pooled(&self, inputs: &[Vec<f32>], logits: bool) -> Result<Outputs, EmbedError> {
        let mut sum: Option<Outputs> = None;
        for tensor in inputs {
            let out = if logits {
                self.backbone.run(tensor)?
            } else {
                Outputs {
                    embedding: self.backbone.embed(tensor)?,
                    logits: None,
                    cut: None,
                }
            };
            sum = Some(match sum {
                None => out,
                Some(mut acc) => {
                    add(&mut acc.embedding, &out.embedding);
                    if let (Some(a), Some(b)) = (acc.logits.as_mut(), out.logits.as_ref()) {
                        add(a, b);
                    }
                    // The cut's value is an image's (one input): a mean of windows is not
                    // what the tail would see.
                    acc.cut = None;
                    acc
                }
            });
        }
        let mut out = sum.ok_or_else(|| BackboneError::Run("no input to run".into()))?;
        if inputs.len() > 1 {
            let scale = 1.0 / inputs.len() as f32;
            out.embedding.iter_mut().for_each(|v| *v *= scale);
            if let Some(l) = out.logits.as_mut() {
                l.iter_mut().for_each(|v| *v *= scale);
            }
        }
        Ok(out)
    }

    /// Decodes and preprocesses an input and embeds it.
    pub fn embed(&self, input: &Input) -> Result<Vec<f32>, EmbedError> {
        Ok(self.run_with(input, false)?.embedding)
    }

    /// Like [`embed`](Self::embed), returning the logits too (a model loaded `with_logits`).
    pub fn run(&self, input: &Input) -> Result<Outputs, EmbedError> {
        self.run_with(input, true)
    }

    fn run_with(&self, input: &Input, logits: bool) -> Result<Outputs, EmbedError> {
        match &self.tokenizer {
            Some(t) => self.text_embedding(t, self.text_of(t, input)?),
            None => self.pooled(&self.inputs(input)?, logits),
        }
    }

    /// [`embed`](Self::embed) of a raw payload (the CLI's files, `eval`'s images, clips and
    /// texts), decoded where it lies: no copy into an [`Input`].
    pub fn embed_payload(&self, bytes: &[u8]) -> Result<Vec<f32>, EmbedError> {
        Ok(self.run_payload(bytes)?.embedding)
    }

    /// [`run`](Self::run) of a raw payload, without a copy.
    pub fn run_payload(&self, bytes: &[u8]) -> Result<Outputs, EmbedError> {
        match &self.tokenizer {
            Some(t) => self.text_embedding(t, self.payload_text(t, bytes)?),
            None => self.pooled(&self.payload_inputs(bytes)?, true),
        }
    }

    /// The backbone inputs of a raw payload, without running the backbone (`adaptd inspect`
    /// and the front-end's tests).
    pub fn preprocess_payload(&self, bytes: &[u8]) -> Result<Vec<Vec<f32>>, EmbedError> {
        match &self.tokenizer {
            // A text's backbone input is its token ids.
            Some(t) => {
                let ids = t.encode(self.payload_text(t, bytes)?).ids;
                Ok(vec![ids.into_iter().map(|id| id as f32).collect()])
            }
            None => self.payload_inputs(bytes),
        }
    }
}

fn add(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, b)| *a += b);
}
