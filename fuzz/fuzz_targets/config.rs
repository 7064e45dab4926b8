//! Config files: parse, merge with the defaults, validate.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = adaptd::config::Settings::from_parts(Some(&text), "fuzz", std::iter::empty());
});
