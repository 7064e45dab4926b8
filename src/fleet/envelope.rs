//! Signed head envelopes: sealing this board's head for the group topic, and [`open`], the
//! verification of a peer's (trusted key, signature, backbone, algorithm, bounded statistics).

use ring::signature::{KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{FleetError, Identity};
use crate::cbor::Bytes;
use crate::head::{Algorithm, Expect, Head, HeadError};

/// Largest |mean| of an embedding dimension a peer head may claim (and its square for the
/// variance): far beyond any real backbone's outputs, small enough to keep merges finite.
pub(super) const MAX_ABS_MEAN: f64 = 1e6;

/// Envelope format name and version.
pub const ENVELOPE_FORMAT: &str = "adaptd-fleet-head";
const ENVELOPE_VERSION: u32 = 1;
/// Domain separation of the signed message.
const SIGNING_TAG: &[u8] = b"adaptd fleet head v1\0";

impl Identity {
    /// Re-signs an envelope with this key, whatever it holds (`None` if it is not an envelope).
    /// For fuzzing: lets a fuzzer reach the checks behind the signature with mutated heads.
    pub fn resign(&self, envelope: &[u8]) -> Option<Vec<u8>> {
        let mut env: Envelope = ciborium::from_reader(envelope).ok()?;
        let msg = signed_message(&env.device_id, &env.group, env.version, &env.head.0);
        env.public_key = Bytes(self.pair.public_key().as_ref().to_vec());
        env.signature = Bytes(self.pair.sign(&msg).as_ref().to_vec());
        let mut out = Vec::new();
        ciborium::into_writer(&env, &mut out).ok()?;
        Some(out)
    }

    /// Seals `head` (the board's local head) for the group.
    pub fn seal(&self, device_id: &str, group: &str, head: &Head) -> Result<Vec<u8>, HeadError> {
        let bytes = head.to_bytes()?;
        let version = head.version();
        let msg = signed_message(device_id, group, version, &bytes);
        let env = Envelope {
            format: ENVELOPE_FORMAT.into(),
            envelope_version: ENVELOPE_VERSION,
            device_id: device_id.into(),
            group: group.into(),
            version,
            head: Bytes(bytes),
            public_key: Bytes(self.pair.public_key().as_ref().to_vec()),
            signature: Bytes(self.pair.sign(&msg).as_ref().to_vec()),
        };
        let mut out = Vec::new();
        ciborium::into_writer(&env, &mut out)
            .map_err(|e| HeadError::Encode(format!("fleet envelope: {e}")))?;
        Ok(out)
    }
}

/// The signed message: tag, device id, group, version, SHA-256 of the head file.
fn signed_message(device_id: &str, group: &str, version: u64, head: &[u8]) -> Vec<u8> {
    let mut m = SIGNING_TAG.to_vec();
    for s in [device_id, group] {
        m.extend((s.len() as u32).to_le_bytes());
        m.extend(s.as_bytes());
    }
    m.extend(version.to_le_bytes());
    m.extend(Sha256::digest(head));
    m
}

/// A signed head as it travels on the fleet topic (CBOR).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub format: String,
    pub envelope_version: u32,
    pub device_id: String,
    pub group: String,
    pub version: u64,
    pub head: Bytes,
    pub public_key: Bytes,
    pub signature: Bytes,
}

/// A verified peer head.
pub struct Verified {
    pub version: u64,
    pub head: Head,
    pub key: String,
    pub head_sha256: String,
    /// The head file as signed (what the peer store keeps).
    pub bytes: Vec<u8>,
}

/// What every signed fleet message (a head's envelope, a delta) says of its sender.
pub(super) struct Sender<'a> {
    pub format: &'a str,
    pub version: u32,
    pub device_id: &'a str,
    pub group: &'a str,
    pub public_key: &'a [u8],
}

/// A signed fleet message (a head's envelope, a delta), checked by [`open_signed`].
pub(super) trait Signed: serde::de::DeserializeOwned {
    /// The format name and version this kind of message carries.
    const FORMAT: (&'static str, u32);
    fn sender(&self) -> Sender<'_>;
    /// What the signature covers.
    fn signed_message(&self) -> Vec<u8>;
    fn signature(&self) -> &[u8];
}

/// Parses a signed message from `peer`'s topic and checks what every one must pass, heads
/// and deltas alike: not larger than a head may be (before parsing), its format and version,
/// the device id and group of the topic, a trusted key and its signature. Returns the message
/// and the key.
pub(super) fn open_signed<T: Signed>(
    bytes: &[u8],
    expect: &Expect<'_>,
    peer: &str,
    group: &str,
    trusted: &[[u8; 32]],
) -> Result<(T, [u8; 32]), FleetError> {
    if bytes.len() > expect.max_bytes.saturating_add(4096) {
        return Err(FleetError::Head(HeadError::TooLarge {
            got: bytes.len(),
            limit: expect.max_bytes,
        }));
    }
    let msg: T = ciborium::from_reader(bytes).map_err(|e| FleetError::Unsigned(e.to_string()))?;
    let from = msg.sender();
    if (from.format, from.version) != T::FORMAT {
        return Err(FleetError::Unsigned(format!(
            "format {:?} v{}",
            from.format, from.version
        )));
    }
    if from.device_id != peer || from.group != group {
        return Err(FleetError::WrongPeer {
            topic: peer.into(),
            got: format!("{}@{}", from.device_id, from.group),
        });
    }
    let key: [u8; 32] = from
        .public_key
        .try_into()
        .map_err(|_| FleetError::Unsigned("public key is not 32 bytes".into()))?;
    if !trusted.contains(&key) {
        return Err(FleetError::Untrusted(hex::encode(key)));
    }
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&msg.signed_message(), msg.signature())
        .map_err(|_| FleetError::BadSignature)?;
    Ok((msg, key))
}

impl Signed for Envelope {
    const FORMAT: (&'static str, u32) = (ENVELOPE_FORMAT, ENVELOPE_VERSION);

    fn sender(&self) -> Sender<'_> {
        Sender {
            format: &self.format,
            version: self.envelope_version,
            device_id: &self.device_id,
            group: &self.group,
            public_key: &self.public_key.0,
        }
    }

    fn signed_message(&self) -> Vec<u8> {
        signed_message(&self.device_id, &self.group, self.version, &self.head.0)
    }

    fn signature(&self) -> &[u8] {
        &self.signature.0
    }
}

/// Checks an envelope from `peer`'s topic: format, group, trusted key, signature, then the
/// head itself (backbone, dimension, values) and the sample cap. Replay is checked by
/// [`super::Peers::accept`].
pub fn open(
    bytes: &[u8],
    peer: &str,
    group: &str,
    trusted: &[[u8; 32]],
    expect: &Expect<'_>,
    algorithm: Algorithm,
    max_samples: u64,
) -> Result<Verified, FleetError> {
    let (env, key) = open_signed::<Envelope>(bytes, expect, peer, group, trusted)?;
    let head = Head::from_bytes(&env.head.0, expect)?;
    if head.version() != env.version {
        return Err(FleetError::Unsigned(
            "envelope and head versions differ".into(),
        ));
    }
    if head.algorithm() != algorithm {
        return Err(FleetError::Head(HeadError::AlgorithmMismatch {
            expected: algorithm,
            got: head.algorithm(),
        }));
    }
    if head.samples() > max_samples {
        return Err(FleetError::TooManySamples {
            got: head.samples(),
            cap: max_samples,
        });
    }
    let s = head.source_stats();
    let bounded = s.mean().iter().all(|m| m.abs() <= MAX_ABS_MEAN)
        && s.var().iter().all(|v| *v <= MAX_ABS_MEAN * MAX_ABS_MEAN);
    if !bounded {
        return Err(FleetError::Absurd(
            "embedding means or variances far outside any backbone's range".into(),
        ));
    }
    Ok(Verified {
        version: env.version,
        head,
        key: hex::encode(key),
        head_sha256: hex::encode(Sha256::digest(&env.head.0)),
        bytes: env.head.0,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::fleet::testing::{expect, head, ids, key, verify};

    /// The key the `fleet_envelope` fuzz target trusts (fuzz/fuzz_targets/fleet_envelope.rs).
    const FUZZ_SEED: [u8; 32] = [7; 32];

    /// The fuzz target's seed envelope: the `head_file` seed, sealed by the fuzz key as
    /// device `peer` of group `group`. It must open, or the fuzzer starts from nothing that gets
    /// past the signature. `ADAPTD_WRITE_FUZZ_SEEDS=1 cargo test --lib fuzz_seed` rewrites it.
    #[test]
    fn fuzz_seed_envelope_opens_with_the_fuzz_key() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        let path = root.join("fleet_envelope/ncm-head.envelope");
        let id = Identity::from_seed(&FUZZ_SEED).unwrap();
        let expect = Expect {
            backbone_sha256: None,
            dim: None,
            max_bytes: 1 << 22,
        };
        if std::env::var_os("ADAPTD_WRITE_FUZZ_SEEDS").is_some() {
            let head_bytes = std::fs::read(root.join("head_file/ncm-head.cbor")).unwrap();
            let head = Head::from_bytes(&head_bytes, &expect).unwrap();
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, id.seal("peer", "group", &head).unwrap()).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        let trusted = [id.public_key()];
        let open_seed =
            |b: &[u8]| open(b, "peer", "group", &trusted, &expect, Algorithm::Ncm, 1000);
        let v = open_seed(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(v.key, id.public_hex());
        // Re-signing a tampered envelope makes it verify again (what the fuzz target relies on).
        let mut env: Envelope = ciborium::from_reader(bytes.as_slice()).unwrap();
        env.version += 1;
        let mut tampered = Vec::new();
        ciborium::into_writer(&env, &mut tampered).unwrap();
        assert!(matches!(
            open_seed(&tampered),
            Err(FleetError::BadSignature)
        ));
        let resigned = id.resign(&tampered).unwrap();
        assert!(matches!(
            open_seed(&resigned),
            Err(FleetError::Unsigned(_)) // envelope and head versions now differ
        ));
    }

    #[test]
    fn every_bad_envelope_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let [a, m] = ids(dir.path(), ["a", "mallory"]);
        let trusted = [key(&a)];
        let h = head("cup", 3, 1.0, 5);
        let code = |r: Result<Verified, FleetError>| r.err().map(|e| e.code());
        assert_eq!(code(verify(&m, "a", &h, &trusted)), Some("fleet_untrusted"));
        let env = a.seal("a", "g", &h).unwrap();
        let open_as = |bytes: &[u8], peer: &str, group: &str| {
            open(bytes, peer, group, &trusted, &expect(), h.algorithm(), 1000)
        };
        assert!(open_as(&env, "a", "g").is_ok());
        assert_eq!(code(open_as(&env, "b", "g")), Some("fleet_wrong_peer"));
        assert_eq!(code(open_as(&env, "a", "other")), Some("fleet_wrong_peer"));
        assert_eq!(
            code(open_as(&h.to_bytes().unwrap(), "a", "g")),
            Some("fleet_unsigned")
        );
        assert_eq!(code(open_as(b"", "a", "g")), Some("fleet_unsigned"));
        for i in (0..env.len()).step_by(97) {
            let mut t = env.clone();
            t[i] ^= 0x40;
            assert!(open_as(&t, "a", "g").is_err(), "flip at {i} accepted");
        }
        let big = head("cup", 20, 1.0, 6);
        let env = a.seal("a", "g", &big).unwrap();
        let r = open(&env, "a", "g", &trusted, &expect(), big.algorithm(), 10);
        assert_eq!(code(r), Some("fleet_too_many_samples"));
        let r = open(
            &env,
            "a",
            "g",
            &trusted,
            &expect(),
            crate::head::Algorithm::Slda,
            1000,
        );
        assert_eq!(code(r), Some("algorithm_mismatch"));
        let absurd = head("cup", 2, 1e7, 7);
        assert_eq!(
            code(verify(&a, "a", &absurd, &trusted)),
            Some("fleet_absurd")
        );
    }
}
