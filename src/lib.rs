//! adaptd: on-device transfer learning for ARM Linux boards on MQTT.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`cli`] | command-line parsing and the one-shot commands (inspect, embed, classify) |
//! | [`config`] | the embedded default TOML, config file + `ADAPTD_*` overrides → validated settings |
//! | [`model`] | `model.toml`: which ONNX file, outputs, preprocessing, labels; finding the shipped model |
//! | [`input`] | payload bytes → input tensor (JPEG/PNG/raw f32/JSON, resize, crop, normalize) |
//! | [`backbone`] | the only tract module: load, fix shape, the depthwise rewrite and adaptd's depthwise op (`backbone/depthwise.rs`), optimize, embed |
//! | [`bench`] | `adaptd bench`: backbone latency and load time |
//! | [`pipeline`] | payload → embedding (input + backbone) |
//! | [`head`] | streaming linear heads, snapshots, merge, head file format |
//! | [`fleet`] | fleet learning: board key, signed head envelopes, peer verification, the fleet head |
//! | [`adapt`] | domain adaptation: target statistics, mean/coral/t3a corrections, drift; its daemon thread |
//! | [`eval`] | `adaptd eval`: the learning benchmark (datasets, embedding cache, prequential runs, reports) |
//! | [`samples`] | stored labeled embeddings (per-class reservoirs) for retraining |
//! | [`store`] | the state directory: write-ahead log, atomic snapshots, kept heads |
//! | [`service`] | topics, request decoding, inference workers, error replies |
//! | [`learner`] | the learner thread: durable learning, commands, head publishing |
//! | [`mqtt`] | client options and the event-loop driver |
//! | [`broker`] | the embedded rumqttd broker |
//! | [`cbor`] | CBOR byte strings (raw, f32) shared by the head format, WAL and snapshots |
//! | [`stats`] | counters, latency percentiles, RSS |
//! | [`error`] | request errors with stable codes |
//! | [`daemon`] | `adaptd run`: wiring, systemd notify/watchdog, orderly shutdown |
pub mod adapt;
pub mod backbone;
pub mod bench;
pub mod broker;
pub mod cbor;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod error;
pub mod eval;
pub mod fleet;
pub mod head;
pub mod input;
pub mod learner;
pub mod model;
pub mod mqtt;
pub mod pipeline;
pub mod samples;
pub mod service;
pub mod stats;
pub mod store;

pub use daemon::run;
