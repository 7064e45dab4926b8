//! Topic routing and label/name validation: whatever arrives, a label that passes never
//! carries MQTT wildcards or separators.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if adaptd::head::validate_label(&s).is_ok() {
        assert!(!s.contains(['+', '#', '/', '\0']));
        assert!(!s.is_empty() && s.len() <= adaptd::head::MAX_LABEL_BYTES);
    }
    thread_local!(static T: adaptd::daemon::topics::Topics = adaptd::daemon::topics::Topics::new("adaptd/cam"));
    T.with(|t| {
        let _ = t.route(&s, &[]);
    });
});
