//! The sensor backbone (MiniRocket as a plain-op ONNX graph, `models/minirocket-basicmotions*`,
//! made by `models/minirocket/build.py`) end to end: tract's features against aeon's own
//! transform (`tests/data/sensor/basicmotions_features.json`); `adaptd eval` on the UEA archive's
//! BasicMotions `.ts` files (official split, bundled in the aeon wheel, copied to
//! `tests/data/sensor/`); and a sensor board learning windows over MQTT in every form it takes,
//! refusing bad windows with stable codes without learning from them.

mod common;

use std::path::{Path, PathBuf};

use adaptd::eval::ts::TsFile;
use adaptd::model::{Embedder, Input, ModelDir};
use common::{class_counts, info, InProcess, Mosquitto, Msg};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn model_dir(name: &str) -> PathBuf {
    root().join("models").join(name)
}

fn embedder(name: &str) -> Embedder {
    let model = ModelDir::load(&model_dir(name)).expect("model.toml");
    Embedder::load(model, false).expect("the sensor model loads in tract")
}

fn basic_motions(split: &str) -> TsFile {
    TsFile::read(&root().join(format!("tests/data/sensor/BasicMotions_{split}.ts"))).expect("ts")
}

fn window(channels: &[Vec<Option<f64>>]) -> Input {
    Input::Window(channels.to_vec())
}

/// `adaptd eval --train TRAIN --test TEST --model MODEL --json [extra…]`.
fn eval(train: &Path, test: &Path, model: &Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_adaptd"))
        .arg("eval")
        .arg("--train")
        .arg(train)
        .arg("--test")
        .arg(test)
        .arg("--model")
        .arg(model)
        .arg("--json")
        .args(extra)
        .output()
        .expect("adaptd eval")
}

/// The JSON report of a successful `adaptd eval --json`.
fn report_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// tract's MiniRocket features equal aeon's `MiniRocket.transform` of the same windows. The graph
/// repeats aeon's float32 arithmetic in its order, so every convolution output lands on the same
/// side of every bias; a runtime that reorders the sums may move an output that ties with a bias,
/// a change of k/L (L ≤ 100 positions) in one feature: at most 0.1 % of the values may move, by
/// at most 2 positions. Below that, a value may differ in its last bits (tract's division).
#[test]
fn features_equal_aeon() {
    let e = embedder("minirocket-basicmotions");
    let path = root().join("tests/data/sensor/basicmotions_features.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("reference")).expect("json");
    assert_eq!(
        doc["model_sha256"].as_str(),
        Some(e.backbone.info().onnx_sha256.as_str()),
        "the reference was made for another model file"
    );
    let (mut values, mut moved, mut worst, mut rounding) = (0usize, 0usize, 0f64, 0f64);
    for case in doc["cases"].as_array().expect("cases") {
        let channels: Vec<Vec<Option<f64>>> =
            serde_json::from_value(case["window"].clone()).expect("window");
        let want: Vec<f64> = serde_json::from_value(case["features"].clone()).expect("features");
        let got = e.embed(&window(&channels)).expect("embed");
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            values += 1;
            let d = (f64::from(*g) - w).abs();
            // A moved position changes a feature by 1/L ≥ 0.01; rounding by ~1e-8.
            if d > 1e-6 {
                moved += 1;
                worst = worst.max(d);
            } else {
                rounding = rounding.max(d);
            }
        }
    }
    assert!(values > 10_000, "{values}");
    assert!(
        moved * 1000 <= values && worst <= 2.0 / 84.0 + 1e-9,
        "{moved} of {values} features moved from aeon's (worst by {worst})"
    );
    assert!(rounding <= 1e-7, "{rounding}");
}

/// `adaptd eval --train X_TRAIN.ts --test X_TEST.ts` with the sensor model: every learner on the
/// official BasicMotions split. MiniRocket + ridge classifies BasicMotions' four activities
/// (aeon's MiniRocket + RidgeClassifierCV: 40/40); the streaming ridge must miss at most one of
/// the 40 test windows. The image model is refused before anything is embedded.
#[test]
fn eval_reads_the_archive_files() {
    let cache = tempfile::tempdir().expect("cache");
    let (train, test) = (
        root().join("tests/data/sensor/BasicMotions_TRAIN.ts"),
        root().join("tests/data/sensor/BasicMotions_TEST.ts"),
    );
    let cache_dir = cache.path().to_str().expect("utf-8 path");
    let extra = ["--learners", "auto,ncm,slda,ridge", "--cache", cache_dir];
    let eval = |model: &str| eval(&train, &test, &model_dir(model), &extra);
    let report = report_of(&eval("minirocket-basicmotions"));
    assert_eq!(report["dataset"], "BasicMotions", "{report}");
    assert_eq!(report["dim"], 1344);
    assert_eq!(report["classes"], 4);
    assert_eq!(report["train"], 40);
    assert_eq!(report["test"], 40);
    let accuracy = |learner: &str| {
        report["results"]
            .as_array()
            .expect("results")
            .iter()
            .find(|r| r["learner"] == learner)
            .and_then(|r| r["accuracy"].as_f64())
            .unwrap_or_else(|| panic!("no {learner} in {report}"))
    };
    assert!(accuracy("ridge") >= 39.0 / 40.0 - 1e-9, "{report}");
    assert!(accuracy("auto") >= 39.0 / 40.0 - 1e-9, "{report}");
    let out = eval("efficientnet-lite0");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("need a sensor model"), "{err}");
}

/// The board's prediction of `window` sent whole as JSON `{"id", "window"}` on `{root}/infer`.
async fn predict(
    c: &common::Client,
    root: &str,
    id: &str,
    window: &[Vec<Option<f64>>],
) -> serde_json::Value {
    let req = serde_json::json!({"id": id, "window": window}).to_string();
    c.publish(&format!("{root}/infer"), req).await;
    c.wait_for(&format!("{root}/prediction"), |m: &Msg| {
        m.json()["id"] == id
    })
    .await
    .json()
}

/// A window as CSV: one reading per line, a header naming the channels.
fn csv(names: &[&str], channels: &[Vec<Option<f64>>]) -> String {
    let mut out = names.join(",") + "\n";
    for s in 0..channels[0].len() {
        let row: Vec<String> = channels
            .iter()
            .map(|c| c[s].map_or(String::new(), |v| v.to_string()))
            .collect();
        out += &row.join(",");
        out.push('\n');
    }
    out
}

/// A sensor board on the 3-axis model (`config` text and `ADAPTD_*` pairs on top), on a broker
/// of its own, online, and a client of its replies. Every part bound: a part dropped early would
/// stop the broker or the daemon.
struct Board {
    broker: Mosquitto,
    _tmp: tempfile::TempDir,
    c: common::Client,
    d: InProcess,
    root: String,
}

impl Board {
    async fn start(device: &str, config: &str, env: &[(&str, &str)]) -> Board {
        let broker = Mosquitto::start();
        let tmp = tempfile::tempdir().expect("tmp");
        let root = format!("adaptd/{device}");
        let topics: Vec<String> = ["status", "info", "learned", "prediction", "error"]
            .iter()
            .map(|t| format!("{root}/{t}"))
            .collect();
        let filters: Vec<&str> = topics.iter().map(String::as_str).collect();
        let c = common::Client::connect(broker.port, &filters).await;
        let model = model_dir("minirocket-basicmotions-acc")
            .display()
            .to_string();
        let mut pairs = vec![("ADAPTD_MODEL_DIR", model.as_str())];
        pairs.extend_from_slice(env);
        let d = InProcess::start(InProcess::settings(
            config,
            &broker.url(),
            &tmp.path().join("state"),
            device,
            &pairs,
        ));
        c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
            .await;
        Board {
            broker,
            _tmp: tmp,
            c,
            d,
            root,
        }
    }
}

/// A 3-axis board (the accelerometer channels of BasicMotions) learns the four activities over
/// MQTT from windows sent as JSON `{"window"}`, as CSV and as raw f32, predicts held-out windows
/// like the same head taught in-process, and refuses bad windows with stable codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_board_learns_windows_over_mqtt() {
    let Board {
        broker: _broker,
        _tmp,
        c,
        d,
        root: root_topic,
    } = Board::start("motion-1", "", &[]).await;
    let i = info(&c, &root_topic, |_| true).await;
    assert_eq!(i["backbone"]["modality"], "sensor", "{i}");
    assert_eq!(i["backbone"]["embedding_dim"], 1344, "{i}");
    assert_eq!(
        i["backbone"]["sensor"],
        serde_json::json!({"channels": ["x", "y", "z"], "samples": 100, "normalise": "none"}),
        "{i}"
    );

    // The accelerometer: the first three channels of each series.
    let acc = |f: &TsFile| -> Vec<(Vec<Vec<Option<f64>>>, String)> {
        f.series
            .iter()
            .map(|(s, label)| (s[..3].to_vec(), label.clone()))
            .collect()
    };
    let (train, test) = (acc(&basic_motions("TRAIN")), acc(&basic_motions("TEST")));
    for (n, (w, label)) in train.iter().enumerate() {
        let topic = format!("{root_topic}/learn/{label}");
        match n % 3 {
            0 => {
                let req = serde_json::json!({"id": format!("l{n}"), "label": label, "window": w});
                c.publish(&format!("{root_topic}/learn"), req.to_string())
                    .await
            }
            1 => c.publish(&topic, csv(&["x", "y", "z"], w)).await,
            _ => {
                let raw: Vec<u8> = w
                    .iter()
                    .flatten()
                    .flat_map(|v| (v.unwrap_or(f64::NAN) as f32).to_le_bytes())
                    .collect();
                c.publish(&topic, raw).await
            }
        }
    }
    let i = info(&c, &root_topic, |i| i["head"]["samples"] == train.len()).await;
    // None refused (a raw window may start with the byte of `{`: still a window).
    assert!(
        c.on(&format!("{root_topic}/error")).is_empty(),
        "{:?}",
        c.on(&format!("{root_topic}/error"))
            .iter()
            .map(Msg::json)
            .collect::<Vec<_>>()
    );
    assert_eq!(class_counts(&i).len(), 4, "{i}");

    // The same head taught in-process from the same windows predicts like the board.
    let e = embedder("minirocket-basicmotions-acc");
    let mut head = adaptd::head::Head::new(
        &adaptd::head::HeadConfig::default(),
        1344,
        &e.backbone.info().sha256,
    );
    for (w, label) in &train {
        head.update(&e.embed(&window(w)).expect("embed"), label)
            .expect("update");
    }
    let mut correct = 0;
    for (n, (w, label)) in test.iter().enumerate() {
        let p = predict(&c, &root_topic, &format!("t{n}"), w).await;
        let local = head
            .snapshot()
            .predict(&e.embed(&window(w)).expect("embed"), 1)
            .expect("predict");
        // The best class (the published label may be `unknown` under the open-set threshold).
        let top = p["top"][0]["label"].as_str();
        assert_eq!(top, local.top.first().map(|s| s.label.as_str()), "{p}");
        correct += usize::from(top == Some(label.as_str()));
    }
    // BasicMotions from its accelerometer alone: aeon's MiniRocket on these three channels
    // classifies 39 or 40 of the 40; the board must get at least 36.
    assert!(correct >= 36, "{correct} of {}", test.len());

    // Refused, with stable codes; nothing is learned from them.
    let good = &test[0].0;
    let mut gap = good.clone();
    gap[1][7] = None;
    let cases = [
        (
            "two",
            serde_json::json!({"id": "two", "window": &good[..2]}).to_string(),
            "wrong_channels",
        ),
        (
            "short",
            serde_json::json!({"id": "short", "window": good.iter().map(|c| &c[..50]).collect::<Vec<_>>()})
                .to_string(),
            "wrong_length",
        ),
        (
            "gap",
            serde_json::json!({"id": "gap", "window": gap}).to_string(),
            "missing_value",
        ),
        (
            "text",
            serde_json::json!({"id": "text", "text": "walking"}).to_string(),
            "wrong_modality",
        ),
    ];
    for (id, req, want) in &cases {
        c.publish(&format!("{root_topic}/learn/Walking"), req.clone())
            .await;
        let e = c
            .wait_for(&format!("{root_topic}/error"), |m: &Msg| {
                m.json()["id"] == *id
            })
            .await
            .json();
        assert_eq!(e["code"], *want, "{e}");
    }
    for (payload, want) in [
        (csv(&["x", "y", "q"], good).into_bytes(), "bad_csv"),
        (csv(&["x", "y", "z"], &gap).into_bytes(), "missing_value"),
        (
            std::fs::read(common::fixture("chelsea.jpg")).expect("photo"),
            "wrong_modality",
        ),
    ] {
        c.publish(&format!("{root_topic}/learn/Walking"), payload)
            .await;
        c.wait_for(&format!("{root_topic}/error"), |m: &Msg| {
            m.json()["code"] == want
        })
        .await;
    }
    // The next window is learned after the refusals: one more sample, none from them.
    c.publish(
        &format!("{root_topic}/learn/Walking"),
        csv(&["x", "y", "z"], good),
    )
    .await;
    info(&c, &root_topic, |i| i["head"]["samples"] == train.len() + 1).await;
    d.stop().await.expect("clean stop");
}

/// A 3-axis stream published reading by reading (`[[sources]] kind = "readings"`, JSON
/// `{"x", "y", "z", "t"}` per message) and in batches (`[[x, y, z], …]`) is cut into the model's
/// windows and predicted exactly as the same windows sent whole; bad readings are refused with
/// their codes and change no stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_streamed_one_by_one_predict_like_whole_windows() {
    let config = "[[sources]]\ntopic = \"sensors/+/imu\"\nkind = \"readings\"\n";
    // Predictions must not move between the two ways of sending.
    let Board {
        broker: _broker,
        _tmp,
        c,
        d,
        root: root_topic,
    } = Board::start("motion-2", config, &[("ADAPTD_ADAPT_METHOD", "none")]).await;
    let train = basic_motions("TRAIN");
    for (w, label) in &train.series {
        let req = serde_json::json!({"label": label, "window": &w[..3]});
        c.publish(&format!("{root_topic}/learn"), req.to_string())
            .await;
    }
    info(&c, &root_topic, |i| {
        i["head"]["samples"] == train.series.len()
    })
    .await;

    // Three test windows of different activities, whole and as one stream of 300 readings.
    let test = basic_motions("TEST");
    let picks: Vec<&Vec<Vec<Option<f64>>>> = [0usize, 15, 30]
        .iter()
        .map(|&i| &test.series[i].0)
        .collect();
    let mut whole = Vec::new();
    for (n, w) in picks.iter().enumerate() {
        whole.push(predict(&c, &root_topic, &format!("whole-{n}"), &w[..3]).await);
    }
    let readings: Vec<[f64; 3]> = picks
        .iter()
        .flat_map(|w| (0..100).map(move |s| [0, 1, 2].map(|c| w[c][s].expect("value"))))
        .collect();
    for (i, r) in readings.iter().enumerate() {
        let msg = serde_json::json!({"x": r[0], "y": r[1], "z": r[2], "t": i as f64 * 0.1});
        c.publish("sensors/wrist/imu", msg.to_string()).await;
    }
    for batch in readings.chunks(25) {
        c.publish(
            "sensors/ankle/imu",
            serde_json::to_string(batch).expect("json"),
        )
        .await;
    }
    for topic in ["sensors/wrist/imu", "sensors/ankle/imu"] {
        for (n, want) in whole.iter().enumerate() {
            let span = serde_json::json!([n * 100, n * 100 + 99]);
            let p = c
                .wait_for(&format!("{root_topic}/prediction"), |m: &Msg| {
                    m.json()["source"] == topic && m.json()["readings"] == span
                })
                .await
                .json();
            assert_eq!(
                p["top"][0]["label"], want["top"][0]["label"],
                "{topic}: {p}"
            );
            let (a, b) = (
                p["top"][0]["score"].as_f64().expect("score"),
                want["top"][0]["score"].as_f64().expect("score"),
            );
            assert!((a - b).abs() < 1e-5, "{topic} window {n}: {a} vs {b}");
        }
    }

    // Bad readings, each on its own stream: refused whole, with their codes.
    let bad = [
        (
            "sensors/gap/imu",
            vec![r#"{"x": 1, "y": 2}"#],
            "missing_value",
        ),
        ("sensors/two/imu", vec!["[1, 2]"], "wrong_channels"),
        ("sensors/csv/imu", vec!["1,two,3"], "bad_csv"),
        (
            "sensors/late/imu",
            vec![
                r#"{"x": 1, "y": 2, "z": 3, "t": 5}"#,
                r#"{"x": 1, "y": 2, "z": 3, "t": 4}"#,
            ],
            "out_of_order",
        ),
    ];
    for (topic, messages, want) in &bad {
        for m in messages {
            c.publish(topic, m.as_bytes().to_vec()).await;
        }
        let e = c
            .wait_for(&format!("{root_topic}/error"), |m: &Msg| {
                m.json()["topic"] == *topic
            })
            .await
            .json();
        assert_eq!(e["code"], *want, "{e}");
    }
    // No window was cut from them: the only stream predictions are the six above.
    let streamed = c
        .on(&format!("{root_topic}/prediction"))
        .iter()
        .filter(|m| m.json()["readings"].is_array())
        .count();
    assert_eq!(streamed, 6);
    d.stop().await.expect("clean stop");
}

/// A folder per class of `.csv` windows (a reading per line, a header naming the channels) and
/// `.json` windows is a sensor dataset: `adaptd eval --model <sensor model>` embeds them (with another model a `.csv`
/// stays an embedding file), and `adaptd teach` sends them to a sensor board, leaving out a stray
/// photo and a note that the board's model does not take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_of_csv_windows_are_evaluated_and_taught() {
    let tmp = tempfile::tempdir().expect("tmp");
    for (split, dir) in [("TRAIN", "train"), ("TEST", "test")] {
        for (n, (w, label)) in basic_motions(split).series.iter().enumerate() {
            // Most as CSV; every fourth as JSON, bare channel arrays or {"window": …}.
            let (name, body) = match n % 8 {
                3 => (format!("{n}.json"), serde_json::json!(&w[..3]).to_string()),
                7 => (
                    format!("{n}.json"),
                    serde_json::json!({"window": &w[..3]}).to_string(),
                ),
                _ => (format!("{n}.csv"), csv(&["x", "y", "z"], &w[..3])),
            };
            let path = tmp.path().join(dir).join(label).join(name);
            std::fs::create_dir_all(path.parent().expect("class")).expect("mkdir");
            std::fs::write(&path, body).expect("write");
        }
    }
    let report = report_of(&eval(
        &tmp.path().join("train"),
        &tmp.path().join("test"),
        &model_dir("minirocket-basicmotions-acc"),
        &["--no-cache", "--learners", "ridge,slda"],
    ));
    assert_eq!(
        (report["train"].as_u64(), report["test"].as_u64()),
        (Some(40), Some(40))
    );
    assert_eq!(report["dim"], 1344);
    for r in report["results"].as_array().expect("results") {
        // The accelerometer alone: at least 36 of the 40 test windows (as over MQTT above).
        assert!(r["accuracy"].as_f64().expect("accuracy") >= 0.9, "{r}");
    }

    let train = tmp.path().join("train");
    std::fs::write(train.join("Walking").join("notes.txt"), "left out").expect("note");
    std::fs::copy(
        common::fixture("chelsea.jpg"),
        train.join("Running").join("photo.jpg"),
    )
    .expect("photo");
    let Board {
        broker,
        _tmp,
        c,
        d,
        root,
    } = Board::start("motion-3", "", &[]).await;
    // Off the runtime: the in-process daemon runs on it while teach waits for its replies.
    let mut teach = std::process::Command::new(env!("CARGO_BIN_EXE_adaptd"));
    teach
        .arg("teach")
        .arg("--broker")
        .arg(broker.url())
        .arg("--journal")
        .arg(tmp.path().join("journal.json"))
        .arg("--root")
        .arg(&root)
        .arg(&train);
    let out = tokio::task::spawn_blocking(move || teach.output().expect("adaptd teach"))
        .await
        .expect("join");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("learned 40,"), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("leaving out 2 file(s) that are not sensor windows"),
        "{stderr}"
    );
    let i = info(&c, &root, |i| i["head"]["samples"] == 40).await;
    assert_eq!(class_counts(&i).len(), 4, "{i}");
    d.stop().await.expect("clean stop");
}
