//! The MQTT side: client options (TLS, credentials, last will, persistent session) and the
//! event-loop driver, which only polls, keeps the subscriptions, and hands every inbound
//! message to the intake.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};

use crate::config::{BrokerSettings, BrokerTarget};
use crate::daemon::intake::Intake;
use crate::daemon::outbox::Outbox;
use crate::daemon::shutdown::Shutdown;
use crate::daemon::stats::{bump, Stats};

/// Builds the client options for `broker` with adaptd's last will on `status_topic`.
pub fn options(
    broker: &BrokerSettings,
    host: &str,
    port: u16,
    status_topic: &str,
) -> anyhow::Result<MqttOptions> {
    let mut o = MqttOptions::new(&broker.client_id, host, port);
    o.set_keep_alive(broker.keepalive);
    // A persistent session: the broker keeps QoS 1 messages we have not acknowledged.
    o.set_clean_session(false);
    o.set_manual_acks(true);
    o.set_inflight(broker.inflight);
    o.set_max_packet_size(broker.max_packet_bytes, broker.max_packet_bytes);
    // Requests rumqttc buffers between us and its event loop. Publishing never waits on it: a
    // full buffer drops and counts the message (rumqtt#910).
    o.set_request_channel_capacity(broker.request_queue);
    o.set_last_will(LastWill::new(
        status_topic,
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(user) = &broker.username {
        o.set_credentials(user, broker.password.clone().unwrap_or_default());
    }
    if let BrokerTarget::External { tls: Some(tls), .. } = &broker.target {
        let ca = std::fs::read(&tls.ca_file)
            .with_context(|| format!("reading CA file {}", tls.ca_file.display()))?;
        let client_auth = match &tls.client_auth {
            Some((cert, key)) => Some((
                std::fs::read(cert)
                    .with_context(|| format!("reading client certificate {}", cert.display()))?,
                std::fs::read(key)
                    .with_context(|| format!("reading client key {}", key.display()))?,
            )),
            None => None,
        };
        o.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(o)
}

/// Exponential backoff with jitter.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `min`, doubles up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    /// The next delay: the current step with ±50% jitter; then the step doubles.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter = rand::thread_rng().gen_range(0.5..1.5);
        base.mul_f64(jitter).min(self.max)
    }

    /// Back to the first step (after a successful connection).
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

/// Socket options: TCP_NODELAY, so a small reply (a prediction) is not held back by Nagle's
/// algorithm waiting for the delayed ACK of the previous one, which stalls every reply when
/// two requests are in flight (docs/performance.md).
pub fn tune(eventloop: &mut EventLoop) {
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
}

/// The driver's view of the daemon.
pub struct Driver {
    pub client: AsyncClient,
    /// Where inbound messages go; its outbox, counters, shutdown token and sources are the
    /// driver's too.
    pub intake: Intake,
    /// Reconnection backoff bounds.
    pub backoff: (Duration, Duration),
}

/// What must reach the broker after each (re)connection. rumqttc's request queue can be full
/// at that moment (acks and retained state queued before the outage was noticed), so what the
/// queue does not take at once is retried every 100 ms by a task of its own (never by
/// cancelling `EventLoop::poll`, which is not cancel-safe) until it is taken or the connection
/// is gone: a lost subscription would leave the board connected but deaf.
#[derive(Default, Clone)]
struct AfterConnect {
    subscribe: bool,
    resubscribe_fleet: bool,
    online: bool,
}

/// What [`AfterConnect`] needs, shareable with its retry task.
#[derive(Clone)]
struct Link {
    client: AsyncClient,
    outbox: Arc<Outbox>,
    stats: Arc<Stats>,
    shutdown: Shutdown,
    subscriptions: Vec<(String, QoS)>,
}

impl AfterConnect {
    fn pending(&self) -> bool {
        self.subscribe || self.resubscribe_fleet || self.online
    }

    /// Tries what is still pending, in order (subscriptions before `online`).
    fn flush(&mut self, link: &Link) {
        if self.subscribe {
            let filters = link
                .subscriptions
                .iter()
                .map(|(t, q)| rumqttc::SubscribeFilter::new(t.clone(), *q));
            if let Err(e) = link.client.try_subscribe_many(filters) {
                tracing::debug!("subscribe not queued yet ({e}); retrying");
                return;
            }
            self.subscribe = false;
        }
        if self.resubscribe_fleet {
            if let Some(f) = &link.outbox.topics.fleet {
                // The deltas too: a session stored by a version without them lacks them.
                let filters = f
                    .peer_filters()
                    .into_iter()
                    .map(|t| rumqttc::SubscribeFilter::new(t, QoS::AtLeastOnce));
                if let Err(e) = link.client.try_subscribe_many(filters) {
                    tracing::debug!("fleet subscribe not queued yet ({e}); retrying");
                    return;
                }
            }
            self.resubscribe_fleet = false;
        }
        if self.online {
            let status = &link.outbox.topics.status;
            if link.shutdown.is_triggered()
                || link
                    .outbox
                    .publish(status, QoS::AtLeastOnce, true, b"online".to_vec())
            {
                self.online = false;
            }
        }
    }

    /// Flushes now, and keeps retrying in a task while something is left and connection
    /// number `generation` is still up.
    fn run(mut self, link: &Link, generation: u64) {
        self.flush(link);
        if !self.pending() {
            return;
        }
        tracing::warn!("request queue full after connecting; retrying the subscription");
        let link = link.clone();
        tokio::spawn(async move {
            let current = |l: &Link| {
                l.outbox.is_connected() && l.stats.connects.load(Ordering::Relaxed) == generation
            };
            while self.pending() && current(&link) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.flush(&link);
            }
            if !self.pending() {
                tracing::info!("subscribed and online after waiting for the request queue");
            }
        });
    }
}

/// How often the MQTT loop looks again at a learner backlog over its bytes bound.
const BACKLOG_WAIT: Duration = Duration::from_millis(20);

/// With fleet deltas on, the peers' whole heads are subscribed to after each connection until
/// none has come for this long (the broker sends every retained one at once); from then on
/// peers' changes come as deltas, and a whole head only when one is fetched.
const SYNC_QUIET: Duration = Duration::from_secs(5);

/// When the last retained peer head came in (or the connection came up, or the learner
/// backlog held reading back), for ending the sync.
#[derive(Clone)]
struct SyncClock {
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl SyncClock {
    fn new() -> SyncClock {
        SyncClock {
            epoch: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Ends the subscription to every peer's head once the sync of connection `generation`
    /// has been quiet for [`SYNC_QUIET`]; gives up when that connection is gone (the next one
    /// syncs again).
    fn end_sync(self, link: Link, generation: u64) {
        let Some(filter) = link
            .outbox
            .topics
            .fleet
            .as_ref()
            .filter(|f| f.deltas)
            .map(|f| f.all_heads())
        else {
            return;
        };
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let current = link.outbox.is_connected()
                    && link.stats.connects.load(Ordering::Relaxed) == generation;
                if !current || link.shutdown.is_triggered() {
                    return;
                }
                if self.quiet_for() >= SYNC_QUIET {
                    match link.client.try_unsubscribe(filter.clone()) {
                        Ok(()) => {
                            tracing::info!("fleet synced: peers' changes come as deltas now");
                            return;
                        }
                        Err(e) => tracing::debug!("fleet unsubscribe not queued yet ({e})"),
                    }
                }
            }
        });
    }
}

/// Polls the event loop until `client.disconnect()` has gone out (or the connection is lost
/// while stopping). Hands inbound messages to the intake; never does heavy work itself.
pub async fn drive(mut eventloop: EventLoop, driver: Driver) {
    let Driver {
        client,
        intake,
        backoff,
    } = driver;
    let (outbox, stats, shutdown) = (&intake.outbox, &intake.stats, &intake.shutdown);
    let link = Link {
        client,
        outbox: outbox.clone(),
        stats: stats.clone(),
        shutdown: shutdown.clone(),
        subscriptions: outbox.topics.subscriptions(&intake.sources),
    };
    let has_fleet = outbox.topics.fleet.is_some();
    let heads_prefix = outbox.topics.fleet.as_ref().map(|f| f.heads_prefix.clone());
    let sync = SyncClock::new();
    let mut backoff = Backoff::new(backoff.0, backoff.1);
    loop {
        // Backpressure: while the learner's backlog is large (a fleet's retained heads after a
        // restart, megabytes each), read nothing more from the broker; TCP holds the rest.
        while intake.queue.learner_full() && !shutdown.is_triggered() {
            sync.touch();
            tokio::time::sleep(BACKLOG_WAIT).await;
        }
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                bump(&stats.connects);
                outbox.set_connected(true);
                backoff.reset();
                tracing::info!(session_present = ack.session_present, "connected to broker");
                let after = AfterConnect {
                    // Without a stored session the broker forgot our subscriptions (rumqtt#250).
                    subscribe: !ack.session_present,
                    // A stored session does not replay retained messages, and a restarted
                    // process has no peer heads: subscribing again makes the broker send every
                    // peer's retained head (unchanged ones are no-ops).
                    resubscribe_fleet: ack.session_present && has_fleet,
                    online: true,
                };
                let generation = stats.connects.load(Ordering::Relaxed);
                after.run(&link, generation);
                if has_fleet {
                    sync.touch();
                    sync.clone().end_sync(link.clone(), generation);
                }
                // Discovery configs (or their removal) on every connection: the broker may
                // have lost retained messages while we were away.
                intake.dashboard.announce();
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.retain
                    && heads_prefix
                        .as_deref()
                        .is_some_and(|h| p.topic.starts_with(h))
                {
                    sync.touch();
                }
                intake.accept(p)
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                outbox.set_connected(false);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                outbox.set_connected(false);
                bump(&stats.connection_errors);
                if shutdown.is_triggered() {
                    tracing::info!("connection closed while stopping: {e}");
                    return;
                }
                let delay = backoff.next_delay();
                tracing::warn!("broker connection: {e}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(150));
        assert!(d[7] <= Duration::from_secs(2));
        assert!(d[5] >= Duration::from_secs(1), "{d:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(150));
    }
}
