//! The text model end to end against its reference (Hugging Face `tokenizers` + onnxruntime,
//! `tests/data/text/`, made by `tests/data/text/make_refs.py`): token ids on a corpus of hard
//! cases, tract's sentence embeddings; refusals of payloads a text board does not take; and the
//! daemon learning intents from a few sentences over MQTT, from its own topics and from a voice
//! assistant's transcript topic; two text boards sharing what they learn through the fleet.
//!
//! Needs the model file: `models/paraphrase-minilm-l3/fetch` (`.ci/run` runs it).

mod common;

use std::path::{Path, PathBuf};

use adaptd::model::text::Tokenizer;
use adaptd::model::{EmbedError, Embedder, Input, ModelDir};
use common::{base64_encode, class_counts, info, InProcess, Mosquitto, Msg};

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/paraphrase-minilm-l3")
}

fn model() -> ModelDir {
    ModelDir::load(&model_dir()).expect("models/paraphrase-minilm-l3")
}

fn embedder() -> Embedder {
    Embedder::load(model(), false).unwrap_or_else(|e| {
        panic!("{e} (run models/paraphrase-minilm-l3/fetch once; .ci/run does)")
    })
}

fn reference(name: &str) -> Vec<serde_json::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/text")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("reference file");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("reference JSON");
    doc["cases"].as_array().expect("cases").clone()
}

fn ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_i64().expect("id"))
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Every case of the corpus (accents, CJK, emoji, control characters, punctuation runs, numbers,
/// long words, whitespace-only, empty, truncation) gets exactly the reference's ids.
#[test]
fn token_ids_equal_the_reference_tokenizer() {
    let m = model();
    let text = m.spec.text.as_ref().expect("[text]");
    let tokenizer = Tokenizer::load(&m.dir, text).expect("vocabulary");
    assert_eq!(tokenizer.vocab_len(), 30522);
    let cases = reference("tokenizer_cases.json");
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut wrong = Vec::new();
    for case in &cases {
        let text = case["text"].as_str().expect("text");
        let got = tokenizer.encode(text).ids;
        let want = ids(&case["ids"]);
        if got != want {
            wrong.push(format!("{text:?}\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {}:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

/// tract's embedding of each reference sentence equals onnxruntime's (cosine ≥ 0.9999), for
/// the reference's ids.
#[test]
fn embeddings_equal_onnxruntime() {
    let e = embedder();
    assert_eq!(e.backbone.info().embedding_dim, 384);
    let tokenizer = e.tokenizer.as_ref().expect("tokenizer");
    let mut worst = (1.0f64, String::new());
    for case in reference("embeddings.json") {
        let text = case["text"].as_str().expect("text");
        let want: Vec<f32> = case["embedding"]
            .as_array()
            .expect("embedding")
            .iter()
            .map(|x| x.as_f64().expect("float") as f32)
            .collect();
        let tokens = tokenizer.encode(text).ids;
        assert_eq!(tokens, ids(&case["ids"]), "{text:?}");
        let got = e.backbone.run_tokens(&tokens).expect("embedding");
        let c = cosine(&got, &want);
        if c < worst.0 {
            worst = (c, text.to_string());
        }
        if !text.is_empty() {
            // The payload path gives the same embedding.
            let via = e
                .embed(&Input::Payload(text.as_bytes().to_vec().into()))
                .expect("embed");
            assert_eq!(via, got, "{text:?}");
        }
    }
    assert!(worst.0 >= 0.9999, "cosine {} for {:?}", worst.0, worst.1);
}

/// Payloads a text board does not take are refused with stable codes.
#[test]
fn payloads_a_text_model_does_not_take_are_refused() {
    let e = embedder();
    let code = |input: Input| match e.embed(&input) {
        Err(err) => err.code(),
        Ok(_) => "accepted",
    };
    let payload = |b: &[u8]| Input::Payload(b.to_vec().into());
    assert_eq!(code(payload(b"\xff\xfeno")), "invalid_text");
    assert_eq!(code(payload(b"")), "empty_text");
    assert_eq!(code(Input::Text(String::new())), "empty_text");
    let limit = e.tokenizer.as_ref().expect("tokenizer").spec().max_bytes;
    assert_eq!(code(payload(&vec![b'a'; limit + 1])), "too_long");
    assert_eq!(code(Input::Text("word ".repeat(limit))), "too_long");
    let photo = std::fs::read(common::fixture("chelsea.jpg")).expect("photo");
    assert_eq!(code(payload(&photo)), "wrong_modality");
    assert_eq!(code(Input::Image(photo)), "wrong_modality");
    assert_eq!(code(Input::Tensor(vec![0.0; 128])), "wrong_modality");
    let wav = adaptd::model::audio::encode_wav(&[0.0; 1600], 16000, 1).expect("wav");
    assert_eq!(code(payload(&wav)), "wrong_modality");
    // Whitespace-only is a text ([CLS] [SEP]); a long text is cut, not refused.
    assert_eq!(code(payload(b" \t\n")), "accepted");
    assert_eq!(
        code(payload("turn the light off ".repeat(100).as_bytes())),
        "accepted"
    );
    match e.embed(&payload(b"\xff")) {
        Err(EmbedError::Text(err)) => assert!(err.to_string().contains("UTF-8"), "{err}"),
        other => panic!("{other:?}"),
    }
}

const INTENTS: [(&str, [&str; 5]); 3] = [
    (
        "lights_off",
        [
            "turn the porch light off",
            "switch off the lights in the kitchen",
            "lights off please",
            "kill the lamp in the bedroom",
            "could you turn off the hallway light",
        ],
    ),
    (
        "weather",
        [
            "what's the weather like tomorrow",
            "will it rain this afternoon",
            "how cold is it outside",
            "is it going to snow tonight",
            "do I need an umbrella today",
        ],
    ),
    (
        "timer",
        [
            "set a timer for ten minutes",
            "start a five minute countdown",
            "remind me in half an hour",
            "timer for 20 minutes please",
            "wake me up in an hour",
        ],
    ),
];

/// A text board learns three intents from three sentences each (raw UTF-8 on `learn/{label}`
/// and JSON `{"text", "label"}` on `learn`), predicts held-out sentences, takes a voice
/// assistant's transcripts from a `[[sources]]` topic with `text_field`, and refuses bad
/// payloads with stable codes without learning anything from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_learns_intents_from_a_few_sentences() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().expect("tmp");
    let root = "adaptd/text-1";
    let c = common::Client::connect(broker.port, &[&format!("{root}/#")]).await;
    let model = model_dir().display().to_string();
    let config = "[[sources]]\ntopic = \"hermes/asr/textCaptured\"\ntext_field = \"text\"\n";
    let d = InProcess::start(InProcess::settings(
        config,
        &broker.url(),
        &tmp.path().join("state"),
        "text-1",
        &[("ADAPTD_MODEL_DIR", model.as_str())],
    ));
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;
    let i = info(&c, root, |_| true).await;
    assert_eq!(i["backbone"]["name"], "paraphrase-minilm-l3", "{i}");
    assert_eq!(i["backbone"]["modality"], "text", "{i}");
    assert_eq!(i["backbone"]["embedding_dim"], 384, "{i}");
    assert_eq!(i["backbone"]["text"]["max_tokens"], 128, "{i}");

    for (label, sentences) in INTENTS {
        for (n, s) in sentences[..3].iter().enumerate() {
            if n == 0 {
                let req = serde_json::json!({"text": s, "label": label}).to_string();
                c.publish(&format!("{root}/learn"), req).await;
            } else {
                c.publish(&format!("{root}/learn/{label}"), s.as_bytes().to_vec())
                    .await;
            }
        }
    }
    let i = info(&c, root, |i| i["head"]["samples"] == 9).await;
    let counts = class_counts(&i);
    for (label, _) in INTENTS {
        assert_eq!(counts.get(label), Some(&3), "{i}");
    }
    for (label, sentences) in INTENTS {
        for (n, s) in sentences[3..].iter().enumerate() {
            let id = format!("{label}-{n}");
            let req = serde_json::json!({"id": id, "text": s}).to_string();
            c.publish(&format!("{root}/infer"), req).await;
            let p = c
                .wait_for(&format!("{root}/prediction"), |m: &Msg| {
                    m.json()["id"] == id
                })
                .await
                .json();
            assert_eq!(p["label"], label, "{s:?}: {p}");
        }
    }
    // Rhasspy's transcript message: the text is its "text" field, the rest is ignored.
    let hermes = serde_json::json!({
        "text": "please switch the garage light off",
        "likelihood": 0.93,
        "seconds": 1.2,
        "siteId": "kitchen",
        "sessionId": "s-1",
    });
    c.publish("hermes/asr/textCaptured", hermes.to_string())
        .await;
    let p = c
        .wait_for(&format!("{root}/prediction"), |m: &Msg| {
            m.json()["source"] == "hermes/asr/textCaptured"
        })
        .await
        .json();
    assert_eq!(p["label"], "lights_off", "{p}");

    // Refused, with stable codes; nothing is learned from them.
    let photo = std::fs::read(common::fixture("chelsea.jpg")).expect("photo");
    let bad = [
        (
            "empty",
            serde_json::json!({"id": "empty", "text": ""}),
            "empty_text",
        ),
        (
            "long",
            serde_json::json!({"id": "long", "text": "x".repeat(9000)}),
            "too_long",
        ),
        (
            "photo",
            serde_json::json!({"id": "photo", "image": base64_encode(&photo)}),
            "wrong_modality",
        ),
        (
            "both",
            serde_json::json!({"id": "both", "text": "hi", "tensor": [1.0]}),
            "bad_request",
        ),
    ];
    for (id, req, want) in &bad {
        c.publish(&format!("{root}/learn/weather"), req.to_string())
            .await;
        let e = c
            .wait_for(&format!("{root}/error"), |m: &Msg| m.json()["id"] == *id)
            .await
            .json();
        assert_eq!(e["code"], *want, "{e}");
    }
    c.publish(
        &format!("{root}/learn/weather"),
        b"\xc3\x28 broken".to_vec(),
    )
    .await;
    c.wait_for(&format!("{root}/error"), |m: &Msg| {
        m.json()["code"] == "invalid_text"
    })
    .await;
    c.publish(&format!("{root}/learn/weather"), photo).await;
    c.wait_for(&format!("{root}/error"), |m: &Msg| {
        m.json()["code"] == "wrong_modality" && m.json()["id"].is_null()
    })
    .await;
    // The next sample is learned after the refusals (arrival order): 10 samples, none extra.
    c.publish(
        &format!("{root}/learn/weather"),
        "is it sunny in Zürich".as_bytes().to_vec(),
    )
    .await;
    let i = info(&c, root, |i| i["head"]["samples"] == 10).await;
    assert_eq!(class_counts(&i).get("weather"), Some(&4), "{i}");
    d.stop().await.expect("clean stop");
}

/// Two text boards in a fleet: each learns its own intents, and through the merged fleet head
/// each recognises the other's; a correction (`feedback` on a prediction's id) starts a new
/// class on one board, and the other board learns it from the fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_boards_share_what_they_learn_and_a_correction_starts_a_class() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().expect("tmp");
    let (sa, sb) = (tmp.path().join("a"), tmp.path().join("b"));
    let key = |dir: &Path| {
        adaptd::fleet::Identity::load_or_create(dir)
            .expect("key")
            .public_hex()
    };
    let trusted = format!("[\"{}\", \"{}\"]", key(&sa), key(&sb));
    let model = model_dir().display().to_string();
    let env = [
        ("ADAPTD_MODEL_DIR", model.as_str()),
        ("ADAPTD_FLEET_GROUP", "house"),
        ("ADAPTD_FLEET_TRUSTED_KEYS", trusted.as_str()),
    ];
    let (ra, rb) = ("adaptd/text-a", "adaptd/text-b");
    let c = common::Client::connect(broker.port, &[&format!("{ra}/#"), &format!("{rb}/#")]).await;
    let a = InProcess::start(InProcess::settings("", &broker.url(), &sa, "text-a", &env));
    let b = InProcess::start(InProcess::settings("", &broker.url(), &sb, "text-b", &env));
    for root in [ra, rb] {
        c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
            .await;
    }
    // A learns lights and timers, B the weather.
    for (root, (label, sentences)) in [(ra, INTENTS[0]), (ra, INTENTS[2]), (rb, INTENTS[1])] {
        for s in &sentences[..3] {
            c.publish(&format!("{root}/learn/{label}"), s.as_bytes().to_vec())
                .await;
        }
    }
    info(&c, ra, |i| {
        i["head"]["samples"] == 6 && i["fleet"]["peers"][0]["samples"] == 3
    })
    .await;
    info(&c, rb, |i| {
        i["head"]["samples"] == 3 && i["fleet"]["peers"][0]["samples"] == 6
    })
    .await;
    let predict = |root: &'static str, id: String, text: &'static str| {
        let c = &c;
        async move {
            let req = serde_json::json!({"id": id, "text": text}).to_string();
            c.publish(&format!("{root}/infer"), req).await;
            c.wait_for(&format!("{root}/prediction"), |m: &Msg| {
                m.json()["id"] == id
            })
            .await
            .json()
        }
    };
    // Each board recognises every intent, its own and its peer's.
    for root in [ra, rb] {
        for (label, sentences) in INTENTS {
            for (n, s) in sentences[3..].iter().enumerate() {
                let p = predict(root, format!("{label}-{n}"), s).await;
                assert_eq!(p["label"], label, "{root}: {s:?}: {p}");
            }
        }
    }
    // A sentence of none of the intents, corrected on A: a new class there, then on B.
    let p = predict(ra, "m-1".into(), "play some jazz in the living room").await;
    assert_ne!(p["label"], "music", "{p}");
    let fb = serde_json::json!({"id": "m-1", "label": "music"}).to_string();
    c.publish(&format!("{ra}/feedback"), fb).await;
    let i = info(&c, ra, |i| i["head"]["samples"] == 7).await;
    assert_eq!(class_counts(&i).get("music"), Some(&1), "{i}");
    info(&c, rb, |i| i["fleet"]["peers"][0]["samples"] == 7).await;
    let p = predict(rb, "m-2".into(), "play some rock music").await;
    assert_eq!(p["label"], "music", "{p}");
    a.stop().await.expect("clean stop");
    b.stop().await.expect("clean stop");
}

/// `adaptd eval` on a folder of `.txt` files (one sample per file) with the text model: the
/// texts are tokenized and embedded, the learners are scored on held-out sentences, the report
/// names the model's identity; with the image model the same folder is refused before anything
/// is embedded, naming the text model to use.
#[test]
fn eval_learns_a_folder_of_texts() {
    let data = tempfile::tempdir().expect("tempdir");
    for (label, sentences) in INTENTS {
        let dir = data.path().join(label);
        std::fs::create_dir_all(&dir).expect("class dir");
        for (i, s) in sentences.iter().enumerate() {
            std::fs::write(dir.join(format!("{i}.txt")), s).expect("write text");
        }
    }
    let cache = tempfile::tempdir().expect("cache");
    let eval = |model: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_adaptd"))
            .arg("eval")
            .arg("--data")
            .arg(data.path())
            .arg("--model")
            .arg(model)
            .arg("--cache")
            .arg(cache.path())
            .args(["--test-fraction", "0.4", "--learners", "auto,ncm", "--json"])
            .output()
            .expect("adaptd eval")
    };
    let out = eval(&model_dir());
    assert!(
        out.status.success(),
        "eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["dim"], 384);
    assert_eq!(report["classes"], 3);
    assert_eq!(
        report["backbone_sha256"],
        embedder().backbone.info().sha256.as_str(),
        "{report}"
    );
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    for r in results {
        // Three plainly different intents from three sentences each: at most one of the six
        // held-out sentences is missed.
        let accuracy = r["accuracy"].as_f64().expect("accuracy");
        assert!(accuracy >= 5.0 / 6.0 - 1e-9, "{r}");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = eval(&root.join("models/efficientnet-lite0"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("models/paraphrase-minilm-l3"), "{err}");
}
