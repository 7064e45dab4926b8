//! The `adaptd` binary: parse flags, set up logging, dispatch, report the error chain.

use clap::Parser;

use adaptd::cli::{self, Cli, Command};
use adaptd::config::{Settings, DEFAULT_TOML};

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ADAPTD_LOG")
                // rumqttd (the embedded broker) logs every connection at INFO and our own
                // readiness probe as an ERROR: silent unless asked for (ADAPTD_LOG=rumqttd=info).
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Cli::parse();
    let result = match &args.command {
        Command::Run { config } => run(config.as_deref()),
        Command::Config { default: true, .. } => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        Command::Config { config, .. } => Settings::load(config.as_deref())
            .map(|s| println!("{s:#?}"))
            .map_err(Into::into),
        Command::Inspect { model, json } => cli::inspect(model.as_deref(), *json),
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
            json,
        } => cli::bench(cli::BenchArgs {
            model: model.as_deref(),
            run: adaptd::model::latency::Options {
                input: input.as_deref(),
                runs: *runs,
                warmup: *warmup,
                threads: *threads,
                batch: *batch,
                layout: *depthwise_layout,
            },
            cache_dir: cache_dir.as_deref(),
            profile: *profile,
            json: *json,
        }),
        Command::Eval(a) => cli::eval(a),
        Command::FleetKey { config } => cli::fleet_key(config.as_deref()),
        Command::Embed(a) => cli::embed(a),
        Command::Classify(a) => cli::classify(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("adaptd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(adaptd::run(settings, shutdown_signal()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// glibc gives every thread that allocates its own malloc arena (up to 8 per core), and each
/// keeps the peak of what its thread once freed: with two inference workers decoding images
/// adaptd's RSS settled at 123 MiB instead of 87 MiB with two arenas (examples/loadgen.rs,
/// docs/performance.md). Set before any thread exists; `MALLOC_ARENA_MAX` still overrides.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator tuning; called while single-threaded.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
