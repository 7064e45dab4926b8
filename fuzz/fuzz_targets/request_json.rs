//! JSON requests (infer/learn/feedback) as the service parses them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let payload = bytes::Bytes::copy_from_slice(data);
    let _ = adaptd::daemon::request::parse_request(&payload);
    let _ = adaptd::daemon::request::sniff_id(data);
});
