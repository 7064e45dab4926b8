//! JSON requests (infer/learn/feedback) as the service parses them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let payload = bytes::Bytes::copy_from_slice(data);
    let _ = adaptd::service::parse_request(&payload);
    let _ = adaptd::service::sniff_id(data);
});
