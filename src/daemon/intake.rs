//! Where an inbound message enters the daemon: routed by topic, acknowledged at once when it is
//! not durable work (inference, ignored topics), and queued for the workers. Runs on the MQTT
//! driver's task, so it never blocks.

use std::sync::Arc;
use std::time::Instant;

use rumqttc::Publish;

use crate::config::SourceTopic;
use crate::daemon::dashboard::Dashboard;
use crate::daemon::error::RequestError;
use crate::daemon::outbox::Outbox;
use crate::daemon::queue::{Job, Refused, WorkQueue};
use crate::daemon::shutdown::Shutdown;
use crate::daemon::stats::{bump, Stats};
use crate::daemon::stream::Streams;
use crate::daemon::topics::Route;

/// The intake.
pub struct Intake {
    pub sources: Vec<SourceTopic>,
    pub queue: Arc<WorkQueue>,
    pub outbox: Arc<Outbox>,
    pub stats: Arc<Stats>,
    pub streams: Arc<Streams>,
    /// Home Assistant's discovery, announced again when it says it is online.
    pub dashboard: Arc<Dashboard>,
    pub shutdown: Shutdown,
}

impl Intake {
    /// Takes one inbound message.
    pub fn accept(&self, publish: Publish) {
        if self.shutdown.is_triggered() {
            // Not acknowledged: a QoS 1 message is redelivered after the restart.
            return;
        }
        let route = self.outbox.topics.route(&publish.topic, &self.sources);
        if matches!(
            route,
            Route::Ignore | Route::Infer | Route::Stream(_) | Route::HomeAssistantStatus
        ) {
            // Not durable work: acknowledged on receipt.
            self.outbox.ack(&publish);
        }
        if route == Route::Ignore {
            return;
        }
        if route == Route::HomeAssistantStatus {
            // Home Assistant (re)started: it forgot nothing retained, but a broker without
            // persistence may have; and states are retained, so they follow the configs.
            if publish.payload.trim_ascii() == b"online" {
                tracing::info!("Home Assistant is online: publishing discovery");
                self.dashboard.announce();
            }
            return;
        }
        if let Route::Stream(source) = route {
            return self.stream_chunk(source, publish);
        }
        let job = Job {
            publish,
            route,
            received: Instant::now(),
            window: None,
        };
        if job.route == Route::Infer {
            bump(&self.stats.infer_received);
            if let Ok(Some(_)) = self.queue.push_infer(job) {
                bump(&self.stats.infer_dropped);
            }
            return;
        }
        match self.queue.push_learner(job) {
            Ok(_) | Err((Refused::Closed, _)) => {}
            Err((Refused::Busy, j)) => {
                self.outbox
                    .refuse(&j.publish.topic, None, &RequestError::Busy)
            }
        }
    }

    /// A live stream's chunk: into its window; every hop a window goes to the inference lane
    /// (dropped like any inference request when the workers are behind).
    fn stream_chunk(&self, source: usize, publish: Publish) {
        match self.streams.push(source, &publish.topic, &publish.payload) {
            Ok(None) => {}
            Ok(Some(window)) => {
                bump(&self.stats.infer_received);
                let job = Job {
                    publish,
                    route: Route::Stream(source),
                    received: Instant::now(),
                    window: Some(Box::new(window)),
                };
                if let Ok(Some(_)) = self.queue.push_infer(job) {
                    bump(&self.stats.infer_dropped);
                }
            }
            Err(e) if e.report => self.outbox.refuse(&publish.topic, None, &e.error),
            Err(_) => {}
        }
    }
}
