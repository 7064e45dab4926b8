//! The model: its description (`model.toml`), payload decoding (images, sound, text, sensor windows), the frozen backbone (the only
//! tract code) and the one payload → embedding path that the daemon, the CLI and `eval` share.

pub mod audio;
pub mod backbone;
pub mod embedder;
pub mod input;
pub mod latency;
pub mod sensor;
pub mod spec;
pub mod text;

pub use embedder::{EmbedError, Embedder, Input};
pub use spec::{
    FinetuneSpec, Modality, ModelDir, ModelError, ModelSpec, MODEL_TOML, SHIPPED_MODEL,
};
