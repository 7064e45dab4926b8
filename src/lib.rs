//! adaptd: on-device transfer learning for ARM Linux boards on MQTT.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`model`] | `model.toml`, payload decoding (images; sound in `model::audio`), the backbone (the only tract code), the one `embed` path |
//! | [`head`] | streaming linear heads, snapshots, merge, head file format |
//! | [`adapt`] | domain adaptation maths (target statistics, mean/coral/t3a, drift) and its handle |
//! | [`state`] | the state directory: write-ahead log, snapshots, kept heads, sample reservoir, the ledger of learned samples by id (unlearning) |
//! | [`finetune`] | fine-tuning the backbone's tail: its layers from the ONNX file's, forward/backward, stored f16 activations, the trainer (probe, Adam, guard's refit); used by `adaptd eval --finetune`, not by the daemon yet |
//! | [`fleet`] | fleet learning: board key, signed head envelopes and deltas, peers, the peer head store and delta logs, the running fleet total |
//! | [`config`] | the embedded default TOML, config file + `ADAPTD_*` overrides → validated settings |
//! | [`daemon`] | `adaptd run`: MQTT driver, requests, workers, learner, adaptation thread, broker |
//! | [`eval`] | `adaptd eval`: the learning and adaptation benchmarks |
//! | [`cli`] | command-line parsing, the one-shot commands, `adaptd run`'s runtime and signals, `adaptd teach`/`watch` |
//! | [`homeassistant`] | Home Assistant MQTT discovery documents (pure; `daemon::dashboard` publishes them) |
//! | [`cbor`] | CBOR byte strings (raw, f32) shared by the head format, WAL and snapshots |
pub mod adapt;
pub mod cbor;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod eval;
pub mod finetune;
pub mod fleet;
pub mod head;
pub mod homeassistant;
pub mod model;
pub mod state;

pub use daemon::run;
