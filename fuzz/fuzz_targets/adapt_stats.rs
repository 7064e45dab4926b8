//! The adaptation statistics file of the state directory.
#![no_main]
use libfuzzer_sys::fuzz_target;

/// The shipped backbone (the seed corpus holds statistics written for it).
const SHA: &str = "3b5175c52cf9249a9702f54a9333f42f8206ce0a417eccb63443dcbf82c0a7bd";

fuzz_target!(|data: &[u8]| {
    for full in [false, true] {
        let _ = adaptd::adapt::TargetStats::from_bytes(data, SHA, 1280, 100, full);
    }
});
