//! The command line: the clap definitions and [`dispatch`], which hands each subcommand to its
//! implementation (`run` to [`run`], the one-shot commands to [`commands`]).

pub mod commands;
pub mod run;
pub mod teach;
pub mod watch;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

pub use crate::eval::EvalArgs;
use crate::model::backbone::DepthwiseLayout;
pub use commands::{bench, classify, embed, eval, fleet_key, inspect, top_k_softmax, BenchArgs};

/// adaptd: on-device transfer learning on MQTT.
#[derive(Debug, Parser)]
#[command(name = "adaptd", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (MQTT service) until SIGTERM or SIGINT.
    Run {
        /// Config file (TOML); default: the shipped defaults. Env: ADAPTD_CONFIG.
        #[arg(long, env = "ADAPTD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the configuration.
    Config {
        /// Print the shipped, commented default configuration.
        #[arg(long)]
        default: bool,
        /// Config file to validate and show merged with defaults and environment.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Describe an ONNX model: inputs, outputs, shapes, operator histogram, SHA-256.
    Inspect {
        /// The .onnx file, or a model directory with a model.toml; default: the shipped model.
        model: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Time the backbone: load-to-ready and median latency of forward passes (with --clip, a
    /// sound model's path stage by stage).
    Bench {
        /// Model directory (with model.toml); default: the shipped model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Preprocessed input as raw little-endian f32 (default: zeros).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Timed runs.
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// Untimed warm-up runs.
        #[arg(long, default_value_t = 10)]
        warmup: usize,
        /// Threads inside one forward pass.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Frames per forward pass: the model's batch dimension is set to this, the input is
        /// repeated, and the time per frame is reported beside the time per pass.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Layout of the depthwise convolutions: adaptd's channel-last rewrite (the daemon's
        /// layout), or tract's own choice for this CPU (to measure what the rewrite gains).
        #[arg(long, value_enum, default_value_t = DepthwiseLayout::Adaptd)]
        depthwise_layout: DepthwiseLayout,
        /// Load through the model cache in this directory (as the daemon does with its state
        /// directory): the first run writes it, later runs report the cached load time.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Time every node of the optimized plan instead: ms per pass by operator type and
        /// the slowest nodes (tract's side of scripts/profile_ort.py).
        #[arg(long)]
        profile: bool,
        /// Time a sound model's path on this WAV file instead, on one thread: the front-end
        /// alone, the backbone on the clip's first window, and end to end per clip (front-end,
        /// backbone per window, mean), with windows per clip and the real-time factor (the
        /// Rust side of scripts/bench_sound.py). Needs --model of a model with [audio].
        #[arg(long, value_name = "FILE.wav", conflicts_with_all = ["input", "profile", "batch"])]
        clip: Option<PathBuf>,
        /// Time a text model's path on the UTF-8 text in this file instead, on one thread: the
        /// tokenizer alone, the encoder on its ids, and end to end (the Rust side of
        /// scripts/bench_text.py). Needs --model of a model with [text].
        #[arg(long, value_name = "FILE.txt", conflicts_with_all = ["input", "profile", "batch", "clip"])]
        text: Option<PathBuf>,
        /// Time an image model's path on this photo instead, on one thread: decoding,
        /// preprocessing (crop, resize, normalise), the backbone, and end to end (the Rust side
        /// of scripts/bench_image.py).
        #[arg(long, value_name = "FILE.jpg", conflicts_with_all = ["input", "profile", "batch", "clip", "text"])]
        image: Option<PathBuf>,
        /// Print one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark the learners on a labeled dataset: accuracy, few-shot and prequential
    /// accuracy, costs, head size, learning curves.
    Eval(Box<EvalArgs>),
    /// Print this board's fleet public key (hex), creating the key in the state directory on
    /// first use: collect these to fill `[fleet] trusted_keys` on the other boards.
    FleetKey {
        /// Config file (for the state directory); default: as `run`.
        #[arg(long, env = "ADAPTD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the embedding of each input (image, sound clip or text, as the model takes).
    Embed(ImageArgs),
    /// Print the top-5 labels of each image through the model's logits.
    Classify(ImageArgs),
    /// Teach a running board a folder-per-class dataset (DIR/<label>/<files>) over its MQTT
    /// topics, resumably: files it already learned are skipped.
    Teach(teach::TeachArgs),
    /// Print what a running board publishes (predictions, learned, errors, results, status,
    /// drift), one line per message, until Ctrl-C.
    Watch(watch::WatchArgs),
}

/// Arguments shared by `embed` and `classify`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Model directory (with model.toml); default: the shipped model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// One JSON object per input on its own line, with the file name.
    #[arg(long)]
    pub json: bool,
    /// Input files: JPEG, PNG, WAV (a sound model), UTF-8 text (a text model: the whole file is
    /// one text), raw little-endian f32 or JSON tensors.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// Runs the parsed command line; the binary reports the error chain and sets the exit code.
pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { config } => run::run(config.as_deref()),
        Command::Config { default, config } => commands::config(default, config.as_deref()),
        Command::Inspect { model, json } => inspect(model.as_deref(), json),
        Command::Bench {
            model,
            input,
            runs,
            warmup,
            threads,
            batch,
            depthwise_layout,
            cache_dir,
            profile,
            clip,
            text,
            image,
            json,
        } => bench(BenchArgs {
            model: model.as_deref(),
            run: crate::model::latency::Options {
                input: input.as_deref(),
                runs,
                warmup,
                threads,
                batch,
                layout: depthwise_layout,
            },
            cache_dir: cache_dir.as_deref(),
            profile,
            clip: clip.as_deref(),
            text: text.as_deref(),
            image: image.as_deref(),
            json,
        }),
        Command::Eval(a) => eval(&a),
        Command::FleetKey { config } => fleet_key(config.as_deref()),
        Command::Embed(a) => embed(&a),
        Command::Classify(a) => classify(&a),
        Command::Teach(a) => teach::teach(&a),
        Command::Watch(a) => watch::watch(&a),
    }
}
