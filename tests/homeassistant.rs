//! Home Assistant and Frigate over a real mosquitto: the discovery configs a board publishes,
//! the retained state its entities read, teaching through the topics the dashboard's select,
//! text and buttons publish to, Home Assistant's birth message, a fake Frigate publishing what
//! Frigate's documentation says it publishes, and removal of the entities when discovery is
//! turned off. (`scripts/ha-test` runs the same against a real Home Assistant.)

mod common;

use common::{class_counts, info, result_of, variants, Client, InProcess, Mosquitto, Msg};

const PREFIX: &str = "homeassistant";

fn config_topic(component: &str, object: &str) -> String {
    format!("{PREFIX}/{component}/ha_1/{object}/config")
}

/// The non-empty discovery configs received so far, by topic (the latest of each).
fn configs(c: &Client) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut out = std::collections::BTreeMap::new();
    for m in c.on_prefix(&format!("{PREFIX}/")) {
        if m.topic.ends_with("/config") {
            if m.payload.is_empty() {
                out.remove(&m.topic);
            } else {
                out.insert(m.topic.clone(), m.json());
            }
        }
    }
    out
}

/// Waits until `n` configs have arrived; returns them.
async fn wait_configs(
    c: &Client,
    n: usize,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let deadline = std::time::Instant::now() + common::wait_bound();
    loop {
        let got = configs(c);
        if got.len() >= n {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} configs: {:?}",
            got.len(),
            got.keys()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_sees_the_board_teaches_it_and_frigate_cameras_appear() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().expect("tmp");
    let root = "adaptd/ha-1";
    let c = Client::connect(broker.port, &[&format!("{root}/#"), &format!("{PREFIX}/#")]).await;
    let frigate_source =
        "[[sources]]\ntopic = \"frigate\"\nkind = \"frigate\"\nobjects = [\"cat\", \"person\"]\n";
    let d = InProcess::start(InProcess::settings(
        frigate_source,
        &broker.url(),
        &tmp.path().join("state"),
        "ha-1",
        &[],
    ));
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;
    // A configured broker: discovery is on by default.
    c.wait_for(&config_topic("sensor", "prediction"), |m| {
        !m.payload.is_empty()
    })
    .await;
    let i = info(&c, root, |i| i["homeassistant"]["enabled"] == true).await;
    assert_eq!(i["head"]["training"]["tested"], 0, "{i}");
    let before = wait_configs(&c, 14).await;
    for (component, object) in [
        ("sensor", "prediction"),
        ("image", "input"),
        ("text", "teach"),
        ("select", "learner"),
        ("button", "snapshot"),
        ("button", "rollback"),
        ("button", "adapt_reset"),
        ("binary_sensor", "drift"),
        ("sensor", "samples"),
        ("sensor", "classes"),
        ("sensor", "accuracy"),
        ("sensor", "recent_accuracy"),
        ("sensor", "classes_ready"),
        ("sensor", "last_error"),
    ] {
        let cfg = before
            .get(&config_topic(component, object))
            .unwrap_or_else(|| panic!("no {component} {object}: {:?}", before.keys()));
        assert_eq!(cfg["availability_topic"], format!("{root}/status"));
        assert_eq!(cfg["device"]["identifiers"][0], "adaptd_ha_1");
        assert_eq!(cfg["device"]["model"], "efficientnet-lite0");
    }
    // Nothing learned yet: no select to correct with.
    assert!(!before.contains_key(&config_topic("select", "correct")));

    // Teach two classes the usual way; the select appears with them as options.
    for (label, photo, seed) in [("cat", "chelsea.jpg", 1), ("rocket", "rocket.jpg", 2)] {
        for v in variants(photo, 3, seed) {
            c.publish(&format!("{root}/learn/{label}"), v).await;
        }
    }
    let select = c
        .wait_for(&config_topic("select", "correct"), |m| {
            !m.payload.is_empty() && m.json()["options"].as_array().is_some_and(|o| o.len() == 2)
        })
        .await
        .json();
    assert_eq!(select["options"], serde_json::json!(["cat", "rocket"]));
    assert_eq!(select["command_topic"], format!("{root}/correct"));

    // A fake Frigate: retained per-camera object snapshots (JPEG), the object count, an event.
    let snapshot = variants("chelsea.jpg", 1, 9).remove(0);
    c.publish_retained("frigate/front_door/cat/snapshot", snapshot.clone())
        .await;
    c.publish_retained("frigate/front_door/cat", "1").await;
    c.publish_retained(
        "frigate/garage/dog/snapshot",
        variants("coffee.jpg", 1, 3).remove(0),
    )
    .await;
    let event = serde_json::json!({"type": "new", "before": {"id": "1718.1-abc", "camera": "front_door", "label": "cat"}, "after": {"id": "1718.1-abc", "camera": "front_door", "label": "cat"}});
    c.publish("frigate/events", event.to_string()).await;
    let p = c
        .wait_for(&format!("{root}/prediction"), |m: &Msg| {
            m.json()["camera"] == "front_door"
        })
        .await
        .json();
    assert_eq!(p["object"], "cat", "{p}");
    assert_eq!(p["label"], "cat", "{p}");
    assert_eq!(p["source"], "frigate/front_door/cat/snapshot", "{p}");
    let camera_sensor = c
        .wait_for(&config_topic("sensor", "prediction_front_door"), |m| {
            !m.payload.is_empty()
        })
        .await
        .json();
    assert_eq!(
        camera_sensor["state_topic"],
        format!("{root}/last/front_door")
    );
    let last = c
        .wait_for(&format!("{root}/last/front_door"), |m| {
            m.retain || !m.payload.is_empty()
        })
        .await
        .json();
    assert_eq!(last["id"], p["id"]);
    let image = c
        .wait_for(&format!("{root}/image"), |m| !m.payload.is_empty())
        .await;
    assert_eq!(
        image.payload, snapshot,
        "the image entity shows what was classified"
    );
    // The dog is not an object the source takes; the count and the event are not snapshots.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let predictions = c.on(&format!("{root}/prediction"));
    assert_eq!(
        predictions.len(),
        1,
        "{:?}",
        predictions.iter().map(Msg::summary).collect::<Vec<_>>()
    );

    // The select corrects the last prediction: learned under the prediction's id, and the
    // last prediction shows the corrected label.
    c.publish(&format!("{root}/correct"), "rocket").await;
    let learned = c
        .wait_for(&format!("{root}/learned"), |m: &Msg| {
            m.json()["id"] == p["id"]
        })
        .await
        .json();
    assert_eq!(learned["label"], "rocket", "{learned}");
    let last = c
        .wait_for(&format!("{root}/last"), |m| {
            !m.payload.is_empty() && m.json()["corrected"] == true
        })
        .await
        .json();
    assert_eq!(last["label"], "rocket");
    let i = info(&c, root, |i| i["head"]["samples"] == 7).await;
    assert_eq!(class_counts(&i).get("rocket"), Some(&4), "{i}");

    // Bad input from a dashboard: an option that is not a class, an invalid label, nothing
    // to correct on a fresh board is tested in unit tests; each is an error and changes nothing.
    c.publish(&format!("{root}/correct"), "unicorn").await;
    let e = c
        .wait_for(&format!("{root}/error"), |m| {
            m.json()["topic"] == format!("{root}/correct")
        })
        .await
        .json();
    assert_eq!(e["code"], "unknown_label", "{e}");
    c.publish(&format!("{root}/teach"), "a/b").await;
    let e = c
        .wait_for(&format!("{root}/error"), |m| {
            m.json()["topic"] == format!("{root}/teach")
        })
        .await
        .json();
    assert_eq!(e["code"], "bad_label", "{e}");
    // The text entity teaches a new class from the last input; the select offers it.
    c.publish(&format!("{root}/teach"), "kitten").await;
    c.wait_for(&config_topic("select", "correct"), |m| {
        !m.payload.is_empty()
            && m.json()["options"]
                .as_array()
                .is_some_and(|o| o.iter().any(|x| x == "kitten"))
    })
    .await;
    let i = info(&c, root, |i| i["head"]["samples"] == 8).await;
    let counts = class_counts(&i);
    assert_eq!(
        (counts["cat"], counts["rocket"], counts["kitten"]),
        (3, 4, 1),
        "{i}"
    );
    // The training record: the correction was predicted (wrongly) before it was learned; how
    // many of the photos were depends on how often the prediction snapshot was refreshed.
    let training = &i["head"]["training"];
    assert!(
        training["tested"].as_u64().is_some_and(|t| t >= 1),
        "{training}"
    );
    assert_eq!(
        training["classes"].as_array().map(Vec::len),
        Some(3),
        "{training}"
    );

    // The buttons and the learner select publish ordinary commands.
    c.publish(&format!("{root}/cmd/snapshot"), "").await;
    assert_eq!(result_of(&c, root, "snapshot").await["ok"], true);
    c.publish(&format!("{root}/cmd/algorithm"), "slda").await;
    assert_eq!(result_of(&c, root, "algorithm").await["ok"], true);
    info(&c, root, |i| i["head"]["algorithm"] == "slda").await;

    // Home Assistant restarts: its birth message brings every config again.
    let n = configs(&c).len();
    c.clear();
    c.publish(&format!("{PREFIX}/status"), "online").await;
    wait_configs(&c, n).await;
    d.stop().await.expect("clean stop");
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"offline")
        .await;

    // Restarted with discovery off: every entity it had published is removed.
    let d = InProcess::start(InProcess::settings(
        frigate_source,
        &broker.url(),
        &tmp.path().join("state"),
        "ha-1",
        &[("ADAPTD_HOMEASSISTANT_ENABLED", "false")],
    ));
    info(&c, root, |i| i["homeassistant"]["enabled"] == false).await;
    let fresh = Client::connect(broker.port, &[&format!("{PREFIX}/#")]).await;
    let deadline = std::time::Instant::now() + common::wait_bound();
    while !configs(&fresh).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "configs left: {:?}",
            configs(&fresh).keys()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    d.stop().await.expect("clean stop");
}
