//! A text board's payload: UTF-8 check, size limit, BERT normalizer, WordPiece, truncation.
#![no_main]
use std::sync::OnceLock;

use adaptd::model::text::Tokenizer;
use libfuzzer_sys::fuzz_target;

/// The shipped text model's tokenizer (its vocabulary is committed; the ONNX file is not needed).
fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/paraphrase-minilm-l3");
        let model = adaptd::model::ModelDir::load(&dir).expect("models/paraphrase-minilm-l3");
        Tokenizer::load(&model.dir, model.spec.text.as_ref().expect("[text]")).expect("vocab")
    })
}

fuzz_target!(|data: &[u8]| {
    let t = tokenizer();
    if let Ok(text) = t.text(data) {
        let tokens = t.encode(text);
        assert!(tokens.ids.len() >= 2 && tokens.ids.len() <= t.spec().max_tokens);
        assert!(tokens.ids.iter().all(|&id| id >= 0 && (id as usize) < t.vocab_len()));
    }
});
