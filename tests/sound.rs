//! The shipped sound model end to end against its reference (numpy float64 front-end +
//! onnxruntime, `tests/fixtures/sound/reference.json`): the Rust front-end's log-mel, the
//! windows, tract's embeddings, the clip mean; resampling and down-mixing; the model identity;
//! refusals of payloads the model does not take; and the daemon learning sounds over MQTT.

mod common;

use std::path::{Path, PathBuf};

use adaptd::model::{EmbedError, Embedder, Input, ModelDir};
use common::{base64_encode, class_counts, info, InProcess, Mosquitto, Msg};

fn sound_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sound")
}

fn model() -> ModelDir {
    ModelDir::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/yamnet-l10"))
        .expect("models/yamnet-l10")
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(sound_dir().join("reference.json")).expect("reference");
    serde_json::from_str(&text).expect("reference.json")
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .flat_map(|x| match x.as_array() {
            Some(_) => floats(x),
            None => vec![x.as_f64().expect("number") as f32],
        })
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

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn wav(name: &str) -> Vec<u8> {
    std::fs::read(sound_dir().join(name)).expect("fixture WAV")
}

#[test]
fn clips_match_the_reference_front_end_and_onnxruntime() {
    let reference = reference();
    let embedder = Embedder::load(model(), false).expect("load yamnet-l10");
    assert_eq!(
        reference["model_sha256"].as_str(),
        Some(embedder.backbone.info().onnx_sha256.as_str())
    );
    let mut checked = 0;
    for clip in reference["clips"].as_array().expect("clips") {
        if clip.get("reference_from").is_some() {
            continue;
        }
        let file = clip["file"].as_str().expect("file");
        let bytes = wav(file);
        let patches = embedder.preprocess_payload(&bytes).expect(file);
        assert_eq!(
            patches.len() as u64,
            clip["num_patches"].as_u64().expect("num_patches"),
            "{file}: windows"
        );
        // Log-mel: float32 against float64. Near the log floor of pure tones (mel energy ≈ 0,
        // where ln(x + 0.001) magnifies rounding 1000×) the absolute error is largest; on
        // average it is float32 rounding.
        let want = floats(&clip["first_patch_logmel"]);
        let err = max_abs(&patches[0], &want);
        let mean_err = patches[0]
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / want.len() as f32;
        assert!(
            err < 5e-3 && mean_err < 1e-4,
            "{file}: log-mel max {err}, mean {mean_err}"
        );
        // Each window's embedding through tract.
        let windows = clip["embeddings"].as_array().expect("embeddings");
        for (i, (patch, want)) in patches.iter().zip(windows).enumerate() {
            let got = embedder.backbone.embed(patch).expect("embed window");
            let want = floats(want);
            let c = cosine(&got, &want);
            assert!(c >= 0.9999, "{file} window {i}: cosine {c}");
        }
        // The clip embedding, through the one embedding path.
        let got = embedder
            .embed(&Input::Payload(bytes.clone().into()))
            .expect("embed clip");
        let want = floats(&clip["mean_embedding"]);
        let c = cosine(&got, &want);
        let e = max_abs(&got, &want);
        assert!(
            c >= 0.9999 && e < 0.02,
            "{file}: clip cosine {c}, max abs {e}"
        );
        checked += 1;
    }
    assert_eq!(checked, 5);
}

#[test]
fn resampled_stereo_matches_its_sox_conversion() {
    let reference = reference();
    let clips = reference["clips"].as_array().expect("clips");
    let mono = clips
        .iter()
        .find(|c| c["file"] == "stereo_44k_16k_mono.wav")
        .expect("converted clip");
    let embedder = Embedder::load(model(), false).expect("load yamnet-l10");
    let got = embedder
        .embed_payload(&wav("stereo_44k.wav"))
        .expect("44.1 kHz stereo");
    let c = cosine(&got, &floats(&mono["mean_embedding"]));
    // Two different resamplers (rubato's FFT, SoX's polyphase): the same sound, not the same bits.
    assert!(c >= 0.999, "cosine {c} to SoX's 16 kHz mono conversion");
}

#[test]
fn pcm_in_a_request_equals_the_same_samples_in_a_wav() {
    let embedder = Embedder::load(model(), false).expect("load yamnet-l10");
    let bytes = wav("doorbell.wav");
    let from_wav = embedder.embed_payload(&bytes).expect("wav");
    let reader = hound::WavReader::new(std::io::Cursor::new(&bytes)).expect("reader");
    let pcm: Vec<u8> = reader
        .into_samples::<i16>()
        .flat_map(|s| s.expect("sample").to_le_bytes())
        .collect();
    let clip = adaptd::model::audio::pcm_s16le(&pcm, 16000).expect("pcm");
    let from_pcm = embedder.embed(&Input::Pcm(clip)).expect("pcm clip");
    assert_eq!(from_wav, from_pcm);
}

#[test]
fn the_identity_covers_the_file_and_the_recipe() {
    let dir = model();
    let embedder = Embedder::load(dir.clone(), false).expect("load");
    let info = embedder.backbone.info();
    assert_ne!(info.sha256, info.onnx_sha256);
    assert_eq!(info.sha256, dir.spec.identity(&info.onnx_sha256));
    let mut other = dir.spec.clone();
    if let Some(a) = other.audio.as_mut() {
        a.fmax = 8000.0;
    }
    assert_ne!(other.identity(&info.onnx_sha256), info.sha256);
    // The duration limit does not change what a clip embeds to.
    let mut longer = dir.spec.clone();
    if let Some(a) = longer.audio.as_mut() {
        a.max_seconds = 60.0;
    }
    assert_eq!(longer.identity(&info.onnx_sha256), info.sha256);
    // An image model's identity stays its file's hash (heads learned before sound existed).
    let image = ModelDir::shipped().expect("shipped model");
    assert_eq!(image.spec.identity("abc"), "abc");
}

#[test]
fn payloads_the_model_does_not_take_are_refused_with_stable_codes() {
    let sound = Embedder::load(model(), false).expect("load yamnet-l10");
    let jpeg =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chelsea.jpg"))
            .expect("photo");
    let code = |e: EmbedError| (e.code(), e.to_string());
    let (c, msg) = code(sound.embed_payload(&jpeg).expect_err("image to sound"));
    assert_eq!(c, "wrong_modality");
    assert!(msg.contains("yamnet-l10"), "{msg}");
    assert_eq!(
        code(sound.embed(&Input::Image(jpeg)).expect_err("image")).0,
        "wrong_modality"
    );
    let image = Embedder::load(ModelDir::shipped().expect("shipped"), false).expect("image");
    let (c, msg) = code(
        image
            .embed_payload(&wav("doorbell.wav"))
            .expect_err("sound to image"),
    );
    assert_eq!(c, "wrong_modality");
    assert!(msg.contains("efficientnet-lite0"), "{msg}");
    let clip = adaptd::model::audio::pcm_s16le(&[0, 0, 1, 0], 16000).expect("pcm");
    assert_eq!(
        code(image.embed(&Input::Pcm(clip)).expect_err("pcm")).0,
        "wrong_modality"
    );

    // Broken and hostile WAVs: each refused with a stable code, none panics.
    let good = wav("clicks_short.wav");
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not audio",
            b"RIFF\x10\0\0\0WAVEjunkjunkjunk".to_vec(),
            "bad_payload",
        ),
        ("header only", good[..44].to_vec(), "bad_payload"),
        ("cut in the fmt chunk", good[..30].to_vec(), "bad_payload"),
    ];
    let with = |offset: usize, bytes: &[u8]| {
        let mut w = good.clone();
        w[offset..offset + bytes.len()].copy_from_slice(bytes);
        w
    };
    cases.push(("rate 0", with(24, &0u32.to_le_bytes()), "bad_payload"));
    cases.push((
        "rate 10 MHz",
        with(24, &10_000_000u32.to_le_bytes()),
        "bad_payload",
    ));
    cases.push(("64 channels", with(22, &64u16.to_le_bytes()), "bad_payload"));
    for (what, bytes, want) in cases {
        let err = sound.embed_payload(&bytes).expect_err(what);
        assert_eq!(err.code(), want, "{what}: {err}");
    }
    // A header that claims more data than the file holds (a stream written to a pipe): the
    // data present is the clip.
    let lying = with(40, &0x7FFF_FFFFu32.to_le_bytes());
    let a = sound.embed_payload(&lying).expect("lying length");
    let b = sound.embed_payload(&good).expect("good");
    assert_eq!(a, b);
    // NaN in a float WAV, and a clip over the duration limit.
    let float_wav = |samples: &[f32], rate: u32| {
        adaptd::model::audio::encode_float_wav(samples, rate).expect("wav")
    };
    let mut nan = vec![0.1f32; 1600];
    nan[700] = f32::NAN;
    assert_eq!(
        sound
            .embed_payload(&float_wav(&nan, 16000))
            .expect_err("nan")
            .code(),
        "non_finite"
    );
    let long = vec![0.0f32; 31 * 1000];
    assert_eq!(
        sound
            .embed_payload(&float_wav(&long, 1000))
            .expect_err("31 s")
            .code(),
        "too_long"
    );
}

/// `n` distinct takes of a fixture sound, as a microphone would record it again: a random gain,
/// a random lead-in of silence, a little noise, at 16, 22.05 or 44.1 kHz (resampled from the
/// fixture), 16-bit WAV.
fn takes(name: &str, n: usize, seed: u64) -> Vec<Vec<u8>> {
    use rand::{Rng, SeedableRng};
    let bytes = wav(name);
    let reader = hound::WavReader::new(std::io::Cursor::new(&bytes)).expect("reader");
    let rate = reader.spec().sample_rate;
    let x: Vec<f32> = reader
        .into_samples::<i16>()
        .map(|s| f32::from(s.expect("sample")) / 32768.0)
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let out_rate = [16000, 22050, 44100][rng.gen_range(0..3)];
            let y = adaptd::model::audio::resample(&x, rate, out_rate).expect("resample");
            let gain = rng.gen_range(0.5..1.0f32);
            let lead = rng.gen_range(0..out_rate as usize / 4);
            let mut take: Vec<f32> = (0..lead).map(|_| rng.gen_range(-0.005..0.005f32)).collect();
            take.extend(y.iter().map(|v| v * gain + rng.gen_range(-0.005..0.005f32)));
            adaptd::model::audio::encode_wav(&take, out_rate, 1).expect("wav")
        })
        .collect()
}

/// The daemon on the sound model: `info` says what it takes; WAV clips at any rate are learned
/// one at a time over MQTT and predicted; raw PCM in a JSON request is the same sound; a photo
/// is refused with `wrong_modality` and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_learns_and_predicts_sounds_over_mqtt() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().expect("tmp");
    let root = "adaptd/sound-1";
    let c = common::Client::connect(broker.port, &[&format!("{root}/#")]).await;
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/yamnet-l10");
    let model = model.display().to_string();
    let d = InProcess::start(InProcess::settings(
        "[head]\nalgorithm = \"ncm\"\n",
        &broker.url(),
        &tmp.path().join("state"),
        "sound-1",
        &[("ADAPTD_MODEL_DIR", model.as_str())],
    ));
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;
    let i = info(&c, root, |_| true).await;
    assert_eq!(i["backbone"]["name"], "yamnet-l10", "{i}");
    assert_eq!(i["backbone"]["modality"], "audio", "{i}");
    assert_eq!(i["backbone"]["embedding_dim"], 512, "{i}");
    assert_eq!(i["backbone"]["audio"]["sample_rate"], 16000, "{i}");

    let classes = [
        ("doorbell", "doorbell.wav"),
        ("speech", "speech.wav"),
        ("sweep", "sweep_noise.wav"),
    ];
    let mut held_out = Vec::new();
    for (k, (label, file)) in classes.iter().enumerate() {
        let clips = takes(file, 5, 100 + k as u64);
        for clip in &clips[..3] {
            c.publish(&format!("{root}/learn/{label}"), clip.clone())
                .await;
        }
        held_out.push((*label, clips[3..].to_vec()));
    }
    let i = info(&c, root, |i| i["head"]["samples"] == 9).await;
    let counts = class_counts(&i);
    for (label, _) in classes {
        assert_eq!(counts.get(label), Some(&3), "{i}");
    }

    for (label, clips) in &held_out {
        for (n, clip) in clips.iter().enumerate() {
            let id = format!("{label}-{n}");
            let req = serde_json::json!({"id": id, "audio": base64_encode(clip)}).to_string();
            c.publish(&format!("{root}/infer"), req).await;
            let p = c
                .wait_for(&format!("{root}/prediction"), |m: &Msg| {
                    m.json()["id"] == id
                })
                .await
                .json();
            assert_eq!(p["label"], *label, "{p}");
        }
    }
    // The raw WAV payload and the same samples as JSON pcm predict the same.
    let bytes = wav("doorbell.wav");
    let reader = hound::WavReader::new(std::io::Cursor::new(&bytes)).expect("reader");
    let pcm: Vec<u8> = reader
        .into_samples::<i16>()
        .flat_map(|s| s.expect("sample").to_le_bytes())
        .collect();
    let req = serde_json::json!({"id": "pcm", "pcm": base64_encode(&pcm), "rate": 16000});
    c.publish(&format!("{root}/infer"), req.to_string()).await;
    let p = c
        .wait_for(&format!("{root}/prediction"), |m: &Msg| {
            m.json()["id"] == "pcm"
        })
        .await
        .json();
    assert_eq!(p["label"], "doorbell", "{p}");

    // A photo sent to the sound board, to learn: refused, says which model runs, learns nothing.
    let photo = std::fs::read(common::fixture("chelsea.jpg")).expect("photo");
    let req = serde_json::json!({"id": "photo", "image": base64_encode(&photo)}).to_string();
    c.publish(&format!("{root}/learn/cat"), req).await;
    let e = c
        .wait_for(&format!("{root}/error"), |m: &Msg| {
            m.json()["id"] == "photo"
        })
        .await
        .json();
    assert_eq!(e["code"], "wrong_modality", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("yamnet-l10"),
        "{e}"
    );
    // The next sample is learned after the refusal (arrival order): the head has it, not "cat".
    let more = takes("doorbell.wav", 1, 7).remove(0);
    c.publish(&format!("{root}/learn/doorbell"), more).await;
    let i = info(&c, root, |i| i["head"]["samples"] == 10).await;
    assert!(!class_counts(&i).contains_key("cat"), "{i}");
    d.stop().await.expect("clean stop");
}

/// A WAV of `samples` at `rate`, 16-bit mono.
fn wav_of(samples: &[f32], rate: u32) -> Vec<u8> {
    adaptd::model::audio::encode_wav(samples, rate, 1).expect("wav")
}

/// Quiet room noise, seeded.
fn hiss(seconds: f64, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..(seconds * 16000.0) as usize)
        .map(|_| rng.gen_range(-0.01..0.01f32))
        .collect()
}

/// A live microphone on Rhasspy's Hermes topic: 32 ms WAV chunks of hiss, a doorbell, hiss.
/// adaptd publishes a prediction when what it hears changes, not once per window: "quiet", then
/// "doorbell", then "quiet" again, from one stream topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hermes_microphone_stream_is_predicted_when_what_is_heard_changes() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().expect("tmp");
    let root = "adaptd/mic-1";
    let mic = "hermes/audioServer/kitchen/audioFrame";
    let c = common::Client::connect(broker.port, &[&format!("{root}/#")]).await;
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/yamnet-l10");
    let model = model.display().to_string();
    let config = "[head]\nalgorithm = \"ncm\"\n[[sources]]\n\
                  topic = \"hermes/audioServer/+/audioFrame\"\nkind = \"stream\"\n\
                  hop_seconds = 0.48\nthreshold = 0.5\n";
    let d = InProcess::start(InProcess::settings(
        config,
        &broker.url(),
        &tmp.path().join("state"),
        "mic-1",
        &[("ADAPTD_MODEL_DIR", model.as_str())],
    ));
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;
    for seed in 0..3 {
        c.publish(
            &format!("{root}/learn/quiet"),
            wav_of(&hiss(1.5, seed), 16000),
        )
        .await;
    }
    for clip in takes("doorbell.wav", 3, 11) {
        c.publish(&format!("{root}/learn/doorbell"), clip).await;
    }
    info(&c, root, |i| i["head"]["samples"] == 6).await;

    let bell = {
        let reader =
            hound::WavReader::new(std::io::Cursor::new(wav("doorbell.wav"))).expect("reader");
        reader
            .into_samples::<i16>()
            .map(|s| f32::from(s.expect("sample")) / 32768.0)
            .collect::<Vec<f32>>()
    };
    let mut stream = hiss(2.5, 100);
    stream.extend(bell.iter().zip(hiss(2.0, 101)).map(|(b, n)| b + n));
    stream.extend(hiss(2.5, 102));
    // Half real time: 512-sample chunks every 16 ms.
    for chunk in stream.chunks(512) {
        c.client
            .publish(mic, rumqttc::QoS::AtMostOnce, false, wav_of(chunk, 16000))
            .await
            .expect("publish");
        tokio::time::sleep(std::time::Duration::from_millis(16)).await;
    }
    // The last window's prediction, at most.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let heard: Vec<String> = c
        .on(&format!("{root}/prediction"))
        .iter()
        .map(Msg::json)
        .filter(|p| p["source"] == mic)
        .map(|p| p["label"].as_str().unwrap_or_default().to_string())
        .collect();
    // 7.45 s of sound = 14 windows; only the changes are published.
    assert_eq!(heard, ["quiet", "doorbell", "quiet"], "{heard:?}");
    d.stop().await.expect("clean stop");
}

/// A stream source on a board whose model takes photos is a configuration error at start, said
/// plainly, not a stream of refusals later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_source_on_an_image_model_fails_at_start() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().expect("tmp");
    let config = "[[sources]]\ntopic = \"hermes/audioServer/+/audioFrame\"\nkind = \"stream\"\n";
    let d = InProcess::start(InProcess::settings(
        config,
        &broker.url(),
        &tmp.path().join("state"),
        "cam-stream",
        &[],
    ));
    let err = d.stop().await.expect_err("refused at start");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("does not take sound") && msg.contains("efficientnet-lite0"),
        "{msg}"
    );
}

/// `adaptd eval` on a folder of WAV clips with the sound model: every clip is embedded through
/// the front-end and the backbone, the learners are scored on held-out takes, the report names
/// the model's identity; the same clips with the image model are refused before anything is
/// embedded, naming the sound model to use.
#[test]
fn eval_learns_a_folder_of_sound_clips() {
    let data = tempfile::tempdir().expect("tempdir");
    for (class, name, seed) in [
        ("doorbell", "doorbell.wav", 11),
        ("speech", "speech.wav", 12),
        ("hiss", "sweep_noise.wav", 13),
    ] {
        let dir = data.path().join(class);
        std::fs::create_dir_all(&dir).expect("class dir");
        for (i, take) in takes(name, 6, seed).into_iter().enumerate() {
            std::fs::write(dir.join(format!("take{i}.wav")), take).expect("write take");
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
            .args([
                "--test-fraction",
                "0.34",
                "--learners",
                "ncm,ridge",
                "--json",
            ])
            .output()
            .expect("adaptd eval")
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = eval(&root.join("models/yamnet-l10"));
    assert!(
        out.status.success(),
        "eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["dim"], 512);
    assert_eq!(report["classes"], 3);
    let identity = Embedder::load(model(), false)
        .expect("load")
        .backbone
        .info()
        .sha256
        .clone();
    assert_eq!(report["backbone_sha256"], identity.as_str(), "{report}");
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    for r in results {
        // Three very different sounds, re-recorded: every held-out take is recognised.
        assert_eq!(r["accuracy"].as_f64(), Some(1.0), "{r}");
    }

    let out = eval(&root.join("models/efficientnet-lite0"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("models/yamnet-l10"), "{err}");
}
