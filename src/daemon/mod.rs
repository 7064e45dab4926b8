//! `adaptd run`: wires model, state, broker connection, workers and learner together; systemd
//! readiness, status and watchdog; orderly shutdown.

pub mod adaptation;
pub mod broker;
pub mod error;
pub mod learner;
pub mod mqtt;
pub mod service;
pub mod stats;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, QoS};
use sd_notify::NotifyState;

use crate::adapt::handle::{self as adapt_handle, AdaptHandle};
use crate::adapt::Adapter;
use crate::config::{BrokerTarget, Settings};
use crate::fleet::FleetState;
use crate::model::Embedder;
use crate::model::ModelDir;
use crate::state::store::Store;
use learner::{restore, Learner, LearnerMsg};
use service::{infer_worker, Shared};

fn notify(states: &[NotifyState<'_>]) {
    // Outside systemd NOTIFY_SOCKET is unset and this does nothing.
    let _ = sd_notify::notify(false, states);
}

/// Runs the daemon until `shutdown` resolves, then stops in order: stop intake, drain, snapshot,
/// publish `offline`, disconnect.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // rumqttc is built without a crypto provider of its own: use ring, the one we compile.
    let _ = rustls::crypto::ring::default_provider().install_default();
    notify(&[NotifyState::Status("loading model")]);
    let model_dir = settings.model_dir.clone();
    let cache_dir = settings.model_cache.then(|| settings.state.dir.clone());
    let embedder = tokio::task::spawn_blocking(move || -> anyhow::Result<Embedder> {
        let model = ModelDir::find(model_dir.as_deref())?;
        Ok(Embedder::load_cached(model, false, cache_dir.as_deref())?)
    })
    .await??;
    let embedder = Arc::new(embedder);
    let info = embedder.backbone.info().clone();
    tracing::info!(
        model = %info.name,
        sha256 = %info.sha256,
        dim = info.embedding_dim,
        load_ms = format!("{:.0}", info.load_ms),
        cached = info.cached,
        depthwise_channel_last = format!(
            "{}/{}",
            info.channel_last_depthwise[0], info.channel_last_depthwise[1]
        ),
        "backbone ready"
    );

    notify(&[NotifyState::Status("loading state")]);
    let state = settings.state.clone();
    let head_config = settings.head.clone();
    let (sha, dim) = (info.sha256.clone(), info.embedding_dim);
    let (store, restored) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let (store, rec) = Store::open(&state.dir, state.keep_heads)
            .with_context(|| format!("opening state directory {}", state.dir.display()))?;
        let restored = restore(rec, &head_config, dim, &sha, state.samples_max_bytes)?;
        Ok((store, restored))
    })
    .await??;
    for note in &restored.notes {
        tracing::warn!("state recovery: {note}");
    }
    tracing::info!(
        dir = %settings.state.dir.display(),
        algorithm = %restored.head.algorithm(),
        version = restored.head.version(),
        samples = restored.head.samples(),
        classes = restored.head.classes().len(),
        "state loaded"
    );

    let (host, port) = match &settings.broker.target {
        BrokerTarget::Embedded { port } => {
            let p = broker::start(*port, settings.broker.max_packet_bytes)?;
            ("127.0.0.1".to_string(), p)
        }
        BrokerTarget::External { host, port, .. } => (host.clone(), *port),
    };
    let topics = service::Topics::new(&settings.root);
    let options = mqtt::options(&settings.broker, &host, port, &topics.status)?;
    let (client, mut eventloop) = AsyncClient::new(options, settings.broker.request_queue);
    mqtt::tune(&mut eventloop);
    let predictor = restored.head.snapshot();
    let (adapt, adapt_rx) = AdaptHandle::new(settings.adapt.clone());
    let (sha, dim) = (info.sha256.clone(), info.embedding_dim);
    let (target, note) = adapt_handle::restore(&settings.state.dir, &settings.adapt, &sha, dim);
    if let Some(n) = note {
        tracing::warn!("{n}");
    }
    let adapter = Adapter::with_target(settings.adapt.clone(), target);
    let adapt_dir = settings.state.dir.clone();
    let backoff = (settings.broker.reconnect_min, settings.broker.reconnect_max);
    let workers = settings.service.workers;
    let shared = Arc::new(Shared::new(
        settings,
        client.clone(),
        embedder,
        predictor,
        adapt,
    ));
    let adapt_thread = {
        let s = shared.clone();
        let sha = sha.clone();
        std::thread::Builder::new()
            .name("adapt".into())
            .spawn(move || adaptation::run(s, adapt_rx, adapter, &adapt_dir, sha))
            .context("spawning the adaptation thread")?
    };

    let (learn_tx, learn_rx) = std::sync::mpsc::channel();
    let fleet = FleetState::load(&shared.settings.fleet, &shared.settings.state.dir)?;
    tracing::info!(
        public_key = %fleet.identity.public_hex(),
        group = %shared.settings.fleet.group,
        "fleet identity"
    );
    let learner = Learner::new(shared.clone(), restored, store, fleet);
    let heartbeat = learner.heartbeat.clone();
    let learner_thread = std::thread::Builder::new()
        .name("learner".into())
        .spawn(move || learner.run(learn_rx))
        .context("spawning the learner")?;
    let mut worker_threads = Vec::new();
    for i in 0..workers {
        let s = shared.clone();
        worker_threads.push(
            std::thread::Builder::new()
                .name(format!("infer-{i}"))
                .spawn(move || infer_worker(s))
                .context("spawning an inference worker")?,
        );
    }
    let driver = tokio::spawn(mqtt::drive(
        eventloop,
        shared.clone(),
        learn_tx.clone(),
        backoff,
    ));
    tracing::info!(root = %shared.topics.root, broker = %format!("{host}:{port}"), workers, "adaptd running");
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("serving {} on {host}:{port}", shared.topics.root)),
    ]);

    // The watchdog is fed from here, and only while the learner loop makes progress.
    let mut usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut usec);
    let tick = if watchdog {
        Duration::from_micros(usec / 2)
    } else {
        Duration::from_secs(5)
    };
    let mut interval = tokio::time::interval(tick);
    interval.tick().await; // the first tick is immediate
    let mut last_beat = heartbeat.load(Ordering::Relaxed);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = interval.tick() => {
                if learner_thread.is_finished() {
                    anyhow::bail!("the learner thread stopped unexpectedly");
                }
                let beat = heartbeat.load(Ordering::Relaxed);
                if beat != last_beat {
                    last_beat = beat;
                    if watchdog {
                        notify(&[NotifyState::Watchdog]);
                    }
                } else {
                    tracing::warn!("learner made no progress for {tick:?}");
                }
                let status = if shared.connected.load(Ordering::Relaxed) {
                    "connected"
                } else {
                    "broker unreachable, retrying"
                };
                notify(&[NotifyState::Status(&format!("{} — {status}", shared.topics.root))]);
            }
        }
    }

    tracing::info!("stopping: no new requests, draining");
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    shared.stopping.store(true, Ordering::Relaxed);
    shared.infer_queue.close();
    let _ = learn_tx.send(LearnerMsg::Stop);
    shared.adapt.stop();
    tokio::task::spawn_blocking(move || {
        for w in worker_threads {
            let _ = w.join();
        }
        let _ = learner_thread.join();
        let _ = adapt_thread.join();
    })
    .await?;
    shared.publish(
        &shared.topics.status,
        QoS::AtLeastOnce,
        true,
        b"offline".to_vec(),
    );
    let _ = client.try_disconnect();
    if tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .is_err()
    {
        tracing::warn!("broker did not take the disconnect within 5 s");
    }
    tracing::info!("stopped");
    Ok(())
}
