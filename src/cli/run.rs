//! `adaptd run`: the daemon on its own tokio runtime until SIGTERM or SIGINT.

use std::path::Path;

use crate::config::Settings;

/// Loads the settings (`config`, else the systemd or shipped defaults, then the environment) and
/// runs the daemon until SIGTERM or SIGINT.
pub fn run(config: Option<&Path>) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(crate::run(settings, shutdown_signal()))
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
