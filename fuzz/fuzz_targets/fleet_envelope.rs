//! Fleet envelopes from peers: format, signature, head, bounds.
#![no_main]
use adaptd::head::{Algorithm, Expect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let expect = Expect {
        backbone_sha256: None,
        dim: None,
        max_bytes: 1 << 22,
    };
    let trusted = [[7u8; 32]];
    let _ = adaptd::fleet::open(
        data,
        "peer",
        "group",
        &trusted,
        &expect,
        Algorithm::Ncm,
        1000,
    );
});
