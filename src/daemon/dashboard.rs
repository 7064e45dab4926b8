//! What a dashboard sees of a running daemon: the last prediction (retained on `{root}/last`,
//! and per Frigate camera on `{root}/last/{camera}`), the last classified image, the prediction
//! a correction refers to, and Home Assistant's discovery configs kept in step with the head's
//! classes and the cameras seen — published on every connection and Home Assistant birth,
//! removed (empty retained config) when no longer wanted, the published set remembered in the
//! state directory so that a board reconfigured without discovery cleans up after itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::QoS;

use crate::config::HomeAssistantSettings;
use crate::daemon::outbox::Outbox;
use crate::daemon::reply::BackboneSummary;
use crate::homeassistant::{camera_last_topic, entities, slug, Board};
use crate::model::Modality;

/// How long a corrected last prediction waits after the classes changed: Home Assistant applies
/// a select's new options asynchronously, and a state that is not yet an option is an error
/// in its log (measured with scripts/ha-test: the state arriving right after the config lost).
const AFTER_NEW_OPTIONS: Duration = Duration::from_millis(1500);

/// The last prediction.
struct Last {
    id: String,
    doc: serde_json::Value,
    camera: Option<String>,
}

struct State {
    classes: Vec<String>,
    cameras: BTreeSet<String>,
    /// Discovery topic → config as published by this process.
    published: BTreeMap<String, Vec<u8>>,
    /// Discovery topics in the state directory's record (this process's and earlier ones').
    recorded: BTreeSet<String>,
    last: Option<Last>,
    /// When the classes last changed.
    classes_changed: Option<Instant>,
    /// The corrected last prediction waits for [`AFTER_NEW_OPTIONS`].
    last_pending: bool,
}

/// The dashboard side, shared by the driver, the workers and the learner.
pub struct Dashboard {
    outbox: Arc<Outbox>,
    settings: HomeAssistantSettings,
    /// Discovery on (the `auto` setting resolved against the broker in use).
    enabled: bool,
    device_id: String,
    model: String,
    modality: Modality,
    /// `homeassistant.json` in the state directory.
    record: PathBuf,
    state: Mutex<State>,
}

impl Dashboard {
    /// The dashboard of a board with `classes` learned so far.
    pub fn new(
        outbox: Arc<Outbox>,
        settings: &crate::config::Settings,
        enabled: bool,
        backbone: &BackboneSummary,
        classes: Vec<String>,
    ) -> Dashboard {
        let record = settings.state.dir.join(crate::state::files::HOMEASSISTANT);
        let (recorded, cameras) = read_record(&record);
        Dashboard {
            outbox,
            settings: settings.homeassistant.clone(),
            enabled,
            device_id: settings.device_id.clone(),
            model: backbone.name.clone(),
            modality: backbone.modality,
            record,
            state: Mutex::new(State {
                classes,
                cameras,
                published: BTreeMap::new(),
                recorded,
                last: None,
                classes_changed: None,
                last_pending: false,
            }),
        }
    }

    /// `homeassistant` in `{root}/info`: whether discovery is on, and where.
    pub fn info(&self) -> serde_json::Value {
        serde_json::json!({
            "enabled": self.enabled,
            "discovery_prefix": self.settings.discovery_prefix,
            "node": slug(&self.device_id),
            "entities": self.state().published.len(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Never held across I/O that can block: publishing only queues.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A prediction was published: it becomes the last one (retained), with its image when it
    /// came as JPEG/PNG bytes; a new Frigate camera gets its sensor.
    pub fn on_prediction(&self, id: &str, doc: &[u8], image: Option<&[u8]>, camera: Option<&str>) {
        let topics = &self.outbox.topics;
        self.outbox.publish_latest(&topics.last, doc.to_vec());
        if let Some(camera) = camera {
            self.outbox
                .publish_latest(&camera_last_topic(&topics.root, camera), doc.to_vec());
        }
        if let (true, true, Some(image)) = (self.enabled, self.settings.image, image) {
            self.outbox.publish_latest(&topics.image, image.to_vec());
        }
        let doc = serde_json::from_slice(doc).unwrap_or(serde_json::Value::Null);
        let mut st = self.state();
        st.last = Some(Last {
            id: id.to_string(),
            doc,
            camera: camera.map(str::to_string),
        });
        if let Some(camera) = camera {
            if !st.cameras.contains(camera) {
                st.cameras.insert(camera.to_string());
                self.sync(&mut st, false);
            }
        }
    }

    /// The id of the last prediction: what `{root}/correct` corrects.
    pub fn last_id(&self) -> Option<String> {
        self.state().last.as_ref().map(|l| l.id.clone())
    }

    /// A correction of prediction `id` to `label` was learned: when it is still the last one,
    /// the last prediction shows the corrected label (so the dashboard's select keeps it).
    pub fn corrected(&self, id: &str, label: &str) {
        let mut st = self.state();
        let Some(last) = st.last.as_mut().filter(|l| l.id == id) else {
            return;
        };
        if let Some(doc) = last.doc.as_object_mut() {
            doc.insert("label".into(), label.into());
            doc.insert("corrected".into(), true.into());
        }
        let fresh_options = self.enabled
            && st
                .classes_changed
                .is_some_and(|t| t.elapsed() < AFTER_NEW_OPTIONS);
        if fresh_options {
            st.last_pending = true;
        } else {
            self.publish_last(&st);
        }
    }

    /// Publishes a corrected last prediction that waited for the select's new options.
    pub fn tick(&self) {
        let mut st = self.state();
        let due = st
            .classes_changed
            .is_none_or(|t| t.elapsed() >= AFTER_NEW_OPTIONS);
        if st.last_pending && due {
            st.last_pending = false;
            self.publish_last(&st);
        }
    }

    fn publish_last(&self, st: &State) {
        let Some(last) = &st.last else {
            return;
        };
        let bytes = serde_json::to_vec(&last.doc).unwrap_or_default();
        let topics = &self.outbox.topics;
        self.outbox.publish_latest(&topics.last, bytes.clone());
        if let Some(camera) = &last.camera {
            self.outbox
                .publish_latest(&camera_last_topic(&topics.root, camera), bytes);
        }
    }

    /// The head's classes now (after every change): the correcting select follows them.
    pub fn set_classes(&self, classes: Vec<String>) {
        let mut st = self.state();
        if st.classes != classes {
            st.classes = classes;
            st.classes_changed = Some(Instant::now());
            self.sync(&mut st, false);
        }
    }

    /// The board was reset: the last prediction, its image and the cameras' sensors go.
    pub fn reset(&self) {
        let mut st = self.state();
        let topics = &self.outbox.topics;
        let retained = |topic: &str| {
            self.outbox
                .publish(topic, QoS::AtLeastOnce, true, Vec::new());
        };
        retained(&topics.last);
        retained(&topics.image);
        for camera in std::mem::take(&mut st.cameras) {
            retained(&camera_last_topic(&topics.root, &camera));
        }
        st.last = None;
        st.last_pending = false;
        self.sync(&mut st, false);
    }

    /// Publishes every wanted config again and removes unwanted ones: after each connection
    /// and when Home Assistant announces itself.
    pub fn announce(&self) {
        let mut st = self.state();
        self.sync(&mut st, true);
    }

    /// Publishes what changed (everything when `all`), removes what is no longer wanted, and
    /// records the published set when it changed.
    fn sync(&self, st: &mut State, all: bool) {
        let wanted: BTreeMap<String, Vec<u8>> = if self.enabled {
            let cameras: Vec<String> = st.cameras.iter().cloned().collect();
            let board = Board {
                root: &self.outbox.topics.root,
                device_id: &self.device_id,
                node_name: &self.settings.node_name,
                discovery_prefix: &self.settings.discovery_prefix,
                model: &self.model,
                modality: self.modality,
                image: self.settings.image,
                classes: &st.classes,
                cameras: &cameras,
            };
            let node = slug(&self.device_id);
            entities(&board)
                .into_iter()
                .map(|e| {
                    let bytes = serde_json::to_vec(&e.config).unwrap_or_default();
                    (e.topic(&self.settings.discovery_prefix, &node), bytes)
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let stale: Vec<String> = st
            .published
            .keys()
            .chain(&st.recorded)
            .filter(|t| !wanted.contains_key(*t))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut set_changed = false;
        // Removals not queued (offline) stay recorded, to be tried on the next connection.
        let mut unremoved = BTreeSet::new();
        for topic in stale {
            set_changed = true;
            if self
                .outbox
                .publish(&topic, QoS::AtLeastOnce, true, Vec::new())
            {
                st.published.remove(&topic);
            } else {
                unremoved.insert(topic);
            }
        }
        for (topic, bytes) in wanted {
            let changed = all || st.published.get(&topic) != Some(&bytes);
            if changed
                && self
                    .outbox
                    .publish(&topic, QoS::AtLeastOnce, true, bytes.clone())
            {
                set_changed |= st.published.insert(topic, bytes).is_none();
            }
        }
        if set_changed || all {
            st.recorded = st.published.keys().cloned().chain(unremoved).collect();
            if let Err(e) = write_record(&self.record, &st.recorded, &st.cameras) {
                tracing::warn!("cannot record the Home Assistant entities: {e}");
            }
        }
    }
}

/// `homeassistant.json`: the discovery topics published and the Frigate cameras seen.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Record {
    topics: BTreeSet<String>,
    cameras: BTreeSet<String>,
}

fn read_record(path: &std::path::Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let r: Record = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    (r.topics, r.cameras)
}

fn write_record(
    path: &std::path::Path,
    topics: &BTreeSet<String>,
    cameras: &BTreeSet<String>,
) -> std::io::Result<()> {
    let r = Record {
        topics: topics.clone(),
        cameras: cameras.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&r).map_err(std::io::Error::other)?;
    crate::state::files::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::outbox::Recorder;
    use crate::daemon::stats::Stats;
    use crate::daemon::topics::Topics;

    fn settings(dir: &std::path::Path) -> crate::config::Settings {
        let env = [("ADAPTD_STATE_DIR".to_string(), dir.display().to_string())];
        let mut s = crate::config::Settings::from_parts(
            Some("[device]\nid = \"cam1\"\n"),
            "test",
            env.into_iter(),
        )
        .expect("settings");
        s.homeassistant.image = true;
        s
    }

    fn backbone() -> BackboneSummary {
        BackboneSummary {
            name: "efficientnet-lite0".into(),
            sha256: "0".repeat(64),
            modality: Modality::Image,
            input: crate::daemon::reply::InputSummary {
                shape: vec![1, 224, 224, 3],
                layout: "nhwc".into(),
                mean: [0.0; 3],
                std: [1.0; 3],
            },
            audio: None,
            text: None,
            sensor: None,
            embedding_dim: 4,
        }
    }

    fn dashboard(
        dir: &std::path::Path,
        enabled: bool,
        classes: &[&str],
    ) -> (Dashboard, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let outbox = Arc::new(Outbox::new(
            Box::new(rec.clone()),
            Topics::new("adaptd/cam1"),
            Arc::new(Stats::default()),
        ));
        outbox.set_connected(true);
        let d = Dashboard::new(
            outbox,
            &settings(dir),
            enabled,
            &backbone(),
            classes.iter().map(|c| c.to_string()).collect(),
        );
        (d, rec)
    }

    /// (topic, empty?) of the retained discovery publishes, in order.
    fn configs(rec: &Recorder) -> Vec<(String, bool)> {
        rec.published
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _, retained)| *retained && t.starts_with("homeassistant/"))
            .map(|(t, p, _)| (t.clone(), p.is_empty()))
            .collect()
    }

    #[test]
    fn configs_follow_classes_and_cameras_and_go_when_discovery_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let (d, rec) = dashboard(dir.path(), true, &[]);
        d.announce();
        let first = configs(&rec);
        assert!(first.iter().all(|(_, empty)| !empty));
        let select = "homeassistant/select/cam1/correct/config";
        assert!(
            first.iter().all(|(t, _)| t != select),
            "no select without classes"
        );
        // The first class brings the select; only it is published.
        rec.published.lock().unwrap().clear();
        d.set_classes(vec!["cat".into()]);
        assert_eq!(configs(&rec), [(select.to_string(), false)]);
        // Unchanged classes publish nothing; a new camera publishes its sensor.
        rec.published.lock().unwrap().clear();
        d.set_classes(vec!["cat".into()]);
        assert!(configs(&rec).is_empty());
        d.on_prediction(
            "p1",
            br#"{"id":"p1","label":"cat"}"#,
            Some(b"\xFF\xD8\xFFjpeg"),
            Some("door"),
        );
        assert_eq!(
            configs(&rec),
            [(
                "homeassistant/sensor/cam1/prediction_door/config".to_string(),
                false
            )]
        );
        let json = rec.json_on("adaptd/cam1/last/door");
        assert_eq!(json[0]["label"], "cat");
        assert_eq!(d.last_id().as_deref(), Some("p1"));
        // A correction of the last prediction shows on the last prediction.
        d.corrected("p1", "dog");
        // The classes changed a moment ago: it waits for Home Assistant to take the options.
        assert_eq!(
            rec.json_on("adaptd/cam1/last").last().unwrap()["label"],
            "cat"
        );
        d.tick();
        assert_eq!(
            rec.json_on("adaptd/cam1/last").last().unwrap()["label"],
            "cat"
        );
        d.state().classes_changed = Some(Instant::now() - AFTER_NEW_OPTIONS);
        d.tick();
        let last = rec.json_on("adaptd/cam1/last");
        assert_eq!(last.last().unwrap()["label"], "dog");
        assert_eq!(last.last().unwrap()["corrected"], true);
        // Reset: the camera sensor goes, the last prediction is cleared.
        rec.published.lock().unwrap().clear();
        d.reset();
        assert!(configs(&rec).contains(&(
            "homeassistant/sensor/cam1/prediction_door/config".to_string(),
            true
        )));
        assert_eq!(d.last_id(), None);
        let published = d.state().published.len();
        drop(d);

        // Restarted with discovery off: every config published before is removed.
        let (off, rec) = dashboard(dir.path(), false, &["cat"]);
        off.announce();
        let removed = configs(&rec);
        assert_eq!(removed.len(), published);
        assert!(removed.iter().all(|(_, empty)| *empty));
        // And nothing is left to remove after that.
        rec.published.lock().unwrap().clear();
        off.announce();
        assert!(configs(&rec).is_empty());
    }
}
