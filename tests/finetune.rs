//! Fine-tuning against the real backbone: the tail read from the shipped ONNX file, run in
//! Rust from tract's value at the cut, gives tract's own embedding; and a fine-tuned tail
//! learns what the frozen one cannot.

mod common;

use std::path::PathBuf;

use adaptd::finetune::store::Stored;
use adaptd::finetune::{Act, Tail};
use adaptd::model::backbone::Backbone;
use adaptd::model::{Embedder, ModelDir};
use common::{cosine, fixture};

#[test]
fn the_rust_tail_continues_tracts_pass_to_the_same_embedding() {
    let model = ModelDir::shipped().expect("shipped model");
    let embedder = Embedder::load_with_cut(model.clone(), None).expect("load with the cut");
    let shape = embedder
        .backbone
        .info()
        .cut_shape
        .clone()
        .expect("the cut is an output");
    assert_eq!(shape, vec![1, 192, 7, 7], "the input of the last block");
    let layers = Backbone::tail(&model).expect("tail layers");
    let tail = Tail::from_layers(&layers, shape[1], 3).expect("a block and the head");
    let block = tail.block.as_ref().expect("the last block is in the tail");
    assert_eq!(
        (
            block.expand.cout,
            block.depthwise.k,
            block.project.cout,
            block.residual
        ),
        (1152, 3, 320, false)
    );
    assert_eq!(tail.dim(), 1280);
    let plain = Embedder::load(model, false).expect("load");
    for name in ["chelsea.jpg", "coffee.jpg", "rocket.jpg"] {
        let bytes = std::fs::read(fixture(name)).expect("fixture");
        let out = embedder.run_payload(&bytes).expect("run");
        let cut = out.cut.expect("the cut's value");
        let x = Act::from_nchw(&shape, &cut).expect("shape");
        let ours = tail.embed(&x);
        // The extra output leaves tract's embedding as it was (up to the order of sums in
        // the kernels tract then picks).
        let theirs = plain.embed_payload(&bytes).expect("embed");
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
        let extra = max_diff(&out.embedding, &theirs);
        assert!(
            extra <= 1e-5 * scale,
            "{name}: with the cut as output, {extra}"
        );
        let worst = max_diff(&ours, &theirs);
        assert!(
            worst <= 1e-5 * scale,
            "{name}: max |Rust − tract| = {worst} (largest value {scale})"
        );
        // Stored in f16, the embedding stays close (what the trainer sees).
        let stored = Stored::from_nchw(&shape, &cut).expect("shape");
        assert_eq!(stored.bytes(), 192 * 49 * 2);
        let rounded = tail.embed(&stored.act());
        let cos = cosine(&rounded, &theirs);
        assert!(cos > 0.9999, "{name}: cosine {cos} after f16 storage");
    }
}

#[test]
fn the_real_tail_fine_tunes_on_stored_activations() {
    use adaptd::finetune::train::{self, Config, Example};
    let model = ModelDir::shipped().expect("shipped model");
    let embedder = Embedder::load_with_cut(model.clone(), None).expect("load with the cut");
    let shape = embedder.backbone.info().cut_shape.clone().expect("cut");
    let pretrained =
        Tail::from_layers(&Backbone::tail(&model).expect("layers"), shape[1], 2).expect("tail");
    // Two classes that cut across what ImageNet features separate best.
    let stored: Vec<(Stored, usize)> = [
        ("astronaut.jpg", 0),
        ("coffee.jpg", 0),
        ("chelsea.jpg", 1),
        ("rocket.jpg", 1),
    ]
    .iter()
    .map(|(name, label)| {
        let bytes = std::fs::read(fixture(name)).expect("fixture");
        let cut = embedder.run_payload(&bytes).expect("run").cut.expect("cut");
        (Stored::from_nchw(&shape, &cut).expect("shape"), *label)
    })
    .collect();
    let examples: Vec<Example<'_>> = stored
        .iter()
        .map(|(x, label)| Example { x, label: *label })
        .collect();
    let config = Config {
        probe_epochs: 2,
        epochs: 6,
        batch: 2,
        ..Config::default()
    };
    let never = || false;
    let mut tail = pretrained.clone();
    train::probe(&mut tail, &examples, &config, &never).expect("probe");
    let mut losses = Vec::new();
    train::finetune(
        &mut tail,
        &pretrained,
        &examples,
        &config,
        &never,
        &mut |_, e| losses.push(e.loss),
    )
    .expect("fine-tune");
    assert_eq!(losses.len(), 6);
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[5] < losses[0], "losses {losses:?}");
    assert_eq!(train::accuracy(&tail, &examples), 1.0);
    assert_ne!(tail.block, pretrained.block, "the block was trained");
    assert_ne!(tail.head, pretrained.head, "the head conv was trained");
}

#[test]
fn a_model_without_a_cut_is_refused_with_the_reason() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/yamnet-l10");
    let model = ModelDir::load(&dir).expect("sound model");
    let err = Backbone::tail(&model).expect_err("no [finetune]");
    assert!(err.to_string().contains("[finetune] cut"), "{err}");
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}
