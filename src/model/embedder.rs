//! The one payload → embedding path: a model directory's preprocessing plus its backbone. The
//! daemon's workers, the CLI and `adaptd eval` all embed through [`Embedder::embed`].

use crate::model::backbone::{Backbone, BackboneError, Outputs};
use crate::model::input::{InputError, Preprocessor};
use crate::model::spec::{ModelDir, ModelError};

/// Any failure between a payload and an embedding.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Backbone(#[from] BackboneError),
}

impl EmbedError {
    /// Stable error code for replies.
    pub fn code(&self) -> &'static str {
        match self {
            EmbedError::Model(_) => "model",
            EmbedError::Input(e) => e.code(),
            EmbedError::Backbone(e) => e.code(),
        }
    }
}

/// An input as a request carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A payload of any supported kind: JPEG, PNG, raw little-endian f32, a JSON array.
    Payload(bytes::Bytes),
    /// Image bytes (JPEG/PNG), e.g. from a JSON request's base64 `image`.
    Image(Vec<u8>),
    /// Tensor values, e.g. from a JSON request's `tensor`.
    Tensor(Vec<f64>),
}

/// The model directory's preprocessing plus its backbone.
#[derive(Debug)]
pub struct Embedder {
    /// The model description this embedder was loaded from.
    pub model: ModelDir,
    /// Payload → tensor.
    pub preprocessor: Preprocessor,
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
        let preprocessor = Preprocessor::new(model.spec.input.clone());
        Ok(Embedder {
            model,
            preprocessor,
            backbone,
        })
    }

    fn tensor(&self, input: &Input) -> Result<Vec<f32>, InputError> {
        match input {
            Input::Payload(bytes) => self.preprocessor.decode(bytes),
            Input::Image(bytes) => self.preprocessor.from_image_bytes(bytes),
            Input::Tensor(values) => self.preprocessor.from_values(values),
        }
    }

    /// Decodes and preprocesses an input and embeds it.
    pub fn embed(&self, input: &Input) -> Result<Vec<f32>, EmbedError> {
        let tensor = self.tensor(input)?;
        Ok(self.backbone.embed(&tensor)?)
    }

    /// Like [`embed`](Self::embed), returning the logits too (a model loaded `with_logits`).
    pub fn run(&self, input: &Input) -> Result<Outputs, EmbedError> {
        let tensor = self.tensor(input)?;
        Ok(self.backbone.run(&tensor)?)
    }

    /// [`embed`](Self::embed) of a raw payload (the CLI's files, `eval`'s images), decoded
    /// where it lies: no copy into an [`Input`].
    pub fn embed_payload(&self, bytes: &[u8]) -> Result<Vec<f32>, EmbedError> {
        Ok(self.backbone.embed(&self.preprocessor.decode(bytes)?)?)
    }

    /// [`run`](Self::run) of a raw payload, without a copy.
    pub fn run_payload(&self, bytes: &[u8]) -> Result<Outputs, EmbedError> {
        Ok(self.backbone.run(&self.preprocessor.decode(bytes)?)?)
    }
}
