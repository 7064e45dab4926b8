//! The daemon driven as a user would: the real binary, the real shipped model, a real mosquitto,
//! through MQTT only.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use adaptd::head::{Expect, Head};
use common::{
    base64_encode, class_counts, info, learn_all, predict, result_of, variants, Client, Daemon,
    Mosquitto, Msg,
};

/// A broker, a running adaptd with a fresh state directory, and a client watching `{root}/#`
/// that has seen the daemon come online.
struct Setup {
    broker: Mosquitto,
    state: tempfile::TempDir,
    d: Daemon,
    c: Client,
    root: String,
}

async fn setup(device: &str, extra: &[(&str, &str)]) -> Setup {
    let broker = Mosquitto::start();
    let state = tempfile::tempdir().expect("tmp");
    let d = Daemon::start(&broker.url(), &state.path().join("s"), device, extra);
    let root = d.root();
    let c = Client::connect(broker.port, &[&format!("{root}/#")]).await;
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;
    Setup {
        broker,
        state,
        d,
        c,
        root,
    }
}

fn label_of(m: &Msg) -> String {
    m.json()["label"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_predicts_takes_feedback_publishes_and_rolls_back() {
    let Setup {
        broker,
        state: _state,
        mut d,
        c,
        root,
    } = setup("cam1", &[]).await;

    // Nothing learned yet: an inference is answered with a clear error.
    let cats = variants("chelsea.jpg", 6, 1);
    let cups = variants("coffee.jpg", 6, 2);
    c.publish(&format!("{root}/infer"), cats[5].clone()).await;
    let e = c.wait_for(&format!("{root}/error"), |_| true).await.json();
    assert_eq!(e["code"], "no_classes");

    learn_all(&c, &root, "cat", &cats[..4]).await;
    learn_all(&c, &root, "cup", &cups[..4]).await;
    let learned = c.wait_count(&format!("{root}/learned"), 8).await;
    assert!(learned
        .iter()
        .all(|m| m.json()["head_version"].as_u64().is_some()));
    let i = info(&c, &root, |i| i["head"]["samples"] == 8).await;
    assert_eq!(class_counts(&i).get("cat"), Some(&4));
    assert_eq!(i["backbone"]["embedding_dim"], 1280);

    // Predictions follow the labels, with ids echoed (two workers: order is not guaranteed).
    let ask = |id: &str, img: &[u8]| {
        serde_json::json!({"id": id, "image": base64_encode(img)}).to_string()
    };
    c.publish(&format!("{root}/infer"), ask("c5", &cats[5]))
        .await;
    c.publish(&format!("{root}/infer"), ask("u5", &cups[5]))
        .await;
    let cat = c
        .wait_for(&format!("{root}/prediction"), |m| m.json()["id"] == "c5")
        .await;
    let cup = c
        .wait_for(&format!("{root}/prediction"), |m| m.json()["id"] == "u5")
        .await;
    assert_eq!(label_of(&cat), "cat");
    assert_eq!(label_of(&cup), "cup");
    let p = cat.json();
    assert!(p["top"].as_array().is_some_and(|t| t.len() == 2));
    assert!(p["score"].as_f64().unwrap_or(0.0) > 0.5);
    // Open set: a novelty for every prediction; `known` and its threshold wait for 20 scored
    // samples of known classes (6 here).
    assert!(p["novelty"].as_f64().is_some_and(|v| v >= 0.0), "{p}");
    assert!(p["known"].is_null() && p["threshold"].is_null(), "{p}");

    // Feedback by id teaches a new class without resending the image.
    let astronaut = variants("astronaut.jpg", 2, 3);
    let req = serde_json::json!({
        "id": "frame-42",
        "image": base64_encode(&astronaut[0]),
    });
    c.publish(&format!("{root}/infer"), req.to_string()).await;
    let p = c
        .wait_for(&format!("{root}/prediction"), |m| {
            m.json()["id"] == "frame-42"
        })
        .await;
    assert_ne!(label_of(&p), "person");
    c.publish(
        &format!("{root}/feedback"),
        r#"{"id": "frame-42", "label": "person"}"#,
    )
    .await;
    c.wait_for(&format!("{root}/learned"), |m| m.json()["id"] == "frame-42")
        .await;
    c.publish(
        &format!("{root}/infer"),
        serde_json::json!({"id": "frame-43", "image": base64_encode(&astronaut[0])}).to_string(),
    )
    .await;
    let p = c
        .wait_for(&format!("{root}/prediction"), |m| {
            m.json()["id"] == "frame-43"
        })
        .await;
    assert_eq!(label_of(&p), "person");

    // The head is published retained and loads back for this backbone.
    let i = info(&c, &root, |i| i["head"]["samples"] == 9).await;
    let sha = i["backbone"]["sha256"].as_str().expect("sha").to_string();
    let late = Client::connect(broker.port, &[&format!("{root}/head")]).await;
    let head_msg = late.wait_for(&format!("{root}/head"), |m| m.retain).await;
    let head = Head::from_bytes(
        &head_msg.payload,
        &Expect {
            backbone_sha256: Some(&sha),
            dim: Some(1280),
            max_bytes: 64 << 20,
        },
    )
    .expect("retained head loads");
    assert_eq!(head.samples(), 9);

    // Snapshot, learn more, roll back to the snapshot.
    c.publish(&format!("{root}/cmd/snapshot"), "").await;
    let r = result_of(&c, &root, "snapshot").await;
    let snap_version = r["head_version"].as_u64().expect("version");
    learn_all(&c, &root, "cup", &cups[4..5]).await;
    info(&c, &root, |i| i["head"]["samples"] == 10).await;
    c.publish(&format!("{root}/cmd/snapshot"), "").await;
    c.wait_count(&format!("{root}/result"), 2).await;
    c.clear();
    c.publish(
        &format!("{root}/cmd/rollback"),
        format!("{{\"version\": {snap_version}}}"),
    )
    .await;
    let r = result_of(&c, &root, "rollback").await;
    assert_eq!(r["restored"].as_u64(), Some(snap_version));
    assert!(
        r["head_version"].as_u64().unwrap_or(0) > snap_version,
        "versions stay monotonic"
    );
    let i = info(&c, &root, |i| i["head"]["samples"] == 9).await;
    assert_eq!(class_counts(&i).get("cup"), Some(&4));

    // Switch the learner: retrained from the stored samples, predictions still follow.
    c.publish(&format!("{root}/cmd/algorithm"), "slda").await;
    let r = result_of(&c, &root, "algorithm").await;
    assert_eq!(
        r["retrained_samples"], 10,
        "stored samples include the rolled-back one: {r}"
    );
    let i = info(&c, &root, |i| i["head"]["algorithm"] == "slda").await;
    assert_eq!(i["head"]["samples"], 10);
    c.publish(&format!("{root}/infer"), ask("c6", &cats[5]))
        .await;
    let p = c
        .wait_for(&format!("{root}/prediction"), |m| m.json()["id"] == "c6")
        .await;
    assert_eq!(label_of(&p), "cat");
    // Forget a class.
    c.clear();
    c.publish(&format!("{root}/cmd/forget"), "person").await;
    let i = info(&c, &root, |i| !class_counts(i).contains_key("person")).await;
    assert_eq!(class_counts(&i).len(), 2);

    // A clean stop publishes offline; a restart keeps the head.
    assert!(d.stop(), "clean exit");
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"offline")
        .await;
    c.clear();
    d.restart();
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;
    let i = info(&c, &root, |i| i["head"]["samples"] == 9).await;
    assert_eq!(i["head"]["algorithm"], "slda");
    assert!(!class_counts(&i).contains_key("person"));
    c.publish(&format!("{root}/infer"), cats[5].clone()).await;
    let p = c.wait_for(&format!("{root}/prediction"), |_| true).await;
    assert_eq!(label_of(&p), "cat");
    assert!(d.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_acknowledged_sample_and_learns_redeliveries_once() {
    let Setup {
        broker: _broker,
        state: _state,
        mut d,
        c,
        root,
    } = setup("k9", &[]).await;
    let images: Vec<Vec<u8>> = variants("chelsea.jpg", 20, 10)
        .into_iter()
        .chain(variants("coffee.jpg", 20, 11))
        .collect();
    for (i, img) in images.iter().enumerate() {
        let label = if i < 20 { "cat" } else { "cup" };
        c.publish(&format!("{root}/learn/{label}"), img.clone())
            .await;
    }
    // Kill -9 once some, not all, are acknowledged.
    c.wait_count(&format!("{root}/learned"), 8).await;
    d.kill9();
    let acked_before = c.on(&format!("{root}/learned")).len();
    d.restart();
    // Everything sent ends up in the head exactly once: the acknowledged ones from the WAL, the
    // rest redelivered by the broker's persistent session (duplicates dropped).
    let deadline = std::time::Instant::now() + common::wait_bound();
    let i = loop {
        let infos = c.on(&format!("{root}/info"));
        if let Some(m) = infos
            .iter()
            .find(|m| m.json()["head"]["samples"].as_u64() >= Some(40))
        {
            break m.json();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all learned: {:?}\nlog:\n{}",
            infos.last().map(|m| m.json()["head"].clone()),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = c.on(&format!("{root}/info"));
    let last = last.last().expect("info").json();
    assert_eq!(last["head"]["samples"], 40, "first full info: {i}");
    let counts = class_counts(&last);
    assert_eq!(counts.get("cat"), Some(&20));
    assert_eq!(counts.get("cup"), Some(&20));
    assert!(acked_before < 40, "the kill came too late to test anything");
    assert!(d.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    let Setup {
        mut broker,
        state: _state,
        mut d,
        c,
        root,
    } = setup("br", &[]).await;
    let images = variants("coffee.jpg", 30, 20);
    for img in &images[..15] {
        c.publish(&format!("{root}/learn/cup"), img.clone()).await;
    }
    c.wait_count(&format!("{root}/learned"), 3).await;
    // Stop the broker mid-stream (SIGTERM: mosquitto saves its sessions), restart it.
    broker.stop_graceful();
    broker.restart();
    let c = Client::connect(broker.port, &[&format!("{root}/#")]).await;
    for img in &images[15..] {
        c.publish(&format!("{root}/learn/cup"), img.clone()).await;
    }
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;
    let deadline = std::time::Instant::now() + common::wait_bound();
    loop {
        let infos = c.on(&format!("{root}/info"));
        if infos.iter().any(|m| m.json()["head"]["samples"] == 30) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not 30 samples: {:?}\nlog:\n{}",
            infos.iter().map(common::Msg::summary).collect::<Vec<_>>(),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(d.alive());
    assert!(d.stop());
}

/// A broker outage longer than the request queue: offline, passing messages (stats every second
/// here) must not fill rumqttc's queue, and whatever is queued, the reconnection must
/// subscribe again. Found by scripts/offline-memory: after 10 minutes offline (256 stats
/// messages queued) adaptd reconnected, could not queue its subscription and stayed deaf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_longer_than_the_request_queue_comes_back_subscribed() {
    let Setup {
        mut broker,
        state: _state,
        mut d,
        c,
        root,
    } = setup(
        "outage",
        &[
            ("ADAPTD_BROKER_REQUEST_QUEUE", "8"),
            ("ADAPTD_PUBLISH_STATS_INTERVAL_SECS", "1"),
        ],
    )
    .await;
    let images = variants("chelsea.jpg", 4, 70);
    learn_all(&c, &root, "cat", &images[..3]).await;
    info(&c, &root, |i| i["head"]["samples"] == 3).await;
    drop(c);
    // Killed and its persistence file lost (a broker that lost its state, or a replacement):
    // the reconnection finds no session and must subscribe again. Down for 12 stats periods,
    // more than the 8-request queue.
    broker.kill();
    let _ = std::fs::remove_file(broker.dir().join("mosquitto.db"));
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(d.alive());
    broker.restart();
    let c = Client::connect(broker.port, &[&format!("{root}/#")]).await;
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;
    // Deaf or not: only a subscribed daemon learns this.
    learn_all(&c, &root, "cat", &images[3..]).await;
    info(&c, &root, |i| i["head"]["samples"] == 4).await;
    // One reconnection, and the stats say so.
    c.wait_for(&format!("{root}/stats"), |m| {
        m.json()["mqtt"]["connects"] == 2
    })
    .await;
    assert!(d.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_paused_with_sigstop_loses_nothing_backs_off_and_comes_back_online() {
    let Setup {
        broker,
        state: _state,
        mut d,
        c,
        root,
    } = setup("paused", &[("ADAPTD_BROKER_KEEPALIVE_SECS", "5")]).await;
    let images = variants("coffee.jpg", 16, 40);
    learn_all(&c, &root, "cup", &images[..6]).await;
    info(&c, &root, |i| i["head"]["samples"] == 6).await;

    // The broker hangs (not dead: its socket still accepts connections at the kernel level).
    broker.signal(libc::SIGSTOP);
    let before = d.log().matches("retrying in").count();
    learn_all(&c, &root, "cup", &images[6..]).await; // queued in the client meanwhile
    tokio::time::sleep(std::time::Duration::from_secs(15)).await;
    assert!(d.alive());
    let attempts = d.log().matches("retrying in").count() - before;
    broker.signal(libc::SIGCONT);
    // Keepalive 2 s, connect timeout 5 s, backoff 100 ms → 1 s: a few attempts, no spinning.
    assert!(
        attempts <= 20,
        "{attempts} reconnection attempts in 10 s:\n{}",
        d.log()
    );

    // Everything arrives once, and the retained status ends up "online" (not the last will
    // the broker may publish for the stale connection).
    info(&c, &root, |i| i["head"]["samples"] == 16).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let late = Client::connect(broker.port, &[&format!("{root}/status")]).await;
    let status = late.wait_for(&format!("{root}/status"), |m| m.retain).await;
    assert_eq!(status.payload, b"online", "retained status after recovery");
    assert!(d.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_errors_and_change_nothing() {
    let Setup {
        broker: _broker,
        state: _state,
        mut d,
        c,
        root,
    } = setup("bad", &[("ADAPTD_SERVICE_MAX_PAYLOAD_BYTES", "4194304")]).await;
    let cats = variants("chelsea.jpg", 3, 30);
    learn_all(&c, &root, "cat", &cats[..2]).await;
    learn_all(&c, &root, "cup", &variants("coffee.jpg", 2, 31)).await;
    let before = info(&c, &root, |i| i["head"]["samples"] == 4).await;
    let version = before["head"]["version"].clone();
    c.clear();

    let jpeg = &cats[2];
    let mut nan = vec![0f32; 3 * 224 * 224];
    nan[17] = f32::NAN;
    let nan: Vec<u8> = nan.iter().flat_map(|v| v.to_le_bytes()).collect();
    let other_head = {
        let cfg = adaptd::head::HeadConfig::default();
        let mut h = Head::new(&cfg, 1280, &"0".repeat(64));
        h.update(&vec![0.5; 1280], "x").expect("update");
        h.to_bytes().expect("bytes")
    };
    let long = "x".repeat(300);
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (
            format!("{root}/infer"),
            jpeg[..jpeg.len() / 2].to_vec(),
            "bad_payload",
        ),
        (format!("{root}/infer"), vec![], "bad_payload"),
        (
            format!("{root}/infer"),
            vec![0xFF, 0xD8, 0xFF, 0x00],
            "bad_payload",
        ),
        (
            format!("{root}/infer"),
            b"\x89PNG\r\n\x1a\n garbage".to_vec(),
            "bad_payload",
        ),
        (format!("{root}/infer"), vec![0u8; 1000], "bad_payload"),
        (
            format!("{root}/infer"),
            b"[1, 2, 3]".to_vec(),
            "shape_mismatch",
        ),
        (
            format!("{root}/infer"),
            b"{\"tensor\": [1, 2]}".to_vec(),
            "shape_mismatch",
        ),
        (format!("{root}/infer"), nan.clone(), "non_finite"),
        (format!("{root}/infer"), vec![7u8; 10 << 20], "too_large"),
        (
            format!("{root}/infer"),
            b"{\"image\": 1".to_vec(),
            "bad_json",
        ),
        (
            format!("{root}/infer"),
            b"{\"imgae\": \"\"}".to_vec(),
            "bad_json",
        ),
        (
            format!("{root}/infer"),
            b"{\"image\": \"!!!\"}".to_vec(),
            "bad_request",
        ),
        (
            format!("{root}/learn/cat"),
            jpeg[..100].to_vec(),
            "bad_payload",
        ),
        (format!("{root}/learn/cat"), nan, "non_finite"),
        (
            format!("{root}/learn"),
            b"{\"label\": \"a#b\", \"tensor\": []}".to_vec(),
            "bad_label",
        ),
        (
            format!("{root}/learn"),
            b"{\"label\": \"a+b\", \"tensor\": []}".to_vec(),
            "bad_label",
        ),
        (
            format!("{root}/learn"),
            b"{\"label\": \"a/b\", \"tensor\": []}".to_vec(),
            "bad_label",
        ),
        (
            format!("{root}/learn"),
            format!("{{\"label\": \"{long}\", \"tensor\": []}}").into_bytes(),
            "bad_label",
        ),
        (
            format!("{root}/learn"),
            b"{\"tensor\": [1]}".to_vec(),
            "bad_request",
        ),
        (
            format!("{root}/feedback"),
            b"{\"id\": \"nope\", \"label\": \"cat\"}".to_vec(),
            "unknown_id",
        ),
        (
            format!("{root}/feedback"),
            format!("{{\"id\": \"x\", \"label\": \"{long}\"}}").into_bytes(),
            "bad_label",
        ),
        (
            format!("{root}/feedback"),
            b"{\"id\": \"x\", \"label\": \"a#\"}".to_vec(),
            "bad_label",
        ),
        (format!("{root}/feedback"), b"not json".to_vec(), "bad_json"),
        (
            format!("{root}/cmd/explode"),
            b"".to_vec(),
            "unknown_command",
        ),
        (
            format!("{root}/cmd/import"),
            other_head,
            "backbone_mismatch",
        ),
        (
            format!("{root}/cmd/import"),
            b"\xa1\x61x\x9b\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
            "bad_head",
        ),
        (
            format!("{root}/cmd/forget"),
            b"unicorn".to_vec(),
            "unknown_label",
        ),
        (
            format!("{root}/cmd/rollback"),
            b"{\"version\": 999999}".to_vec(),
            "no_such_version",
        ),
        (
            format!("{root}/cmd/algorithm"),
            b"quantum".to_vec(),
            "bad_config",
        ),
    ];
    for (i, (topic, payload, code)) in cases.iter().enumerate() {
        c.publish(topic, payload.clone()).await;
        let errors = c.wait_count(&format!("{root}/error"), i + 1).await;
        let e = errors[i].json();
        assert_eq!(e["code"], *code, "case {i} on {topic}: {e}");
        assert_eq!(e["topic"], *topic);
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Still serving, head unchanged.
    assert!(d.alive());
    c.publish(&format!("{root}/cmd/snapshot"), "").await;
    let after = info(&c, &root, |_| true).await;
    assert_eq!(after["head"]["version"], version);
    assert_eq!(after["head"]["samples"], 4);
    c.publish(&format!("{root}/infer"), cats[2].clone()).await;
    let p = c.wait_for(&format!("{root}/prediction"), |_| true).await;
    assert_eq!(label_of(&p), "cat");
    let seen: HashSet<String> = c
        .on(&format!("{root}/error"))
        .iter()
        .map(|m| m.json()["code"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(seen.len() >= 10, "{seen:?}");
    assert!(d.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_serves_alone() {
    let state = tempfile::tempdir().expect("tmp");
    let port = common::free_port();
    let mut d = Daemon::start(
        "",
        &state.path().join("s"),
        "solo",
        &[("ADAPTD_BROKER_EMBEDDED_PORT", &port.to_string())],
    );
    let root = d.root();
    // The broker comes up with the daemon; connect once it listens.
    let deadline = std::time::Instant::now() + common::wait_bound();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "embedded broker: {}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = Client::connect(port, &[&format!("{root}/#")]).await;
    learn_all(&c, &root, "cat", &variants("chelsea.jpg", 2, 40)).await;
    learn_all(&c, &root, "cup", &variants("coffee.jpg", 2, 41)).await;
    c.wait_count(&format!("{root}/learned"), 4).await;
    c.publish(
        &format!("{root}/infer"),
        variants("coffee.jpg", 1, 42)[0].clone(),
    )
    .await;
    let p = c.wait_for(&format!("{root}/prediction"), |_| true).await;
    assert_eq!(label_of(&p), "cup");
    assert!(d.stop());
}

/// A newcomer's Debian machine: `apt-get install mosquitto` starts a broker on the embedded
/// broker's port. With no broker configured, adaptd finds an MQTT broker there, uses it and says
/// so in `info` instead of refusing to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_port_held_by_a_broker_uses_that_broker() {
    let broker = Mosquitto::start();
    let state = tempfile::tempdir().expect("tmp");
    let mut d = Daemon::start(
        "",
        &state.path().join("s"),
        "local",
        &[("ADAPTD_BROKER_EMBEDDED_PORT", &broker.port.to_string())],
    );
    let root = d.root();
    let c = Client::connect(broker.port, &[&format!("{root}/#")]).await;
    let i = info(&c, &root, |i| i["broker"]["kind"].is_string()).await;
    assert_eq!(i["broker"]["kind"], "local", "{i}\n{}", d.log());
    assert_eq!(i["broker"]["port"], broker.port);
    learn_all(&c, &root, "cat", &variants("chelsea.jpg", 2, 50)).await;
    learn_all(&c, &root, "cup", &variants("coffee.jpg", 2, 51)).await;
    c.wait_count(&format!("{root}/learned"), 4).await;
    let p = predict(&c, &root, "p1", &variants("coffee.jpg", 1, 52)[0]).await;
    assert_eq!(p["label"], "cup", "{p}");
    assert!(
        d.log()
            .contains("already listens on the embedded broker's port"),
        "{}",
        d.log()
    );
    assert!(d.stop());
}

/// Something that is not an MQTT broker holds the embedded broker's port: adaptd refuses to
/// start and says why, instead of talking to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_port_held_by_something_else_fails_clearly() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    // Accept and hold connections without ever answering (a web server waiting for a request).
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in holder.incoming().take(4).flatten() {
            conns.push(c);
        }
        conns
    });
    let state = tempfile::tempdir().expect("tmp");
    let mut d = Daemon::start(
        "",
        &state.path().join("s"),
        "taken",
        &[("ADAPTD_BROKER_EMBEDDED_PORT", &port.to_string())],
    );
    let deadline = std::time::Instant::now() + common::wait_bound();
    while d.alive() {
        assert!(std::time::Instant::now() < deadline, "{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = d.log();
    assert!(
        log.contains("does not answer as an MQTT broker"),
        "exit without the broker error: {log}"
    );
    drop(held);
}

/// A camera whose images turned dark and colour-cast (what the board sees after moving).
fn shifted(images: &[Vec<u8>]) -> Vec<Vec<u8>> {
    use adaptd::eval::shift::{corrupt, prepare, Corruption, Shift};
    images
        .iter()
        .map(|b| {
            let img = prepare(b, (224, 224)).expect("fixture decodes");
            let cast = corrupt(
                &img,
                Some(Shift {
                    corruption: Corruption::Colour,
                    severity: 5,
                }),
                0,
            )
            .expect("corrupt");
            let img = prepare(&cast, (224, 224)).expect("decodes");
            corrupt(
                &img,
                Some(Shift {
                    corruption: Corruption::Contrast,
                    severity: 2,
                }),
                0,
            )
            .expect("corrupt")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapts_to_a_shifted_camera_raises_drift_and_keeps_its_statistics() {
    let env = [
        ("ADAPTD_ADAPT_METHOD", "mean"),
        ("ADAPTD_ADAPT_MIN_SAMPLES", "4"),
        ("ADAPTD_ADAPT_RECOMPUTE_EVERY", "2"),
        ("ADAPTD_ADAPT_WINDOW", "10"),
        ("ADAPTD_ADAPT_DRIFT_THRESHOLD", "0.3"),
        ("ADAPTD_PUBLISH_STATS_INTERVAL_SECS", "1"),
    ];
    let Setup {
        broker: _broker,
        state,
        mut d,
        c,
        root,
    } = setup("cam-adapt", &env).await;
    let cats = variants("chelsea.jpg", 20, 11);
    let cups = variants("coffee.jpg", 20, 12);
    learn_all(&c, &root, "cat", &cats[..6]).await;
    learn_all(&c, &root, "cup", &cups[..6]).await;
    info(&c, &root, |i| i["head"]["samples"] == 12).await;

    // Held-out images of the training domain: the drift alarm is computed and stays off.
    for k in 0..6 {
        predict(&c, &root, &format!("a{k}"), &cats[6 + k]).await;
        predict(&c, &root, &format!("b{k}"), &cups[6 + k]).await;
    }
    let quiet = c
        .wait_for(&format!("{root}/drift"), |m| {
            m.retain || m.json()["alarm"] == false
        })
        .await
        .json();
    assert_eq!(quiet["alarm"], false, "{quiet}");
    let quiet_distance = quiet["distance"].as_f64().expect("distance");

    // The camera moves: the alarm fires and predictions are corrected.
    let (scats, scups) = (shifted(&cats[12..20]), shifted(&cups[12..20]));
    for k in 0..8 {
        predict(&c, &root, &format!("sa{k}"), &scats[k]).await;
        predict(&c, &root, &format!("sb{k}"), &scups[k]).await;
    }
    let st = c
        .wait_for(&format!("{root}/stats"), |m| {
            m.json()["adapt"]["target_samples"].as_u64() >= Some(28)
        })
        .await
        .json();
    assert!(st["adapt"]["active"] == true, "{st}");
    let loud = c
        .wait_for(&format!("{root}/drift"), |m| m.json()["alarm"] == true)
        .await
        .json();
    let loud_distance = loud["distance"].as_f64().expect("distance");
    eprintln!("drift: same domain {quiet_distance:.3}, shifted {loud_distance:.3}");
    assert!(quiet_distance < 0.3 && loud_distance > 0.3);
    let p = predict(&c, &root, "sa-last", &scats[0]).await;
    assert_eq!(p["adapted"], "mean", "{p}");
    let stats = c
        .wait_for(&format!("{root}/stats"), |m| {
            m.json()["adapt"]["target_samples"].as_u64() >= Some(20)
        })
        .await
        .json();
    assert_eq!(stats["adapt"]["drift_alarm"], true, "{stats}");

    // Reset (the camera was re-aimed on purpose): the alarm clears, corrections stop.
    c.clear();
    c.publish(&format!("{root}/cmd/adapt-reset"), "").await;
    let r = result_of(&c, &root, "adapt-reset").await;
    assert_eq!(r["ok"], true);
    c.wait_for(&format!("{root}/drift"), |m| m.json()["alarm"] == false)
        .await;
    let p = predict(&c, &root, "after-reset", &scats[1]).await;
    assert!(p["adapted"].is_null(), "{p}");

    // Statistics survive a restart.
    for (k, img) in scups.iter().take(5).enumerate() {
        predict(&c, &root, &format!("r{k}"), img).await;
    }
    assert!(d.stop(), "clean stop");
    assert!(state.path().join("s").join("adapt.cbor").exists());
    c.clear();
    d.restart();
    let s = c
        .wait_for(&format!("{root}/stats"), |m| m.json()["adapt"].is_object())
        .await
        .json();
    // One prediction right after the reset, five before the stop.
    assert_eq!(s["adapt"]["target_samples"], 6, "{s}");
}

/// The review queue: with every close call offered (margin 1) and no rate limit, a prediction
/// comes on `{root}/review` with its top classes and a JPEG thumbnail; feedback on an offered id
/// still works after the one-entry feedback ring has forgotten it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_offers_predictions_with_thumbnails_and_keeps_them_for_feedback() {
    let Setup {
        broker: _broker,
        state: _state,
        mut d,
        c,
        root,
    } = setup(
        "rev",
        &[
            ("ADAPTD_SERVICE_REVIEW_MARGIN", "1"),
            ("ADAPTD_SERVICE_REVIEW_INTERVAL_SECS", "0"),
            ("ADAPTD_SERVICE_FEEDBACK_RING", "1"),
        ],
    )
    .await;
    learn_all(&c, &root, "cat", &variants("chelsea.jpg", 2, 60)).await;
    learn_all(&c, &root, "cup", &variants("coffee.jpg", 2, 61)).await;
    c.wait_count(&format!("{root}/learned"), 4).await;
    let odd = variants("astronaut.jpg", 1, 62);
    predict(&c, &root, "r1", &odd[0]).await;
    let offer = c
        .wait_for(&format!("{root}/review"), |m| m.json()["id"] == "r1")
        .await
        .json();
    assert!(
        offer["reason"] == "low_margin" || offer["reason"] == "unknown",
        "{offer}"
    );
    assert_eq!(offer["top"].as_array().map(Vec::len), Some(2), "{offer}");
    assert!(offer["margin"].as_f64().is_some(), "{offer}");
    let thumb = offer["thumbnail"].as_str().expect("a thumbnail");
    let jpeg = common::base64_decode(thumb);
    assert!(jpeg.starts_with(&[0xFF, 0xD8]), "not a JPEG");
    let img = image::load_from_memory(&jpeg).expect("thumbnail decodes");
    assert!(img.width().max(img.height()) <= 96);
    // Another prediction pushes r1 out of the feedback ring; the review queue kept it.
    predict(&c, &root, "r2", &variants("coffee.jpg", 1, 63)[0]).await;
    c.publish(
        &format!("{root}/feedback"),
        r#"{"id": "r1", "label": "astronaut"}"#,
    )
    .await;
    let learned = c
        .wait_for(&format!("{root}/learned"), |m| m.json()["id"] == "r1")
        .await
        .json();
    assert_eq!(learned["label"], "astronaut", "{learned}");
    assert!(d.stop());
}
