//! Fleet envelopes from peers: format, signature, head, bounds. Each input is opened as it is
//! (format, group, trust and signature checks) and, when it decodes as an envelope, once more
//! re-signed with the trusted key, so mutated heads also reach the checks behind the signature.
#![no_main]
use std::sync::LazyLock;

use adaptd::fleet::Identity;
use adaptd::head::{Algorithm, Expect};
use libfuzzer_sys::fuzz_target;

/// The trusted key; the seed envelope in fuzz/seeds/fleet_envelope is sealed with it
/// (src/fleet/envelope.rs `fuzz_seed_envelope_opens_with_the_fuzz_key`).
static KEY: LazyLock<Identity> =
    LazyLock::new(|| Identity::from_seed(&[7; 32]).expect("fixed seed"));

fn open(data: &[u8]) {
    let expect = Expect {
        backbone_sha256: None,
        dim: None,
        max_bytes: 1 << 22,
    };
    let trusted = [KEY.public_key()];
    let _ = adaptd::fleet::open(
        data,
        "peer",
        "group",
        &trusted,
        &expect,
        Algorithm::Ncm,
        1000,
    );
}

fuzz_target!(|data: &[u8]| {
    open(data);
    if let Some(resigned) = KEY.resign(data) {
        open(&resigned);
    }
});
