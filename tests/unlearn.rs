//! Exact unlearning over MQTT (issue #23 item 4): the real daemon and model behind a real
//! mosquitto learn photos with ids, `cmd/unlearn` removes one and `cmd/relabel` moves one, the
//! head is republished, bad ids are stable errors, and both survive a kill -9.

mod common;

use common::{base64_encode, class_counts, info, result_of, variants, Client, Daemon, Mosquitto};

/// A learn request with an id.
fn learn(id: &str, label: &str, img: &[u8]) -> String {
    serde_json::json!({"id": id, "label": label, "image": base64_encode(img)}).to_string()
}

/// The next `{root}/error` reply about `{root}/cmd/<command>`.
async fn error_of(c: &Client, root: &str, command: &str) -> serde_json::Value {
    let topic = format!("{root}/cmd/{command}");
    c.wait_for(&format!("{root}/error"), |m| m.json()["topic"] == topic)
        .await
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlearn_and_relabel_over_mqtt_are_exact_durable_and_refuse_bad_ids() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("state");
    let mut d = Daemon::start(&broker.url(), &state, "unl", &[]);
    let root = d.root();
    let c = Client::connect(broker.port, &[&format!("{root}/#")]).await;
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;

    let cats = variants("chelsea.jpg", 3, 1);
    let cups = variants("coffee.jpg", 2, 2);
    let rocket = variants("rocket.jpg", 1, 3);
    for (i, img) in cats.iter().enumerate() {
        c.publish(
            &format!("{root}/learn"),
            learn(&format!("cat-{i}"), "cat", img),
        )
        .await;
    }
    for (i, img) in cups.iter().enumerate() {
        c.publish(
            &format!("{root}/learn"),
            learn(&format!("cup-{i}"), "cup", img),
        )
        .await;
    }
    // A sample taught under the wrong label.
    c.publish(
        &format!("{root}/learn"),
        learn("oops", "rocket", &rocket[0]),
    )
    .await;
    c.wait_count(&format!("{root}/learned"), 6).await;
    info(&c, &root, |i| i["head"]["samples"] == 6).await;

    // Unlearn one photo: acknowledged with its label, the head has one cat less.
    c.publish(&format!("{root}/cmd/unlearn"), r#"{"id": "cat-1"}"#)
        .await;
    let r = result_of(&c, &root, "unlearn").await;
    assert_eq!(r["ok"], true);
    assert_eq!(r["id"], "cat-1");
    assert_eq!(r["label"], "cat");
    let version = r["head_version"].as_u64().expect("head_version");
    let i = info(&c, &root, |i| i["head"]["version"] == version).await;
    assert_eq!(i["head"]["samples"], 5);
    assert_eq!(class_counts(&i).get("cat"), Some(&2));
    // The retained head is republished with that version.
    c.wait_for(&format!("{root}/head"), |m| {
        adaptd::head::Head::from_bytes(
            &m.payload,
            &adaptd::head::Expect {
                backbone_sha256: None,
                dim: None,
                max_bytes: usize::MAX,
            },
        )
        .is_ok_and(|h| h.version() == version && h.samples() == 5)
    })
    .await;

    // Relabel the mistake: its class, now empty, disappears.
    c.publish(
        &format!("{root}/cmd/relabel"),
        r#"{"id": "oops", "label": "cup"}"#,
    )
    .await;
    let r = result_of(&c, &root, "relabel").await;
    assert_eq!(
        (r["id"].clone(), r["label"].clone()),
        ("oops".into(), "cup".into())
    );
    assert_eq!(r["from"], "rocket");
    let version = r["head_version"].as_u64().expect("head_version");
    let i = info(&c, &root, |i| i["head"]["version"] == version).await;
    let counts = class_counts(&i);
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_eq!(counts.get("cup"), Some(&3));
    assert_eq!(i["head"]["samples"], 5);

    // Bad ids: stable errors that change nothing.
    c.publish(&format!("{root}/cmd/unlearn"), r#"{"id": "never"}"#)
        .await;
    let e = error_of(&c, &root, "unlearn").await;
    assert_eq!(e["code"], "unknown_id");
    assert!(e["message"].as_str().is_some_and(|m| m.contains("never")));
    c.clear();
    c.publish(&format!("{root}/cmd/unlearn"), "cat-1").await;
    let e = error_of(&c, &root, "unlearn").await;
    assert_eq!(e["code"], "unknown_id");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("already unlearned")),
        "{e}"
    );
    c.publish(
        &format!("{root}/cmd/relabel"),
        r#"{"id": "cat-0", "label": "a/b"}"#,
    )
    .await;
    let e = error_of(&c, &root, "relabel").await;
    assert_eq!(e["code"], "bad_label");

    // Durable before the ack: a kill -9 right after replays both from the write-ahead log.
    d.kill9();
    c.clear();
    d.restart();
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;
    let i = info(&c, &root, |i| i["head"]["samples"] == 5).await;
    assert_eq!(i["head"]["version"], version);
    let counts = class_counts(&i);
    assert_eq!(counts.get("cat"), Some(&2));
    assert_eq!(counts.get("cup"), Some(&3));
    assert_eq!(counts.len(), 2, "{counts:?}");
    // The ledger came back: cat-1 stays unlearned, cat-0 can still go.
    c.publish(&format!("{root}/cmd/unlearn"), "cat-1").await;
    assert_eq!(error_of(&c, &root, "unlearn").await["code"], "unknown_id");
    c.publish(&format!("{root}/cmd/unlearn"), "cat-0").await;
    let r = result_of(&c, &root, "unlearn").await;
    assert_eq!(r["label"], "cat");
    info(&c, &root, |i| i["head"]["samples"] == 4).await;
    assert!(d.stop(), "clean exit");
}
