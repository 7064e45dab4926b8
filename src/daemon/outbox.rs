//! Everything adaptd sends: publishing without ever blocking, acknowledgements, and the one place
//! where a refused request becomes an `{root}/error` reply.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
#[cfg(test)]
use std::sync::Mutex;

use rumqttc::{AsyncClient, Publish, QoS};
use serde::Serialize;

use crate::daemon::error::RequestError;
use crate::daemon::reply::ErrorReply;
use crate::daemon::stats::{bump, Stats};
use crate::daemon::topics::Topics;

/// Where outbound messages go: rumqttc's client in the daemon, a recorder in unit tests.
pub trait Transport: Send + Sync {
    /// Queues a publish without waiting; an error means it was not queued.
    fn try_publish(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), String>;
    /// Queues the acknowledgement of a QoS 1 message without waiting.
    fn try_ack(&self, publish: &Publish) -> Result<(), String>;
    /// Queues a subscription (QoS 1) or, with `on` false, its end, without waiting.
    fn try_subscribe(&self, topic: &str, on: bool) -> Result<(), String>;
}

impl Transport for AsyncClient {
    fn try_publish(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        AsyncClient::try_publish(self, topic, qos, retain, payload).map_err(|e| e.to_string())
    }

    fn try_ack(&self, publish: &Publish) -> Result<(), String> {
        AsyncClient::try_ack(self, publish).map_err(|e| e.to_string())
    }

    fn try_subscribe(&self, topic: &str, on: bool) -> Result<(), String> {
        if on {
            AsyncClient::try_subscribe(self, topic, QoS::AtLeastOnce)
        } else {
            AsyncClient::try_unsubscribe(self, topic)
        }
        .map_err(|e| e.to_string())
    }
}

/// The outbound side shared by the driver, the workers, the learner and the adaptation thread.
pub struct Outbox {
    transport: Box<dyn Transport>,
    /// adaptd's topics.
    pub topics: Topics,
    stats: Arc<Stats>,
    connected: AtomicBool,
}

impl Outbox {
    /// An outbox publishing through `transport`.
    pub fn new(transport: Box<dyn Transport>, topics: Topics, stats: Arc<Stats>) -> Outbox {
        Outbox {
            transport,
            topics,
            stats,
            connected: AtomicBool::new(false),
        }
    }

    /// Set by the driver as the broker connection comes and goes.
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// Whether the broker connection is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Publishes without ever blocking: when rumqttc's request queue is full (e.g. while
    /// offline) the message is dropped and counted. Returns whether it was queued.
    pub fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: Vec<u8>) -> bool {
        if !retain && !self.is_connected() {
            // Offline, a passing message (stats, a reply) would only wait in rumqttc's request
            // queue, go out stale after the reconnection, and fill the queue in a long outage
            // so that the reconnection's own subscribe could not get in. Retained state
            // (head, info, status, drift) still queues: it is published on change, and the
            // head and info stay dirty until a publish is taken.
            bump(&self.stats.publish_dropped);
            return false;
        }
        match self.transport.try_publish(topic, qos, retain, payload) {
            Ok(()) => true,
            Err(e) => {
                bump(&self.stats.publish_dropped);
                tracing::debug!(topic, error = %e, "publish dropped");
                false
            }
        }
    }

    /// Subscribes to `topic` (QoS 1) or, with `on` false, ends the subscription; false if the
    /// request queue did not take it (the caller retries).
    pub fn subscribe(&self, topic: &str, on: bool) -> bool {
        match self.transport.try_subscribe(topic, on) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(topic, on, error = %e, "subscription change not queued");
                false
            }
        }
    }

    /// Publishes the latest value of something that is replaced often (the last prediction,
    /// the last image): retained, QoS 0, and dropped while offline — queued, a camera's frames
    /// would fill the request queue with values the next one replaces.
    pub fn publish_latest(&self, topic: &str, payload: Vec<u8>) -> bool {
        if !self.is_connected() {
            bump(&self.stats.publish_dropped);
            return false;
        }
        self.publish(topic, QoS::AtMostOnce, true, payload)
    }

    /// Publishes a reply (JSON, QoS 0, not retained).
    pub fn reply<T: Serialize>(&self, topic: &str, doc: &T) -> bool {
        self.publish_json(topic, QoS::AtMostOnce, false, doc)
    }

    /// Publishes retained state (JSON, QoS 1).
    pub fn retain<T: Serialize>(&self, topic: &str, doc: &T) -> bool {
        self.publish_json(topic, QoS::AtLeastOnce, true, doc)
    }

    fn publish_json<T: Serialize>(&self, topic: &str, qos: QoS, retain: bool, doc: &T) -> bool {
        match serde_json::to_vec(doc) {
            Ok(bytes) => self.publish(topic, qos, retain, bytes),
            Err(e) => {
                tracing::error!(topic, "cannot encode JSON: {e}");
                false
            }
        }
    }

    /// Acknowledges a QoS 1 message. A failed ack (offline) is harmless: the broker redelivers
    /// with DUP set and the learner drops the duplicate.
    pub fn ack(&self, publish: &Publish) {
        if publish.qos != QoS::AtMostOnce {
            if let Err(e) = self.transport.try_ack(publish) {
                tracing::debug!(error = %e, "ack not sent");
            }
        }
    }

    /// The one place a refused request becomes an `{root}/error` reply.
    pub fn refuse(&self, topic: &str, id: Option<&str>, err: &RequestError) {
        bump(&self.stats.errors);
        tracing::info!(topic, id, code = err.code(), "request refused: {err}");
        let doc = ErrorReply {
            code: err.code(),
            message: err.to_string(),
            topic,
            id,
        };
        self.reply(&self.topics.error, &doc);
    }
}

/// A transport that records what it is given: for unit tests of the daemon's parts.
#[cfg(test)]
#[derive(Default)]
pub struct Recorder {
    /// (topic, payload, retained)
    pub published: Mutex<Vec<(String, Vec<u8>, bool)>>,
    /// Topics of acknowledged messages.
    pub acked: Mutex<Vec<String>>,
    /// (topic, subscribed: true, or unsubscribed)
    pub subscriptions: Mutex<Vec<(String, bool)>>,
}

#[cfg(test)]
impl Recorder {
    /// The JSON documents published on `topic`, oldest first.
    pub fn json_on(&self, topic: &str) -> Vec<serde_json::Value> {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(t, _, _)| t == topic)
            .filter_map(|(_, p, _)| serde_json::from_slice(p).ok())
            .collect()
    }

    /// How many messages were acknowledged.
    pub fn acks(&self) -> usize {
        self.acked.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
impl Transport for Arc<Recorder> {
    fn try_publish(
        &self,
        topic: &str,
        _qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((topic.to_string(), payload, retain));
        Ok(())
    }

    fn try_ack(&self, publish: &Publish) -> Result<(), String> {
        self.acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(publish.topic.clone());
        Ok(())
    }

    fn try_subscribe(&self, topic: &str, on: bool) -> Result<(), String> {
        self.subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((topic.to_string(), on));
        Ok(())
    }
}
