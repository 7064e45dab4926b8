//! Home Assistant MQTT discovery: which entities adaptd shows on a dashboard and the retained
//! config documents that announce them, on per-component topics
//! (`{prefix}/{component}/{node}/{object}/config`). Pure: built from a [`Board`] description;
//! `daemon::dashboard` publishes them and keeps them in step with the head.
//!
//! Per-component topics, not device-based discovery (`{prefix}/device/…`, Home Assistant
//! 2024.11+): they work with every release since 2023.8 (the `origin` key), device-based ones
//! with none before 2024.11 (docs/homeassistant.md).

use serde_json::{json, Value};

use crate::model::Modality;

/// The learners a dashboard can choose.
const LEARNERS: [&str; 5] = ["auto", "ncm", "slda", "ridge", "sgd"];

/// What the entities are built from.
#[derive(Debug, Clone)]
pub struct Board<'a> {
    /// adaptd's topic root.
    pub root: &'a str,
    pub device_id: &'a str,
    /// The device's name on the dashboard.
    pub node_name: &'a str,
    pub discovery_prefix: &'a str,
    /// The backbone's name (the device's model).
    pub model: &'a str,
    pub modality: Modality,
    /// Publish the image entity (image models, `homeassistant.image`).
    pub image: bool,
    /// The head's classes, in order: the correcting select's options.
    pub classes: &'a [String],
    /// Frigate cameras seen: one prediction sensor each.
    pub cameras: &'a [String],
}

/// One entity: its component (`sensor`, `select`, …), object id and discovery config.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub component: &'static str,
    pub object: String,
    pub config: Value,
}

impl Entity {
    /// Its retained discovery topic.
    pub fn topic(&self, prefix: &str, node: &str) -> String {
        format!("{prefix}/{}/{node}/{}/config", self.component, self.object)
    }
}

/// A name usable in a discovery topic and an entity id: lower case ASCII letters, digits and
/// `_`; anything else becomes `_`.
pub fn slug(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "_".into()
    } else {
        s
    }
}

/// The topic of the last prediction of a Frigate camera (retained).
pub fn camera_last_topic(root: &str, camera: &str) -> String {
    format!("{root}/last/{camera}")
}

/// Every entity of `board`.
pub fn entities(board: &Board<'_>) -> Vec<Entity> {
    let node = slug(board.device_id);
    let root = board.root;
    let info = format!("{root}/info");
    let last = format!("{root}/last");
    let device = json!({
        "identifiers": [format!("adaptd_{node}")],
        "name": board.node_name,
        "manufacturer": "adaptd",
        "model": board.model,
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let origin = json!({ "name": "adaptd", "sw_version": env!("CARGO_PKG_VERSION") });
    let entity = |component: &'static str, object: &str, name: &str, extra: Value| {
        let id = format!("adaptd_{node}_{object}");
        let mut config = json!({
            "name": name,
            "unique_id": id,
            "object_id": id,
            "availability_topic": format!("{root}/status"),
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
            "origin": origin,
        });
        if let (Some(c), Value::Object(extra)) = (config.as_object_mut(), extra) {
            c.extend(extra);
        }
        Entity {
            component,
            object: object.to_string(),
            config,
        }
    };
    let percent = |path: &str| {
        format!(
            "{{% set a = value_json.head.training.{path} %}}\
             {{{{ (a * 100) | round(1) if a is number else 'None' }}}}"
        )
    };
    let mut out = vec![
        entity(
            "sensor",
            "prediction",
            "Prediction",
            json!({
                "state_topic": last,
                "value_template": "{{ value_json.label if value_json.label is not none else 'None' }}",
                "json_attributes_topic": last,
                "icon": "mdi:tag-search",
            }),
        ),
        entity(
            "text",
            "teach",
            "Teach the last input",
            json!({
                "command_topic": format!("{root}/teach"),
                "qos": 1,
                "mode": "text",
                "min": 1,
                "max": 64,
                "pattern": "^[^+#/]+$",
                "icon": "mdi:school",
            }),
        ),
        entity(
            "select",
            "learner",
            "Learner",
            json!({
                "command_topic": format!("{root}/cmd/algorithm"),
                "qos": 1,
                "state_topic": info,
                "value_template": "{{ value_json.head.algorithm }}",
                "options": LEARNERS,
                "entity_category": "config",
                "icon": "mdi:brain",
            }),
        ),
        entity(
            "binary_sensor",
            "drift",
            "Drift",
            json!({
                "state_topic": format!("{root}/drift"),
                "value_template": "{{ 'ON' if value_json.alarm else 'OFF' }}",
                "json_attributes_topic": format!("{root}/drift"),
                "device_class": "problem",
            }),
        ),
        entity(
            "sensor",
            "samples",
            "Samples",
            json!({
                "state_topic": info,
                "value_template": "{{ value_json.head.samples }}",
                "state_class": "measurement",
                "icon": "mdi:counter",
            }),
        ),
        entity(
            "sensor",
            "classes",
            "Classes",
            json!({
                "state_topic": info,
                "value_template": "{{ value_json.head.classes | count }}",
                "json_attributes_topic": info,
                "json_attributes_template": "{{ {'classes': value_json.head.classes} | tojson }}",
                "state_class": "measurement",
                "icon": "mdi:shape",
            }),
        ),
        entity(
            "sensor",
            "accuracy",
            "Accuracy",
            json!({
                "state_topic": info,
                "value_template": percent("accuracy"),
                "json_attributes_topic": info,
                "json_attributes_template": "{{ {'tested': value_json.head.training.tested, 'correct': value_json.head.training.correct, 'classes': value_json.head.training.classes} | tojson }}",
                "unit_of_measurement": "%",
                "state_class": "measurement",
                "icon": "mdi:bullseye-arrow",
            }),
        ),
        entity(
            "sensor",
            "recent_accuracy",
            "Recent accuracy",
            json!({
                "state_topic": info,
                "value_template": percent("recent.accuracy"),
                "json_attributes_topic": info,
                "json_attributes_template": "{{ value_json.head.training.recent | tojson }}",
                "unit_of_measurement": "%",
                "state_class": "measurement",
                "icon": "mdi:bullseye-arrow",
            }),
        ),
        entity(
            "sensor",
            "classes_ready",
            "Classes taught enough",
            json!({
                "state_topic": info,
                "value_template": "{{ value_json.head.training.ready }}",
                "json_attributes_topic": info,
                "json_attributes_template": "{{ {'enough_lower': value_json.head.training.enough_lower, 'enough': value_json.head.training.classes | selectattr('enough') | map(attribute='name') | list, 'not_yet': value_json.head.training.classes | rejectattr('enough') | map(attribute='name') | list} | tojson }}",
                "state_class": "measurement",
                "icon": "mdi:check-decagram",
            }),
        ),
        entity(
            "sensor",
            "last_error",
            "Last error",
            json!({
                "state_topic": format!("{root}/error"),
                "value_template": "{{ value_json.code }}",
                "json_attributes_topic": format!("{root}/error"),
                "entity_category": "diagnostic",
                "icon": "mdi:alert-circle-outline",
            }),
        ),
    ];
    for (object, name, command) in [
        ("snapshot", "Snapshot", "snapshot"),
        ("rollback", "Roll back the head", "rollback"),
        ("adapt_reset", "Reset adaptation", "adapt-reset"),
    ] {
        out.push(entity(
            "button",
            object,
            name,
            json!({
                "command_topic": format!("{root}/cmd/{command}"),
                "payload_press": "",
                "qos": 1,
                "entity_category": "config",
            }),
        ));
    }
    // Home Assistant refuses a select without options: it appears with the first class.
    if !board.classes.is_empty() {
        out.push(entity(
            "select",
            "correct",
            "Correct the last prediction",
            json!({
                "command_topic": format!("{root}/correct"),
                "qos": 1,
                "state_topic": last,
                // An input like none of the classes is labeled `unknown_label`, which is not an
                // option (Home Assistant refuses it): the select shows the nearest class.
                "value_template": "{{ value_json.top[0].label if value_json.known == false and value_json.top else value_json.label }}",
                "options": board.classes,
                "icon": "mdi:tag-check",
            }),
        ));
    }
    // A text board: type a sentence on the dashboard, see its prediction, teach or correct it.
    if board.modality == Modality::Text {
        out.push(entity(
            "text",
            "classify",
            "Classify a sentence",
            json!({
                "command_topic": format!("{root}/infer"),
                "qos": 1,
                "mode": "text",
                "min": 1,
                "max": 255,
                "icon": "mdi:text-search",
            }),
        ));
    }
    if board.image && board.modality == Modality::Image {
        out.push(entity(
            "image",
            "input",
            "Last input",
            json!({
                "image_topic": format!("{root}/image"),
                "content_type": "image/jpeg",
            }),
        ));
    }
    for camera in board.cameras {
        let topic = camera_last_topic(root, camera);
        out.push(entity(
            "sensor",
            &format!("prediction_{}", slug(camera)),
            &format!("Prediction {camera}"),
            json!({
                "state_topic": topic,
                "value_template": "{{ value_json.label if value_json.label is not none else 'None' }}",
                "json_attributes_topic": topic,
                "icon": "mdi:cctv",
            }),
        ));
    }
    out
}

#[cfg(test)]
mod tests;
