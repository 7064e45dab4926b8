//! Payload → embedding: a preprocessor and a backbone loaded from one model directory.

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

    /// Decodes a payload of any supported kind and embeds it.
    pub fn embed_payload(&self, bytes: &[u8]) -> Result<Vec<f32>, EmbedError> {
        let tensor = self.preprocessor.decode(bytes)?;
        Ok(self.backbone.embed(&tensor)?)
    }

    /// Decodes a payload and returns the embedding and logits.
    pub fn run_payload(&self, bytes: &[u8]) -> Result<Outputs, EmbedError> {
        let tensor = self.preprocessor.decode(bytes)?;
        Ok(self.backbone.run(&tensor)?)
    }
}
