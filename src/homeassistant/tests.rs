//! Every discovery config against the fields and types Home Assistant documents for its
//! platform (https://www.home-assistant.io/integrations/<platform>.mqtt/, 2024 releases):
//! unknown keys would be dropped silently by Home Assistant, wrong types refuse the entity.

use std::collections::BTreeSet;

use serde_json::Value;

use super::*;

/// Keys every MQTT entity may have (the MQTT entity base and discovery).
const COMMON: &[&str] = &[
    "availability",
    "availability_mode",
    "availability_template",
    "availability_topic",
    "device",
    "enabled_by_default",
    "encoding",
    "entity_category",
    "entity_picture",
    "icon",
    "json_attributes_template",
    "json_attributes_topic",
    "name",
    "object_id",
    "origin",
    "payload_available",
    "payload_not_available",
    "qos",
    "unique_id",
];

/// (platform, its own keys, its required keys).
fn platform(component: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match component {
        "sensor" => (
            &[
                "state_topic",
                "value_template",
                "unit_of_measurement",
                "state_class",
                "device_class",
                "expire_after",
                "force_update",
                "last_reset_value_template",
                "suggested_display_precision",
                "options",
            ],
            &["state_topic"],
        ),
        "binary_sensor" => (
            &[
                "state_topic",
                "value_template",
                "device_class",
                "payload_on",
                "payload_off",
                "expire_after",
                "force_update",
                "off_delay",
            ],
            &["state_topic"],
        ),
        "select" => (
            &[
                "command_topic",
                "command_template",
                "options",
                "optimistic",
                "retain",
                "state_topic",
                "value_template",
            ],
            &["command_topic", "options"],
        ),
        "text" => (
            &[
                "command_topic",
                "command_template",
                "max",
                "min",
                "mode",
                "pattern",
                "retain",
                "state_topic",
                "value_template",
            ],
            &["command_topic"],
        ),
        "button" => (
            &[
                "command_topic",
                "command_template",
                "device_class",
                "payload_press",
                "retain",
            ],
            &["command_topic"],
        ),
        "image" => (
            &[
                "content_type",
                "image_encoding",
                "image_topic",
                "url_template",
                "url_topic",
            ],
            &[],
        ),
        other => panic!("no schema for {other}"),
    }
}

const DEVICE: &[&str] = &[
    "configuration_url",
    "connections",
    "hw_version",
    "identifiers",
    "manufacturer",
    "model",
    "name",
    "serial_number",
    "suggested_area",
    "sw_version",
    "via_device",
];

const ORIGIN: &[&str] = &["name", "sw_version", "support_url"];

fn is_topic(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|t| !t.is_empty() && !t.contains(['+', '#']))
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Checks one entity; returns what is wrong.
fn check(e: &Entity) -> Vec<String> {
    let mut bad = Vec::new();
    let Some(config) = e.config.as_object() else {
        return vec!["not an object".into()];
    };
    let (own, required) = platform(e.component);
    for key in config.keys() {
        if !COMMON.contains(&key.as_str()) && !own.contains(&key.as_str()) {
            bad.push(format!("unknown key {key}"));
        }
    }
    for key in required {
        if !config.contains_key(*key) {
            bad.push(format!("missing {key}"));
        }
    }
    for (key, v) in config {
        let ok = match key.as_str() {
            k if k.ends_with("_topic") => is_topic(v),
            k if k.ends_with("_template") => v.as_str().is_some_and(|t| t.contains("{{")),
            "qos" => v.as_u64().is_some_and(|q| q <= 2),
            "min" | "max" => v.as_u64().is_some_and(|n| n <= 255),
            "options" => v.as_array().is_some_and(|o| {
                !o.is_empty() && o.iter().all(|x| x.as_str().is_some_and(|s| !s.is_empty()))
            }),
            "entity_category" => match v.as_str() {
                // Home Assistant refuses "config" on sensors.
                Some("diagnostic") => true,
                Some("config") => !e.component.ends_with("sensor"),
                _ => false,
            },
            "state_class" => v
                .as_str()
                .is_some_and(|s| ["measurement", "total", "total_increasing"].contains(&s)),
            "mode" => v
                .as_str()
                .is_some_and(|m| ["text", "password"].contains(&m)),
            "icon" => v.as_str().is_some_and(|i| i.starts_with("mdi:")),
            "device" => v.as_object().is_some_and(|d| {
                d.keys().all(|k| DEVICE.contains(&k.as_str()))
                    && d["identifiers"].as_array().is_some_and(|i| !i.is_empty())
            }),
            "origin" => v.as_object().is_some_and(|o| {
                o.keys().all(|k| ORIGIN.contains(&k.as_str())) && o["name"].is_string()
            }),
            "unique_id" | "object_id" => v.as_str().is_some_and(is_id),
            _ => v.is_string() || v.is_number() || v.is_boolean(),
        };
        if !ok {
            bad.push(format!("{key} = {v}"));
        }
    }
    bad
}

fn board<'a>(classes: &'a [String], cameras: &'a [String], modality: Modality) -> Board<'a> {
    Board {
        root: "adaptd/cam-1",
        device_id: "Cam-1",
        node_name: "adaptd Cam-1",
        discovery_prefix: "homeassistant",
        model: "efficientnet-lite0",
        modality,
        image: true,
        classes,
        cameras,
    }
}

#[test]
fn every_config_has_the_documented_fields_and_types() {
    let classes = vec!["cat".to_string(), "dog".to_string()];
    let cameras = vec!["front_door".to_string(), "Back Yard".to_string()];
    let all = entities(&board(&classes, &cameras, Modality::Image));
    let mut topics = BTreeSet::new();
    for e in &all {
        let problems = check(e);
        assert!(
            problems.is_empty(),
            "{} {}: {problems:?}",
            e.component,
            e.object
        );
        let topic = e.topic("homeassistant", &slug("Cam-1"));
        let parts: Vec<&str> = topic.split('/').collect();
        assert_eq!(parts.len(), 5, "{topic}");
        assert!(parts[2..4].iter().all(|p| is_id(p)), "{topic}");
        assert!(topics.insert(topic.clone()), "two entities on {topic}");
        assert_eq!(e.config["unique_id"], format!("adaptd_cam_1_{}", e.object));
    }
    let names: BTreeSet<&str> = all.iter().map(|e| e.object.as_str()).collect();
    for wanted in [
        "prediction",
        "input",
        "correct",
        "teach",
        "learner",
        "snapshot",
        "rollback",
        "adapt_reset",
        "drift",
        "samples",
        "classes",
        "accuracy",
        "recent_accuracy",
        "classes_ready",
        "last_error",
        "prediction_front_door",
        "prediction_back_yard",
    ] {
        assert!(names.contains(wanted), "no {wanted} in {names:?}");
    }
    let correct = all.iter().find(|e| e.object == "correct").unwrap();
    assert_eq!(correct.config["options"], serde_json::json!(["cat", "dog"]));
    assert_eq!(correct.config["command_topic"], "adaptd/cam-1/correct");
}

#[test]
fn entities_follow_the_board() {
    // Nothing learned: no correcting select (Home Assistant refuses one without options).
    let none = entities(&board(&[], &[], Modality::Image));
    assert!(none.iter().all(|e| e.object != "correct"));
    assert!(none.iter().all(|e| check(e).is_empty()));
    // A sound board has no image entity.
    let classes = vec!["doorbell".to_string()];
    let sound = entities(&board(&classes, &[], Modality::Audio));
    assert!(sound.iter().all(|e| e.component != "image"));
    assert!(sound.iter().any(|e| e.object == "correct"));
    assert!(sound.iter().all(|e| e.object != "classify"));
    // A text board has a text field that sends a sentence to classify, and no image.
    let text = entities(&board(&classes, &[], Modality::Text));
    let classify = text.iter().find(|e| e.object == "classify").unwrap();
    assert_eq!(classify.component, "text");
    assert_eq!(classify.config["command_topic"], "adaptd/cam-1/infer");
    assert!(check(classify).is_empty(), "{:?}", check(classify));
    assert!(text.iter().all(|e| e.component != "image"));
    // Nor does an image board with the image turned off.
    let mut b = board(&classes, &[], Modality::Image);
    b.image = false;
    assert!(entities(&b).iter().all(|e| e.component != "image"));
}

#[test]
fn slugs_are_topic_and_entity_safe() {
    assert_eq!(slug("Cam-1.lan"), "cam_1_lan");
    assert_eq!(slug("küche"), "k_che");
    assert_eq!(slug(""), "_");
    assert!(is_id(&slug("a b/c+d#e")));
}
