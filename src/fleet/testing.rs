//! Shared helpers of the fleet module's unit tests: heads, identities, sealed and opened envelopes.

use std::path::Path;

use super::{open, parse_key, FleetError, Identity, Verified};
use crate::head::{Expect, Head, HeadConfig};

pub(super) const SHA: &str = "ab";
pub(super) const D: usize = 8;

pub(super) fn head(label: &str, n: usize, level: f32, version: u64) -> Head {
    let mut h = Head::new(&HeadConfig::default(), D, SHA);
    for i in 0..n {
        let x: Vec<f32> = (0..D)
            .map(|j| level + ((i * 5 + j * 3) % 7) as f32 * 0.1)
            .collect();
        h.update(&x, label).unwrap();
    }
    h.set_version(version);
    h
}

pub(super) fn expect() -> Expect<'static> {
    Expect {
        backbone_sha256: Some(SHA),
        dim: Some(D),
        max_bytes: 1 << 24,
    }
}

/// One identity per name, each in its own folder of `dir`.
pub(super) fn ids<const N: usize>(dir: &Path, names: [&str; N]) -> [Identity; N] {
    names.map(|n| Identity::load_or_create(&dir.join(n)).unwrap())
}

pub(super) fn key(id: &Identity) -> [u8; 32] {
    parse_key(&id.public_hex()).unwrap()
}

pub(super) fn verify(
    id: &Identity,
    peer: &str,
    h: &Head,
    trusted: &[[u8; 32]],
) -> Result<Verified, FleetError> {
    let env = id.seal(peer, "g", h).unwrap();
    open(&env, peer, "g", trusted, &expect(), h.algorithm(), 1000)
}
