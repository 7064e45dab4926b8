//! Any payload on an input topic → the model's input tensor (JPEG, PNG, raw f32, JSON).
#![no_main]
use libfuzzer_sys::fuzz_target;

fn preprocessor() -> adaptd::model::input::Preprocessor {
    let text = include_str!("../../models/efficientnet-lite0/model.toml");
    let spec: adaptd::model::ModelSpec = toml::from_str(text).expect("shipped model.toml");
    adaptd::model::input::Preprocessor::new(spec.input)
}

fuzz_target!(|data: &[u8]| {
    thread_local!(static P: adaptd::model::input::Preprocessor = preprocessor());
    P.with(|p| {
        if let Ok(t) = p.decode(data) {
            assert_eq!(t.len(), 3 * 224 * 224);
            assert!(t.iter().all(|v| v.is_finite()));
        }
    });
});
