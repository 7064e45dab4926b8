//! adaptd's topics under one root, the subscriptions, and the route of an inbound topic.

use rumqttc::QoS;

use crate::config::SourceTopic;

/// adaptd's topics under one root.
#[derive(Debug, Clone)]
pub struct Topics {
    pub root: String,
    pub infer: String,
    pub learn: String,
    pub learn_prefix: String,
    pub feedback: String,
    pub cmd_prefix: String,
    pub prediction: String,
    pub learned: String,
    pub result: String,
    pub head: String,
    pub info: String,
    pub status: String,
    pub error: String,
    pub stats: String,
    pub drift: String,
    /// Predictions worth a label (`daemon/review.rs`).
    pub review: String,
    /// A class for the last prediction (feedback without its id: Home Assistant's select).
    pub correct: String,
    /// Any label, a new one too, for the last prediction (Home Assistant's text).
    pub teach: String,
    /// The last prediction (retained).
    pub last: String,
    /// The last classified image (retained), for Home Assistant.
    pub image: String,
    /// Fleet topics, when `[fleet] group` is set.
    pub fleet: Option<FleetTopics>,
    /// Home Assistant's status topic (`{discovery_prefix}/status`), when discovery is on.
    pub homeassistant_status: Option<String>,
}

/// The topics of one fleet group.
#[derive(Debug, Clone)]
pub struct FleetTopics {
    /// `{prefix}/{group}/heads/` (+ device id: a board's signed local head, retained).
    pub heads_prefix: String,
    /// This board's signed head topic.
    pub mine: String,
    /// `{prefix}/{group}/deltas/` (+ device id: a board's signed deltas, not retained).
    pub deltas_prefix: String,
    /// This board's delta topic.
    pub my_deltas: String,
    /// Whether deltas are on (`[fleet] deltas`): whole heads are then subscribed to only to
    /// catch up.
    pub deltas: bool,
    /// `{prefix}/{group}/cmd/`: group-wide commands (only `forget`).
    pub cmd_prefix: String,
}

impl FleetTopics {
    /// Every peer's head (`heads/+`).
    pub fn all_heads(&self) -> String {
        format!("{}+", self.heads_prefix)
    }

    /// `peer`'s head topic.
    pub fn head_of(&self, peer: &str) -> String {
        format!("{}{peer}", self.heads_prefix)
    }

    /// What a board subscribes to for its peers after connecting: every head, and with deltas
    /// on every delta.
    pub fn peer_filters(&self) -> Vec<String> {
        let mut filters = vec![self.all_heads()];
        if self.deltas {
            filters.push(format!("{}+", self.deltas_prefix));
        }
        filters
    }
}

impl Topics {
    /// The topics under `root`.
    pub fn new(root: &str) -> Topics {
        let t = |s: &str| format!("{root}/{s}");
        Topics {
            root: root.to_string(),
            infer: t("infer"),
            learn: t("learn"),
            learn_prefix: t("learn/"),
            feedback: t("feedback"),
            cmd_prefix: t("cmd/"),
            prediction: t("prediction"),
            learned: t("learned"),
            result: t("result"),
            head: t("head"),
            info: t("info"),
            status: t("status"),
            error: t("error"),
            stats: t("stats"),
            review: t("review"),
            drift: t("drift"),
            correct: t("correct"),
            teach: t("teach"),
            last: t("last"),
            image: t("image"),
            fleet: None,
            homeassistant_status: None,
        }
    }

    /// Listens for Home Assistant's birth message under `discovery_prefix`.
    pub fn with_homeassistant(mut self, discovery_prefix: Option<&str>) -> Topics {
        self.homeassistant_status = discovery_prefix.map(|p| format!("{p}/status"));
        self
    }

    /// Adds the fleet topics of `fleet` (if it names a group) for this device.
    pub fn with_fleet(mut self, fleet: &crate::fleet::FleetConfig, device_id: &str) -> Topics {
        if fleet.enabled() {
            let base = format!("{}/{}", fleet.topic_prefix, fleet.group);
            self.fleet = Some(FleetTopics {
                heads_prefix: format!("{base}/heads/"),
                mine: format!("{base}/heads/{device_id}"),
                deltas_prefix: format!("{base}/deltas/"),
                my_deltas: format!("{base}/deltas/{device_id}"),
                deltas: fleet.deltas,
                cmd_prefix: format!("{base}/cmd/"),
            });
        }
        self
    }

    /// Subscriptions: adaptd's input topics and the configured sources.
    pub fn subscriptions(&self, sources: &[SourceTopic]) -> Vec<(String, QoS)> {
        let mut subs = vec![
            (self.infer.clone(), QoS::AtLeastOnce),
            (self.learn.clone(), QoS::AtLeastOnce),
            (format!("{}+", self.learn_prefix), QoS::AtLeastOnce),
            (self.feedback.clone(), QoS::AtLeastOnce),
            (self.correct.clone(), QoS::AtLeastOnce),
            (self.teach.clone(), QoS::AtLeastOnce),
            (format!("{}+", self.cmd_prefix), QoS::AtLeastOnce),
        ];
        if let Some(t) = &self.homeassistant_status {
            subs.push((t.clone(), QoS::AtLeastOnce));
        }
        if let Some(f) = &self.fleet {
            subs.extend(f.peer_filters().into_iter().map(|t| (t, QoS::AtLeastOnce)));
            subs.push((format!("{}forget", f.cmd_prefix), QoS::AtLeastOnce));
        }
        for s in sources {
            let qos = if s.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            subs.push((s.topic.clone(), qos));
        }
        subs
    }

    /// What a message on `topic` asks for.
    pub fn route(&self, topic: &str, sources: &[SourceTopic]) -> Route {
        if topic == self.infer {
            return Route::Infer;
        }
        if topic == self.learn {
            return Route::Learn(None);
        }
        if let Some(label) = topic.strip_prefix(&self.learn_prefix) {
            return Route::Learn(Some(label.to_string()));
        }
        if topic == self.feedback {
            return Route::Feedback;
        }
        if topic == self.correct {
            return Route::Correct { new_class: false };
        }
        if topic == self.teach {
            return Route::Correct { new_class: true };
        }
        if self.homeassistant_status.as_deref() == Some(topic) {
            return Route::HomeAssistantStatus;
        }
        if let Some(cmd) = topic.strip_prefix(&self.cmd_prefix) {
            return Route::Command(cmd.to_string());
        }
        if let Some(f) = &self.fleet {
            if topic == f.mine || topic == f.my_deltas {
                return Route::Ignore;
            }
            if let Some(peer) = topic.strip_prefix(&f.heads_prefix) {
                return Route::Peer(peer.to_string());
            }
            if let Some(peer) = topic.strip_prefix(&f.deltas_prefix) {
                return Route::PeerDelta(peer.to_string());
            }
            if topic.strip_prefix(&f.cmd_prefix) == Some("forget") {
                return Route::Command("forget".into());
            }
        }
        match sources
            .iter()
            .position(|s| rumqttc::matches(topic, &s.topic))
        {
            Some(i) if sources[i].stream.is_some() || sources[i].readings.is_some() => {
                Route::Stream(i)
            }
            Some(i) => match &sources[i].frigate {
                // A camera or object this source does not take.
                Some(f) if f.origin(topic).is_none() => Route::Ignore,
                _ => Route::Infer,
            },
            None => Route::Ignore,
        }
    }
}

/// Where an inbound message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Infer,
    /// Learn, with the label from the topic when there is one.
    Learn(Option<String>),
    Feedback,
    /// A label for the last prediction: on `correct` one of the classes, on `teach` any.
    Correct {
        new_class: bool,
    },
    /// Home Assistant's status (`online` when it starts: discovery is published again).
    HomeAssistantStatus,
    Command(String),
    /// A fleet peer's signed head, with the peer's device id.
    Peer(String),
    /// A fleet peer's signed delta, with the peer's device id.
    PeerDelta(String),
    /// A chunk of a live audio stream or a sensor's readings, for `sources[i]`
    /// (`kind = "stream"` or `"readings"`).
    Stream(usize),
    Ignore,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let t = Topics::new("adaptd/cam");
        let src = vec![
            SourceTopic {
                topic: "frigate/+/snapshot".into(),
                qos: 0,
                stream: None,
                frigate: None,
                text_field: None,
                readings: None,
            },
            SourceTopic {
                topic: "fr/+/+/snapshot".into(),
                qos: 0,
                stream: None,
                text_field: None,
                readings: None,
                frigate: Some(crate::config::FrigateSource {
                    prefix: "fr".into(),
                    cameras: vec!["door".into()],
                    objects: vec![],
                }),
            },
            SourceTopic {
                topic: "hermes/audioServer/+/audioFrame".into(),
                qos: 0,
                stream: Some(crate::config::StreamSource {
                    window_seconds: None,
                    hop_seconds: 0.5,
                    threshold: 0.5,
                }),
                frigate: None,
                text_field: None,
                readings: None,
            },
        ];
        assert_eq!(t.route("fr/door/cat/snapshot", &src), Route::Infer);
        assert_eq!(t.route("fr/yard/cat/snapshot", &src), Route::Ignore);
        assert_eq!(
            t.route("adaptd/cam/correct", &src),
            Route::Correct { new_class: false }
        );
        assert_eq!(
            t.route("adaptd/cam/teach", &src),
            Route::Correct { new_class: true }
        );
        assert_eq!(t.route("homeassistant/status", &src), Route::Ignore);
        let ha = Topics::new("adaptd/cam").with_homeassistant(Some("homeassistant"));
        assert_eq!(
            ha.route("homeassistant/status", &src),
            Route::HomeAssistantStatus
        );
        assert!(ha
            .subscriptions(&src)
            .iter()
            .any(|(t, _)| t == "homeassistant/status"));
        assert_eq!(
            t.route("hermes/audioServer/kitchen/audioFrame", &src),
            Route::Stream(2)
        );
        assert_eq!(t.route("adaptd/cam/infer", &src), Route::Infer);
        assert_eq!(t.route("frigate/door/snapshot", &src), Route::Infer);
        assert_eq!(
            t.route("adaptd/cam/learn/cat", &src),
            Route::Learn(Some("cat".into()))
        );
        assert_eq!(t.route("adaptd/cam/learn", &src), Route::Learn(None));
        assert_eq!(t.route("adaptd/cam/feedback", &src), Route::Feedback);
        assert_eq!(
            t.route("adaptd/cam/cmd/forget", &src),
            Route::Command("forget".into())
        );
        assert_eq!(t.route("adaptd/cam/prediction", &src), Route::Ignore);
    }
}
