//! Any payload on a sound model's input topic → log-mel patches: a WAV file
//! (`audio::decode_wav`, header repair included) and the same bytes as raw s16le PCM
//! (`audio::pcm_s16le`, a JSON request's `pcm`), each through the resampler and the front-end
//! of the shipped sound model (`models/yamnet-l10`).
#![no_main]
use adaptd::model::audio::{decode_wav, pcm_s16le, AudioSpec, Clip, FrontEnd};
use libfuzzer_sys::fuzz_target;

/// Longest raw PCM clip sent on to the front-end, in samples (5 s at the model's rate), so that
/// one input stays cheap; a WAV is bounded by the model's own `max_seconds`.
const PCM_MAX_SAMPLES: usize = 16_000 * 5;

fn front_end() -> FrontEnd {
    let text = include_str!("../../models/yamnet-l10/model.toml");
    let spec: adaptd::model::ModelSpec = toml::from_str(text).expect("shipped model.toml");
    let audio: AudioSpec = spec.audio.expect("yamnet-l10 has an [audio] section");
    let input_len = spec.input.shape.iter().product::<usize>();
    audio.validate(input_len).expect("shipped [audio] is valid");
    FrontEnd::new(audio)
}

fn check_patches(fe: &FrontEnd, clip: &Clip) {
    let spec = fe.spec();
    if let Ok(patches) = fe.patches(clip) {
        assert!(
            !patches.is_empty(),
            "a decoded clip gives at least one patch"
        );
        for p in &patches {
            assert_eq!(p.len(), spec.patch_frames * spec.mel_bands);
            assert!(p.iter().all(|v| v.is_finite()), "non-finite log-mel value");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    thread_local!(static FE: FrontEnd = front_end());
    FE.with(|fe| {
        if let Ok(clip) = decode_wav(data, fe.spec().max_seconds) {
            assert!(!clip.samples.is_empty());
            assert!(clip.samples.iter().all(|v| v.is_finite()));
            check_patches(fe, &clip);
        }
        // The same bytes as raw PCM, at a rate taken from the first four bytes.
        let rate = data
            .get(..4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if let Ok(clip) = pcm_s16le(data, rate) {
            assert_eq!(clip.samples.len(), data.len() / 2);
            if clip.samples.len() <= PCM_MAX_SAMPLES {
                check_patches(fe, &clip);
            }
        }
    });
});
