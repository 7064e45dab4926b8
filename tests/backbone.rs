//! The backbone against onnxruntime: golden embeddings and logits of the shipped model (from the
//! preprocessed tensor and from the image file), the tiny fixture, and clear errors.

mod common;

use std::path::{Path, PathBuf};

use adaptd::model::backbone::{self, Backbone, DepthwiseLayout};
use adaptd::model::input::Preprocessor;
use adaptd::model::Embedder;
use adaptd::model::ModelDir;
use common::cosine;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .expect("fixture")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// max |a − b| / max |b|
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len())
        .max_by(|&a, &b| v[a].total_cmp(&v[b]))
        .unwrap_or(0)
}

fn golden() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("golden/golden.json")).expect("golden");
    serde_json::from_str(&text).expect("golden json")
}

/// The preprocessed input tensor of one image of golden.json.
fn golden_input(img: &serde_json::Value) -> Vec<f32> {
    let file = img["input"].as_str().expect("input");
    read_f32(&fixtures().join("golden").join(file))
}

fn shipped(with_logits: bool) -> Embedder {
    Embedder::load(ModelDir::shipped().expect("shipped model"), with_logits).expect("load")
}

#[test]
fn shipped_model_matches_onnxruntime_from_the_tensor() {
    let g = golden();
    let p = shipped(true);
    assert_eq!(
        p.backbone.info().sha256,
        g["model_sha256"].as_str().expect("sha")
    );
    assert_eq!(p.backbone.info().embedding_dim, 1280);
    for img in g["images"].as_array().expect("images") {
        let x = golden_input(img);
        let out = p.backbone.run(&x).expect("run");
        let (want_e, want_l) = (floats(&img["embedding"]), floats(&img["logits"]));
        let logits = out.logits.expect("logits");
        let (ee, el) = (rel_err(&out.embedding, &want_e), rel_err(&logits, &want_l));
        println!(
            "{}: embedding rel err {ee:.2e}, logits rel err {el:.2e}",
            img["file"]
        );
        assert!(ee <= 1e-4, "{}: embedding differs by {ee}", img["file"]);
        assert!(el <= 1e-4, "{}: logits differ by {el}", img["file"]);
        assert_eq!(
            argmax(&logits),
            img["top5"][0][0].as_u64().expect("top1") as usize
        );
    }
}

/// The depthwise rewrites change no result beyond float rounding. The default (channel-last,
/// adaptd's FMA kernel where the CPU has AVX2 + FMA) and tract's channel-last path reach every
/// depthwise conv of the shipped model, and both compute what tract's own layout computes.
#[test]
fn depthwise_rewrites_match_tracts_own_layout() {
    let g = golden();
    let model = ModelDir::shipped().expect("shipped model");
    let load = |layout| Backbone::load_with(&model, true, None, layout).expect("load");
    let (adaptd, depthwise_only, channel_last, own) = (
        load(DepthwiseLayout::Adaptd),
        load(DepthwiseLayout::AdaptdDepthwise),
        load(DepthwiseLayout::ChannelLast),
        load(DepthwiseLayout::Tract),
    );
    // EfficientNet-Lite0 has 16 depthwise convs; both rewrites move all of them channel-last.
    assert_eq!(adaptd.info().channel_last_depthwise, [16, 16]);
    assert_eq!(channel_last.info().channel_last_depthwise, [16, 16]);
    assert_eq!(channel_last.info().adaptd_depthwise, 0);
    #[cfg(target_arch = "x86_64")]
    let avx2_fma = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let avx2_fma = false;
    let on_kernel = if avx2_fma { 16 } else { 0 };
    assert_eq!(adaptd.info().adaptd_depthwise, on_kernel);
    // Its 32 1×1 convs (31 in the blocks and the head conv), the stem conv and the classifier
    // (loaded here for the logits) run on adaptd's matrix product where the CPU has AVX2 + FMA
    // or AVX-512 (every AVX-512 CPU has both).
    assert_eq!(adaptd.info().adaptd_products, if avx2_fma { 34 } else { 0 });
    assert_eq!(depthwise_only.info().adaptd_depthwise, on_kernel);
    assert_eq!(depthwise_only.info().adaptd_products, 0);
    assert_eq!(channel_last.info().adaptd_products, 0);
    // tract's own choice: NCHW where tract-linalg has no channel-inner kernel (x86_64, armv7),
    // channel-last where it has one (aarch64).
    let own_last = own.info().channel_last_depthwise;
    assert_eq!(own_last[1], 16);
    assert_eq!(own.info().adaptd_depthwise, 0);
    if cfg!(target_arch = "x86_64") {
        assert_eq!(
            own_last[0], 0,
            "tract keeps NCHW on x86_64: the comparison is moot"
        );
    }
    for img in g["images"].as_array().expect("images") {
        let x = golden_input(img);
        let want = own.run(&x).expect("run");
        for (name, b) in [
            ("adaptd", &adaptd),
            ("adaptd-depthwise", &depthwise_only),
            ("channel-last", &channel_last),
        ] {
            let got = b.run(&x).expect("run");
            let ee = rel_err(&got.embedding, &want.embedding);
            let el = rel_err(
                got.logits.as_deref().expect("logits"),
                want.logits.as_deref().expect("logits"),
            );
            println!(
                "{}: {name} differs from tract's layout by {ee:.2e} (embedding), {el:.2e} (logits)",
                img["file"]
            );
            assert!(
                ee <= 1e-5 && el <= 1e-5,
                "{} {name}: {ee} / {el}",
                img["file"]
            );
        }
    }
}

#[test]
fn shipped_model_matches_onnxruntime_from_the_image_file() {
    let g = golden();
    let p = shipped(true);
    let mut pre_spec = p.preprocessor.spec().clone();
    for img in g["images"].as_array().expect("images") {
        let file = img["file"].as_str().expect("file");
        pre_spec.crop = match img["crop"].as_str() {
            Some("pad") => adaptd::model::input::Crop::Pad,
            _ => adaptd::model::input::Crop::Center,
        };
        let pre = Preprocessor::new(pre_spec.clone());
        let bytes = std::fs::read(fixtures().join(file)).expect("image");
        let tensor = pre.decode(&bytes).expect("decode");
        let want = golden_input(img);
        // The Rust decoder and resampler differ from libjpeg/PIL by rounding: bound it.
        let mean_abs = tensor
            .iter()
            .zip(&want)
            .map(|(a, b)| f64::from((a - b).abs()))
            .sum::<f64>()
            / want.len() as f64;
        let out = p.backbone.run(&tensor).expect("run");
        let cos = cosine(&out.embedding, &floats(&img["embedding"]));
        let logits = out.logits.expect("logits");
        println!("{file}: preprocessing mean |Δ| {mean_abs:.4} (1 level = 0.0078), embedding cosine {cos:.5}");
        assert!(
            mean_abs < 0.02,
            "{file}: preprocessing differs by {mean_abs} on average"
        );
        assert!(cos > 0.995, "{file}: embedding cosine {cos}");
        assert_eq!(
            argmax(&logits),
            img["top5"][0][0].as_u64().expect("top1") as usize,
            "{file}"
        );
    }
}

#[test]
fn a_cat_photo_is_classified_as_a_cat() {
    let p = shipped(true);
    let labels = p.model.labels().expect("labels").expect("label list");
    let bytes = std::fs::read(fixtures().join("chelsea.jpg")).expect("image");
    let logits = p.run_payload(&bytes).expect("run").logits.expect("logits");
    let top = adaptd::cli::top_k_softmax(&logits, 5);
    let first = &labels[top[0].0];
    assert!(first.contains("cat"), "top-1 is {first}");
    let coffee = std::fs::read(fixtures().join("coffee.jpg")).expect("image");
    let logits = p.run_payload(&coffee).expect("run").logits.expect("logits");
    assert_eq!(labels[argmax(&logits)], "espresso");
}

#[test]
fn tiny_fixture_matches_onnxruntime() {
    let dir = fixtures().join("tiny");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).expect("json"))
            .expect("json");
    let model = ModelDir::load(&dir).expect("tiny model");
    let b = Backbone::load(&model, true).expect("load");
    assert_eq!(b.info().embedding_dim, 4);
    assert_eq!(b.info().logits_dim, Some(3));
    let out = b.run(&floats(&expected["input"])).expect("run");
    assert!(rel_err(&out.embedding, &floats(&expected["embedding"])) < 1e-5);
    assert!(rel_err(&out.logits.expect("logits"), &floats(&expected["logits"])) < 1e-5);
    let report = backbone::inspect(&dir.join("tiny.onnx")).expect("inspect");
    assert_eq!(report.ops.get("Conv"), Some(&1));
    assert_eq!(report.outputs.len(), 2);
}

fn tiny_copy(edit: impl Fn(&str) -> String) -> (tempfile::TempDir, ModelDir) {
    let src = fixtures().join("tiny");
    let dir = tempfile::tempdir().expect("tmp");
    for f in ["tiny.onnx", "labels.txt"] {
        std::fs::copy(src.join(f), dir.path().join(f)).expect("copy");
    }
    let toml = std::fs::read_to_string(src.join("model.toml")).expect("toml");
    std::fs::write(dir.path().join("model.toml"), edit(&toml)).expect("write");
    let m = ModelDir::load(dir.path()).expect("model dir");
    (dir, m)
}

#[test]
fn errors_are_clear_not_panics() {
    // Missing file.
    let (_d, m) = tiny_copy(|t| t.replace("tiny.onnx", "missing.onnx"));
    let e = Backbone::load(&m, false).expect_err("missing");
    assert!(e.to_string().contains("missing.onnx"), "{e}");
    // Not ONNX.
    let (d, m) = tiny_copy(|t| t.to_string());
    std::fs::write(d.path().join("tiny.onnx"), b"this is not a model").expect("write");
    let e = Backbone::load(&m, false).expect_err("not onnx");
    assert!(e.to_string().contains("not a loadable ONNX model"), "{e}");
    // Wrong SHA-256.
    let (_d, m) = tiny_copy(|t| {
        t.replace(
            "name = \"tiny\"",
            &format!("name = \"tiny\"\nsha256 = \"{}\"", "0".repeat(64)),
        )
    });
    let e = Backbone::load(&m, false).expect_err("sha");
    assert!(e.to_string().contains("SHA-256"), "{e}");
    // Wrong input shape: 4 channels into a 3-channel convolution.
    let (_d, m) = tiny_copy(|t| t.replace("shape = [1, 3, 8, 8]", "shape = [1, 4, 8, 8]"));
    let e = Backbone::load(&m, false).expect_err("shape");
    assert_eq!(e.code(), "backbone");
    assert!(e.to_string().contains("[1, 4, 8, 8]"), "{e}");
    // Missing output name: the error lists the real ones.
    let (_d, m) = tiny_copy(|t| {
        t.replace(
            "embedding_output = \"embedding\"",
            "embedding_output = \"features\"",
        )
    });
    let e = Backbone::load(&m, false).expect_err("output");
    let msg = e.to_string();
    assert!(
        msg.contains("features") && msg.contains("embedding") && msg.contains("logits"),
        "{msg}"
    );
    // A node name works as an output too.
    let (_d, m) = tiny_copy(|t| {
        t.replace(
            "embedding_output = \"embedding\"",
            "embedding_output = \"pool\"",
        )
    });
    assert_eq!(
        Backbone::load(&m, false)
            .expect("node name")
            .info()
            .embedding_dim,
        4
    );

    let (_d, m) = tiny_copy(|t| t.to_string());
    let p = Embedder::load(m, false).expect("tiny");
    // Tensor of the wrong length.
    assert_eq!(
        p.backbone.embed(&[0.0; 10]).expect_err("len").code(),
        "shape_mismatch"
    );
    assert_eq!(
        p.embed_payload(b"[1, 2, 3]").expect_err("json len").code(),
        "shape_mismatch"
    );
    // NaN in a tensor.
    let mut nan = vec![0.5f64; 192];
    nan[3] = f64::NAN;
    let raw: Vec<u8> = nan.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect();
    assert_eq!(p.embed_payload(&raw).expect_err("nan").code(), "non_finite");
    // Corrupt and truncated images.
    let jpeg = std::fs::read(fixtures().join("chelsea.jpg")).expect("jpeg");
    for cut in [10, 200, jpeg.len() / 2, jpeg.len() - 3] {
        let e = p.embed_payload(&jpeg[..cut]).expect_err("truncated jpeg");
        assert_eq!(e.code(), "bad_payload", "cut {cut}: {e}");
    }
    let png = std::fs::read(fixtures().join("cutout.png")).expect("png");
    assert_eq!(
        p.embed_payload(&png[..png.len() / 3])
            .expect_err("png")
            .code(),
        "bad_payload"
    );
    let mut header_gone = jpeg.clone();
    header_gone[2..400].fill(0);
    assert_eq!(
        p.embed_payload(&header_gone)
            .expect_err("corrupt header")
            .code(),
        "bad_payload"
    );
    // The whole image works.
    assert_eq!(p.embed_payload(&jpeg).expect("jpeg").len(), 4);
}

#[test]
fn missing_model_directory_is_a_clear_error() {
    let e = ModelDir::load(Path::new("/nonexistent/model")).expect_err("missing dir");
    assert!(
        e.to_string().contains("/nonexistent/model/model.toml"),
        "{e}"
    );
}

/// The model cache: a second load reads the decluttered graph from the cache and computes the
/// same embeddings and logits as the ONNX path (checked against onnxruntime's golden outputs);
/// a corrupt, truncated or foreign cache file is detected, never used, and rebuilt; stale
/// files are removed.
#[test]
fn model_cache_round_trips_and_corrupt_caches_are_rebuilt() {
    let g = golden();
    let model = ModelDir::shipped().expect("shipped model");
    let dir = tempfile::tempdir().expect("tmp");
    let cache_files = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    };
    std::fs::write(
        dir.path().join("backbone-0123456789abcdef01234567.nnef"),
        b"stale",
    )
    .unwrap();
    let cold = Backbone::load_cached(&model, true, Some(dir.path())).expect("cold load");
    assert!(!cold.info().cached);
    let files = cache_files();
    assert_eq!(
        files.len(),
        1,
        "one cache file, the stale one removed: {files:?}"
    );
    let file = files[0].clone();

    let check = |b: &Backbone, what: &str| {
        for img in g["images"].as_array().expect("images") {
            let x = golden_input(img);
            let out = b.run(&x).expect("run");
            let e = rel_err(&out.embedding, &floats(&img["embedding"]));
            let l = rel_err(&out.logits.expect("logits"), &floats(&img["logits"]));
            assert!(
                e <= 1e-4 && l <= 1e-4,
                "{what}: {} differs: {e} {l}",
                img["file"]
            );
        }
    };
    let warm = Backbone::load_cached(&model, true, Some(dir.path())).expect("cached load");
    assert!(warm.info().cached, "second load must come from the cache");
    assert_eq!(
        (
            cold.info().channel_last_depthwise,
            warm.info().channel_last_depthwise
        ),
        ([16, 16], [16, 16]),
        "the layout rewrite reaches every depthwise conv in the cached graph too"
    );
    assert_eq!(warm.info().sha256, cold.info().sha256);
    assert_eq!(warm.info().embedding_dim, 1280);
    assert_eq!(warm.info().logits_dim, Some(1000));
    check(&warm, "cached");
    let x = read_f32(&fixtures().join("golden/coffee.input.f32"));
    assert_eq!(
        warm.run(&x).expect("run").embedding,
        cold.run(&x).expect("run").embedding,
        "the cached graph computes exactly what the ONNX graph does"
    );

    // Another output set (no logits) has another key: its own file, the old one replaced.
    let no_logits = Backbone::load_cached(&model, false, Some(dir.path())).expect("load");
    assert!(!no_logits.info().cached);
    assert_eq!(cache_files().len(), 1);
    let file = {
        let f = cache_files()[0].clone();
        assert_ne!(f, file);
        f
    };

    let good = std::fs::read(&file).expect("cache");
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let damaged: [(&str, Vec<u8>); 4] = [
        ("bit flip", flipped),
        ("truncated", good[..good.len() - 1000].to_vec()),
        ("empty", Vec::new()),
        ("not a cache", b"ADNNEF01garbage".to_vec()),
    ];
    for (what, bytes) in damaged {
        std::fs::write(&file, &bytes).expect("write");
        let b = Backbone::load_cached(&model, false, Some(dir.path())).expect(what);
        assert!(!b.info().cached, "{what}: a damaged cache must not be used");
        assert_eq!(
            std::fs::read(&file).expect("rebuilt"),
            good,
            "{what}: rebuilt"
        );
        assert_eq!(
            b.embed(&x).expect("embed"),
            no_logits.embed(&x).expect("embed")
        );
    }
    assert!(
        Backbone::load_cached(&model, false, Some(dir.path()))
            .expect("load")
            .info()
            .cached
    );
}
