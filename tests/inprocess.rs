//! The daemon run inside the test process (as tokio's mini-redis tests run their server):
//! `adaptd::run` on the test's runtime with a oneshot channel as its shutdown future, a real
//! mosquitto, a fresh state directory, and the MQTT contract checked end to end through a real
//! client. Each test owns its broker and state directory, so the tests run in parallel.

mod common;

use std::path::Path;

use adaptd::head::{Expect, Head};
use common::{base64_encode, class_counts, info, learn_all, predict, variants, Client, InProcess};
use common::{result_of, Mosquitto, Msg};

/// Config file text on top of the defaults; the per-test keys come as `ADAPTD_*` pairs.
const CONFIG: &str = "[head]\nalgorithm = \"ncm\"\n";

/// Log to the test's output (shown for a failing test); `ADAPTD_LOG` as for the binary.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_new(
        std::env::var("ADAPTD_LOG").unwrap_or_else(|_| "warn,rumqttd=off".into()),
    )
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

fn start(broker: &Mosquitto, state: &Path, device: &str) -> InProcess {
    InProcess::start(InProcess::settings(
        CONFIG,
        &broker.url(),
        state,
        device,
        &[],
    ))
}

/// A test's broker, state directory and watching client, with adaptd started on them.
struct Setup {
    broker: Mosquitto,
    _tmp: tempfile::TempDir,
    state: std::path::PathBuf,
    root: String,
    c: Client,
}

impl Setup {
    /// Starts mosquitto and adaptd (device `device`) in-process and waits until it is online.
    async fn start(device: &str) -> (Setup, InProcess) {
        init_logging();
        let broker = Mosquitto::start();
        let tmp = tempfile::tempdir().expect("tmp");
        let state = tmp.path().join("state");
        let root = format!("adaptd/{device}");
        let c = Client::connect(broker.port, &[&format!("{root}/#")]).await;
        let d = start(&broker, &state, device);
        online(&c, &root).await;
        let setup = Setup {
            broker,
            _tmp: tmp,
            state,
            root,
            c,
        };
        (setup, d)
    }

    /// The parts, owned by the test (the temporary directory must outlive it).
    fn parts(
        self,
    ) -> (
        Mosquitto,
        tempfile::TempDir,
        std::path::PathBuf,
        String,
        Client,
    ) {
        (self.broker, self._tmp, self.state, self.root, self.c)
    }
}

async fn online(c: &Client, root: &str) {
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;
}

/// Sends `img` for inference with `id` and waits for the error that refuses it.
async fn refused(c: &Client, root: &str, id: &str, img: &[u8]) -> serde_json::Value {
    let req = serde_json::json!({"id": id, "image": base64_encode(img)}).to_string();
    c.publish(&format!("{root}/infer"), req).await;
    c.wait_for(&format!("{root}/error"), |m: &Msg| m.json()["id"] == id)
        .await
        .json()
}

fn label_of(p: &serde_json::Value) -> &str {
    p["label"].as_str().unwrap_or_default()
}

/// Learn two labels, infer with ids, survive malformed payloads, merge a head file taken from
/// the retained `{root}/head`; stop (`run` returns Ok, `offline`), run again on the same state
/// directory: the classes, merge included, are still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_infers_merges_and_keeps_its_classes_across_runs() {
    let (setup, d) = Setup::start("inproc-learn").await;
    let (broker, _tmp, state, root, c) = setup.parts();
    let root = root.as_str();

    let cats = variants("chelsea.jpg", 6, 41);
    let cups = variants("coffee.jpg", 6, 42);
    learn_all(&c, root, "cat", &cats[..4]).await;
    learn_all(&c, root, "cup", &cups[..4]).await;
    let learned = c.wait_count(&format!("{root}/learned"), 8).await;
    assert!(learned.iter().all(|m| {
        let l = m.json();
        (l["label"] == "cat" || l["label"] == "cup") && l["head_version"].as_u64().is_some()
    }));
    let i = info(&c, root, |i| i["head"]["samples"] == 8).await;
    let counts = class_counts(&i);
    assert_eq!(counts.get("cat"), Some(&4), "{i}");
    assert_eq!(counts.get("cup"), Some(&4), "{i}");
    let version = i["head"]["version"].as_u64().expect("head version");
    let sha = i["backbone"]["sha256"]
        .as_str()
        .expect("backbone sha256")
        .to_string();

    // Predictions follow the labels, with the request's id echoed.
    let p = predict(&c, root, "cat-1", &cats[4]).await;
    assert_eq!(
        (p["id"].as_str(), label_of(&p)),
        (Some("cat-1"), "cat"),
        "{p}"
    );
    let p = predict(&c, root, "cup-1", &cups[4]).await;
    assert_eq!(
        (p["id"].as_str(), label_of(&p)),
        (Some("cup-1"), "cup"),
        "{p}"
    );
    assert_eq!(p["head_version"].as_u64(), Some(version));

    // Malformed payloads get stable codes on {root}/error, change nothing, and the daemon
    // keeps serving.
    let infer = format!("{root}/infer");
    let jpeg = &cats[5];
    let bad: [(&[u8], &str, Option<&str>); 3] = [
        (&jpeg[..jpeg.len() / 2], "bad_payload", None),
        (
            b"{\"id\": \"bad-1\", \"imgae\": \"\"}",
            "bad_json",
            Some("bad-1"),
        ),
        (
            b"{\"id\": \"bad-2\", \"image\": \"!!!\"}",
            "bad_request",
            Some("bad-2"),
        ),
    ];
    for (n, (payload, code, id)) in bad.iter().enumerate() {
        c.publish(&infer, payload.to_vec()).await;
        let errors = c.wait_count(&format!("{root}/error"), n + 1).await;
        let e = errors[n].json();
        assert_eq!(e["code"], *code, "case {n}: {e}");
        assert_eq!(e["topic"], infer.as_str(), "case {n}: {e}");
        assert_eq!(e["id"].as_str(), *id, "case {n}: {e}");
        assert!(d.running(), "adaptd::run returned after case {n}");
    }
    let p = predict(&c, root, "cat-2", &cats[5]).await;
    assert_eq!(label_of(&p), "cat", "{p}");
    assert_eq!(p["head_version"].as_u64(), Some(version), "head unchanged");

    // cmd/merge with the head file a late subscriber gets retained on {root}/head: merging a
    // copy of the head doubles every class's samples (exact for ncm), classes unchanged.
    let late = Client::connect(broker.port, &[&format!("{root}/head")]).await;
    let head_msg = late.wait_for(&format!("{root}/head"), |m| m.retain).await;
    let expect = Expect {
        backbone_sha256: Some(&sha),
        dim: Some(1280),
        max_bytes: 64 << 20,
    };
    let head = Head::from_bytes(&head_msg.payload, &expect).expect("retained head loads");
    assert_eq!(head.samples(), 8);
    c.publish(&format!("{root}/cmd/merge"), head_msg.payload.clone())
        .await;
    let r = result_of(&c, root, "merge").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["classes"], 2, "{r}");
    let merged_version = r["head_version"].as_u64().expect("version");
    assert!(merged_version > version, "{r}");
    let i = info(&c, root, |i| i["head"]["samples"] == 16).await;
    let counts = class_counts(&i);
    assert_eq!(counts.get("cat"), Some(&8), "{i}");
    assert_eq!(counts.get("cup"), Some(&8), "{i}");
    let p = predict(&c, root, "cup-2", &cups[5]).await;
    assert_eq!(label_of(&p), "cup", "{p}");

    // Shutdown: run returns Ok after publishing offline.
    d.stop().await.expect("adaptd::run returns Ok on shutdown");
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"offline")
        .await;

    // Run again in-process on the same state directory: the classes persisted.
    c.clear();
    let d = start(&broker, &state, "inproc-learn");
    online(&c, root).await;
    let i = info(&c, root, |i| i["head"]["samples"] == 16).await;
    let counts = class_counts(&i);
    assert_eq!(counts.get("cat"), Some(&8), "{i}");
    assert_eq!(counts.get("cup"), Some(&8), "{i}");
    assert!(i["head"]["version"].as_u64() >= Some(merged_version), "{i}");
    let p = predict(&c, root, "cat-3", &cats[4]).await;
    assert_eq!(label_of(&p), "cat", "{p}");
    d.stop().await.expect("second run returns Ok");
}

/// cmd/reset empties the head: no classes, an inference is refused with `no_classes` (its id
/// echoed), and the empty head is what the next run on the same state directory starts from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_empties_the_head_durably() {
    let (setup, d) = Setup::start("inproc-reset").await;
    let (broker, _tmp, state, root, c) = setup.parts();
    let root = root.as_str();

    let cats = variants("chelsea.jpg", 3, 51);
    learn_all(&c, root, "cat", &cats[..2]).await;
    learn_all(&c, root, "cup", &variants("coffee.jpg", 2, 52)).await;
    let i = info(&c, root, |i| i["head"]["samples"] == 4).await;
    assert_eq!(class_counts(&i).len(), 2, "{i}");
    let version = i["head"]["version"].as_u64().expect("version");

    c.publish(&format!("{root}/cmd/reset"), "yes").await;
    let r = result_of(&c, root, "reset").await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["head_version"].as_u64() > Some(version), "{r}");
    let i = info(&c, root, |i| i["head"]["samples"] == 0).await;
    assert!(class_counts(&i).is_empty(), "{i}");
    let e = refused(&c, root, "after-reset", &cats[2]).await;
    assert_eq!(e["code"], "no_classes", "{e}");

    d.stop().await.expect("adaptd::run returns Ok on shutdown");
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"offline")
        .await;

    c.clear();
    let d = start(&broker, &state, "inproc-reset");
    online(&c, root).await;
    let i = info(&c, root, |_| true).await;
    assert_eq!(i["head"]["samples"], 0, "{i}");
    assert!(class_counts(&i).is_empty(), "{i}");
    let e = refused(&c, root, "after-restart", &cats[2]).await;
    assert_eq!(e["code"], "no_classes", "{e}");
    // Still learning after the reset and the restart.
    learn_all(&c, root, "cat", &cats[2..3]).await;
    let l = c.wait_count(&format!("{root}/learned"), 1).await;
    assert_eq!(l[0].json()["label"], "cat");
    info(&c, root, |i| i["head"]["samples"] == 1).await;
    d.stop().await.expect("second run returns Ok");
}
