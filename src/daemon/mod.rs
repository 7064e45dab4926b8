//! `adaptd run`: wires model, state, broker connection, workers, learner and adaptation thread
//! together; systemd readiness, status and watchdog; orderly shutdown through one token.
//!
//! An inference request: [`mqtt`] (driver) → [`intake`] (route, ack, queue) → [`workers`]
//! (decode, embed, adapt, predict) → [`outbox`] (publish). A learn message: [`mqtt`] →
//! [`intake`] → [`workers`] (decode, embed) → [`learner`] (in order: WAL fsync, ack, update) →
//! [`outbox`]. A live audio stream's chunk or a sensor's readings: [`intake`] → [`stream`]
//! (sliding window; readings parsed by [`readings`]) → every hop a window to [`workers`] →
//! published (audio: when what is heard changes).

pub(crate) mod adaptation;
pub(crate) mod broker;
pub(crate) mod dashboard;
pub mod error;
pub(crate) mod intake;
pub(crate) mod learner;
pub(crate) mod mqtt;
pub(crate) mod outbox;
pub(crate) mod queue;
pub(crate) mod readings;
pub(crate) mod reply;
pub mod request;
pub(crate) mod review;
pub(crate) mod serving;
pub(crate) mod shutdown;
pub(crate) mod stats;
pub(crate) mod stream;
pub mod topics;
pub(crate) mod workers;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, QoS};
use sd_notify::NotifyState;

use crate::adapt::handle::AdaptHandle;
use crate::adapt::Adapter;
use crate::config::Settings;
use crate::fleet::FleetState;
use crate::model::{Embedder, ModelDir};
use crate::state::recovery::{restore, Budgets};
use crate::state::store::Store;
use intake::Intake;
use learner::Learner;
use outbox::Outbox;
use queue::WorkQueue;
use reply::BackboneSummary;
use serving::PredictorSlot;
use shutdown::{Shutdown, TriggerOnDrop};
use stats::Stats;
use stream::Streams;
use topics::Topics;
use workers::Workers;

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
        let budgets = Budgets {
            samples: state.samples_max_bytes,
            ledger: state.unlearn_max_bytes,
        };
        let restored = restore(rec, &head_config, dim, &sha, budgets)?;
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

    let broker_in_use = broker::resolve(&settings.broker)?;
    let (host, port) = (broker_in_use.host.clone(), broker_in_use.port);
    let homeassistant = settings
        .homeassistant
        .enabled
        .unwrap_or(broker_in_use.kind != broker::BrokerKind::Embedded);
    let topics = Topics::new(&settings.root)
        .with_fleet(&settings.fleet, &settings.device_id)
        .with_homeassistant(
            homeassistant.then_some(settings.homeassistant.discovery_prefix.as_str()),
        );
    let options = mqtt::options(&settings.broker, &host, port, &topics.status)?;
    let (client, mut eventloop) = AsyncClient::new(options, settings.broker.request_queue);
    mqtt::tune(&mut eventloop);

    let stop = Shutdown::new();
    let _stop_on_return = TriggerOnDrop(stop.clone());
    let stats = Arc::new(Stats::default());
    let outbox = Arc::new(Outbox::new(
        Box::new(client.clone()),
        topics.clone(),
        stats.clone(),
    ));
    let predictor = Arc::new(PredictorSlot::new(restored.head.snapshot()));
    let queue = Arc::new(WorkQueue::new(settings.service.infer_queue, stop.clone()));

    let (adapt, adapt_rx) = AdaptHandle::new(settings.adapt.clone());
    let adapt = Arc::new(adapt);
    let (target, note) =
        adaptation::restore(&settings.state.dir, &settings.adapt, &info.sha256, dim);
    if let Some(n) = note {
        tracing::warn!("{n}");
    }
    let adapt_thread = {
        let ctx = adaptation::Context {
            handle: adapt.clone(),
            predictor: predictor.clone(),
            outbox: outbox.clone(),
            shutdown: stop.clone(),
        };
        let adapter = Adapter::with_target(settings.adapt.clone(), target);
        let (dir, sha) = (settings.state.dir.clone(), info.sha256.clone());
        std::thread::Builder::new()
            .name("adapt".into())
            .spawn(move || adaptation::run(ctx, adapt_rx, adapter, &dir, sha))
            .context("spawning the adaptation thread")?
    };

    let fleet = FleetState::load(&settings.fleet, &settings.state.dir)?;
    tracing::info!(
        public_key = %fleet.identity.public_hex(),
        group = %settings.fleet.group,
        "fleet identity"
    );
    let backbone = BackboneSummary::of(&embedder);
    let dashboard = Arc::new(dashboard::Dashboard::new(
        outbox.clone(),
        &settings,
        homeassistant,
        &backbone,
        restored
            .head
            .classes()
            .into_iter()
            .map(|c| c.name)
            .collect(),
    ));
    tracing::info!(
        enabled = homeassistant,
        prefix = %settings.homeassistant.discovery_prefix,
        "Home Assistant discovery"
    );
    // Generated ids continue above those of the samples kept for unlearning.
    let first_id = restored.ledger.highest_generated(&settings.device_id) + 1;
    let (learn_tx, learn_rx) = std::sync::mpsc::channel();
    let learner = Learner::new(
        learner::Context {
            settings: settings.clone(),
            backbone,
            broker: broker_in_use.clone(),
            outbox: outbox.clone(),
            predictor: predictor.clone(),
            adapt: adapt.clone(),
            queue: queue.clone(),
            stats: stats.clone(),
            dashboard: dashboard.clone(),
        },
        restored,
        store,
        fleet,
    );
    let heartbeat = learner.heartbeat.clone();
    let learner_thread = std::thread::Builder::new()
        .name("learner".into())
        .spawn(move || learner.run(learn_rx))
        .context("spawning the learner")?;

    let streams = Arc::new(Streams::new(&settings.sources, &embedder)?);
    let workers = Arc::new(
        Workers::new(
            embedder,
            queue.clone(),
            predictor,
            adapt,
            outbox.clone(),
            stats.clone(),
            &settings,
        )
        .with_streams(streams.clone())
        .with_dashboard(dashboard.clone())
        .with_first_id(first_id),
    );
    let mut worker_threads = Vec::new();
    for i in 0..settings.service.workers {
        let (w, tx) = (workers.clone(), learn_tx.clone());
        worker_threads.push(
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || w.run(tx))
                .context("spawning a worker")?,
        );
    }
    // The workers hold the learner's only senders: it ends once they all have.
    drop(learn_tx);

    let mut driver = tokio::spawn(mqtt::drive(
        eventloop,
        mqtt::Driver {
            client: client.clone(),
            intake: Intake {
                sources: settings.sources.clone(),
                queue,
                outbox: outbox.clone(),
                stats,
                streams,
                dashboard,
                shutdown: stop.clone(),
            },
            backoff: (settings.broker.reconnect_min, settings.broker.reconnect_max),
        },
    ));
    let workers_n = settings.service.workers;
    tracing::info!(root = %topics.root, broker = %format!("{host}:{port}"), broker_kind = ?broker_in_use.kind, workers = workers_n, "adaptd running");
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("serving {} on {host}:{port}", topics.root)),
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
                let status = if outbox.is_connected() {
                    "connected"
                } else {
                    "broker unreachable, retrying"
                };
                notify(&[NotifyState::Status(&format!("{} — {status}", topics.root))]);
            }
        }
    }

    tracing::info!("stopping: no new requests, draining");
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    // The intake stops taking messages, the workers finish what is queued, the adaptation
    // thread persists; the learner ends after the last worker, then snapshots and publishes.
    stop.trigger();
    tokio::task::spawn_blocking(move || {
        for w in worker_threads {
            let _ = w.join();
        }
        let _ = learner_thread.join();
        let _ = adapt_thread.join();
    })
    .await?;
    outbox.publish(&topics.status, QoS::AtLeastOnce, true, b"offline".to_vec());
    let _ = client.try_disconnect();
    if tokio::time::timeout(Duration::from_secs(5), &mut driver)
        .await
        .is_err()
    {
        tracing::warn!("broker did not take the disconnect within 5 s");
        // Not left polling with this client id after `run` returns.
        driver.abort();
    }
    tracing::info!("stopped");
    Ok(())
}
