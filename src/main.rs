//! The `adaptd` binary: allocator tuning, logging, parse the flags, [`adaptd::cli::dispatch`],
//! report the error chain and set the exit code.

use clap::Parser;

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
    match adaptd::cli::dispatch(adaptd::cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("adaptd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc gives every thread that allocates its own malloc arena (up to 8 per core), and each
/// keeps the peak of what its thread once freed, so with inference workers decoding images the
/// resident memory grows with the number of threads; two arenas keep it lower and flat under
/// load (the figures, from examples/loadgen.rs: docs/performance.md, "End to end through
/// mosquitto" and "Memory"). Set before any thread exists; `MALLOC_ARENA_MAX` still overrides.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator tuning; called while single-threaded.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
