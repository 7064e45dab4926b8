//! Signed deltas: the samples this board learned since the version its peers already have,
//! sealed for the group's delta topic (a few kB per sample instead of the whole head), and
//! [`open_delta`], the checks of a peer's delta (the same as for a whole head: trusted key,
//! signature, backbone, algorithm, bounded values and sample count).

use ring::signature::KeyPair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::envelope::{open_signed, Sender, Signed, MAX_ABS_MEAN};
use super::{FleetError, Identity};
use crate::cbor::{Bytes, F32Slice, F32s};
use crate::head::{validate_label, Algorithm, Expect, Head, HeadError, JournalEntry};

/// Delta format name and version.
pub const DELTA_FORMAT: &str = "adaptd-fleet-delta";
const DELTA_VERSION: u32 = 1;
/// Domain separation of the signed message (a delta's signature never verifies as a head's).
const SIGNING_TAG: &[u8] = b"adaptd fleet delta v1\0";

/// A signed delta as it travels on `{prefix}/{group}/deltas/{device}` (CBOR, not retained).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaEnvelope {
    pub format: String,
    pub envelope_version: u32,
    pub device_id: String,
    pub group: String,
    pub algorithm: String,
    pub backbone_sha256: String,
    pub dim: u64,
    /// The version the samples start from. `None`: what changed since is only in the whole
    /// head (an unlearn, a forget, an import, a restart), which peers fetch from its retained
    /// topic.
    pub base_version: Option<u64>,
    /// The head's version after the samples.
    pub version: u64,
    /// The head's sample count after the samples.
    pub head_samples: u64,
    /// CBOR array of [`Learned`], in the order they were learned.
    pub samples: Bytes,
    pub public_key: Bytes,
    pub signature: Bytes,
}

impl Signed for DeltaEnvelope {
    const FORMAT: (&'static str, u32) = (DELTA_FORMAT, DELTA_VERSION);

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
        signed_message(self)
    }

    fn signature(&self) -> &[u8] {
        &self.signature.0
    }
}

/// One learned sample of a delta.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Learned {
    pub label: String,
    pub x: F32s,
}

#[derive(Serialize)]
struct LearnedRef<'a> {
    label: &'a str,
    x: F32Slice<'a>,
}

/// A verified delta.
#[derive(Debug)]
pub struct VerifiedDelta {
    pub base: Option<u64>,
    pub version: u64,
    pub head_samples: u64,
    pub key: String,
    pub samples: Vec<Learned>,
    /// The samples as signed (a CBOR array): what the peer store appends to the peer's log.
    pub samples_bytes: Vec<u8>,
}

/// The signed message: tag, every field but the key and signature, SHA-256 of the samples.
fn signed_message(e: &DeltaEnvelope) -> Vec<u8> {
    let mut m = SIGNING_TAG.to_vec();
    for s in [&e.device_id, &e.group, &e.algorithm, &e.backbone_sha256] {
        m.extend((s.len() as u32).to_le_bytes());
        m.extend(s.as_bytes());
    }
    m.extend(e.dim.to_le_bytes());
    match e.base_version {
        Some(b) => {
            m.push(1);
            m.extend(b.to_le_bytes());
        }
        None => m.push(0),
    }
    m.extend(e.version.to_le_bytes());
    m.extend(e.head_samples.to_le_bytes());
    m.extend(Sha256::digest(&e.samples.0));
    m
}

impl Identity {
    /// What a board sends beside its whole head of `whole_bytes`: `None` when nothing changed
    /// since its last delta (the same head published again), else [`seal_delta`]
    /// (Self::seal_delta) — without samples, so that peers fetch the whole head, when the
    /// samples would take more bytes than the whole head.
    pub fn next_delta(
        &self,
        device_id: &str,
        group: &str,
        head: &Head,
        whole_bytes: usize,
    ) -> Result<Option<Vec<u8>>, HeadError> {
        match head.journal() {
            Some((base, _)) if base == head.version() => Ok(None),
            Some(_) if head.journal_bytes() >= whole_bytes => {
                self.seal_journal(device_id, group, head, None).map(Some)
            }
            journal => self.seal_journal(device_id, group, head, journal).map(Some),
        }
    }

    /// Seals what `head` learned since its journal started (see [`Head::journal`]) for the
    /// group; without a journal, a delta with no base that tells peers to fetch the whole head.
    pub fn seal_delta(
        &self,
        device_id: &str,
        group: &str,
        head: &Head,
    ) -> Result<Vec<u8>, HeadError> {
        self.seal_journal(device_id, group, head, head.journal())
    }

    fn seal_journal(
        &self,
        device_id: &str,
        group: &str,
        head: &Head,
        journal: Option<(u64, &[JournalEntry])>,
    ) -> Result<Vec<u8>, HeadError> {
        let (base, samples) = match journal {
            Some((base, s)) => (Some(base), s),
            None => (None, &[][..]),
        };
        let samples: Vec<LearnedRef<'_>> = samples
            .iter()
            .map(|(label, x)| LearnedRef {
                label,
                x: F32Slice(x),
            })
            .collect();
        let samples = crate::cbor::to_vec_exact(&samples).map_err(HeadError::Encode)?;
        let mut env = DeltaEnvelope {
            format: DELTA_FORMAT.into(),
            envelope_version: DELTA_VERSION,
            device_id: device_id.into(),
            group: group.into(),
            algorithm: head.algorithm().as_str().into(),
            backbone_sha256: head.backbone_sha256().into(),
            dim: head.dim() as u64,
            base_version: base,
            version: head.version(),
            head_samples: head.samples(),
            samples: Bytes(samples),
            public_key: Bytes(self.pair.public_key().as_ref().to_vec()),
            signature: Bytes(Vec::new()),
        };
        env.signature = Bytes(self.pair.sign(&signed_message(&env)).as_ref().to_vec());
        crate::cbor::to_vec_exact(&env).map_err(|e| HeadError::Encode(format!("fleet delta: {e}")))
    }
}

/// The next link of a delta log's hash chain: `SHA-256(previous link ‖ SHA-256(samples))`
/// (hex), so that a delta's samples are appended to a peer's log without reading the log back.
pub fn chain(previous: Option<&str>, samples: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(previous.unwrap_or("").as_bytes());
    h.update(Sha256::digest(samples));
    hex::encode(h.finalize())
}

/// The samples of one delta: a single CBOR array of [`Learned`] spanning all of `bytes`.
fn parse_one(bytes: &[u8]) -> Result<Vec<Learned>, String> {
    let mut rest = bytes;
    let samples = ciborium::from_reader(&mut rest).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the samples", rest.len()));
    }
    Ok(samples)
}

/// The samples of a stored delta log (each delta's array, one after the other), in order,
/// and its [`chain`] (`None` for an empty log).
pub fn parse_log(mut bytes: &[u8]) -> Result<(Vec<Learned>, Option<String>), String> {
    let (mut out, mut link) = (Vec::new(), None);
    while !bytes.is_empty() {
        let before = bytes;
        let part: Vec<Learned> = ciborium::from_reader(&mut bytes).map_err(|e| e.to_string())?;
        link = Some(chain(
            link.as_deref(),
            &before[..before.len() - bytes.len()],
        ));
        out.extend(part);
    }
    Ok((out, link))
}

/// Checks a delta from `peer`'s delta topic: format, group, trusted key, signature, this
/// board's backbone, dimension and algorithm, the sample cap, and every sample (label, size,
/// finite and bounded values). Whether it applies to what this board has of the peer is
/// [`super::Peers::apply_delta`]'s question.
pub fn open_delta(
    bytes: &[u8],
    peer: &str,
    group: &str,
    trusted: &[[u8; 32]],
    expect: &Expect<'_>,
    algorithm: Algorithm,
    max_samples: u64,
) -> Result<VerifiedDelta, FleetError> {
    let (env, key) = open_signed::<DeltaEnvelope>(bytes, expect, peer, group, trusted)?;
    if env.algorithm != algorithm.as_str() {
        let got = env.algorithm.parse().map_err(FleetError::Head)?;
        return Err(FleetError::Head(HeadError::AlgorithmMismatch {
            expected: algorithm,
            got,
        }));
    }
    if let Some(b) = expect.backbone_sha256.filter(|b| *b != env.backbone_sha256) {
        return Err(FleetError::Head(HeadError::BackboneMismatch {
            expected: b.to_string(),
            got: env.backbone_sha256,
        }));
    }
    let dim = usize::try_from(env.dim).unwrap_or(usize::MAX);
    if let Some(d) = expect.dim.filter(|d| *d != dim) {
        return Err(FleetError::Head(HeadError::DimensionMismatch {
            expected: d,
            got: dim,
        }));
    }
    if env.head_samples > max_samples {
        return Err(FleetError::TooManySamples {
            got: env.head_samples,
            cap: max_samples,
        });
    }
    let samples = parse_one(&env.samples.0)
        .map_err(|e| FleetError::Unsigned(format!("delta samples: {e}")))?;
    if env.base_version.is_none() && !samples.is_empty() {
        return Err(FleetError::Unsigned(
            "samples without a base version".into(),
        ));
    }
    if let Some(b) = env.base_version {
        // Every learned sample moves the version on (`b == version`: nothing new).
        if b > env.version || (env.version - b) < samples.len() as u64 {
            return Err(FleetError::Unsigned(format!(
                "{} samples cannot lead from version {b} to {}",
                samples.len(),
                env.version
            )));
        }
    }
    for s in &samples {
        validate_label(&s.label).map_err(FleetError::Head)?;
        if s.x.0.len() != dim {
            return Err(FleetError::Head(HeadError::DimensionMismatch {
                expected: dim,
                got: s.x.0.len(),
            }));
        }
        if !s
            .x
            .0
            .iter()
            .all(|v| v.is_finite() && f64::from(v.abs()) <= MAX_ABS_MEAN)
        {
            return Err(FleetError::Absurd(
                "a delta's embedding is not finite or far outside any backbone's range".into(),
            ));
        }
    }
    Ok(VerifiedDelta {
        base: env.base_version,
        version: env.version,
        head_samples: env.head_samples,
        key: hex::encode(key),
        samples,
        samples_bytes: env.samples.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::testing::{expect, head, ids, key, D};

    #[test]
    fn every_bad_delta_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let [a, m] = ids(dir.path(), ["a", "mallory"]);
        let trusted = [key(&a)];
        let mut h = head("cup", 3, 1.0, 5);
        h.start_journal();
        h.update(&[0.5; D], "cup").unwrap();
        h.update(&[0.7; D], "cat").unwrap();
        let algorithm = h.algorithm();
        let open_as = |bytes: &[u8], peer: &str, group: &str| {
            open_delta(bytes, peer, group, &trusted, &expect(), algorithm, 1000)
        };
        let code = |r: Result<VerifiedDelta, FleetError>| r.err().map(|e| e.code());
        let env = a.seal_delta("a", "g", &h).unwrap();
        let d = open_as(&env, "a", "g").unwrap();
        assert_eq!((d.base, d.version, d.head_samples), (Some(5), 7, 5));
        assert_eq!(d.samples.len(), 2);
        assert_eq!(d.samples[1].label, "cat");
        assert_eq!(d.samples[0].x.0, vec![0.5; D]);
        let (logged, link) = parse_log(&d.samples_bytes).unwrap();
        assert_eq!(logged, d.samples);
        assert_eq!(link.unwrap(), chain(None, &d.samples_bytes));
        assert_eq!(code(open_as(&env, "b", "g")), Some("fleet_wrong_peer"));
        assert_eq!(code(open_as(&env, "a", "other")), Some("fleet_wrong_peer"));
        let env_m = m.seal_delta("a", "g", &h).unwrap();
        assert_eq!(code(open_as(&env_m, "a", "g")), Some("fleet_untrusted"));
        // A whole head is not a delta, nor is garbage.
        let whole = a.seal("a", "g", &h).unwrap();
        assert_eq!(code(open_as(&whole, "a", "g")), Some("fleet_unsigned"));
        assert_eq!(code(open_as(b"\x00junk", "a", "g")), Some("fleet_unsigned"));
        for i in (0..env.len()).step_by(37) {
            let mut t = env.clone();
            t[i] ^= 0x40;
            assert!(open_as(&t, "a", "g").is_err(), "flip at {i} accepted");
        }
        // Another algorithm, backbone or dimension, too many samples.
        let r = open_delta(&env, "a", "g", &trusted, &expect(), Algorithm::Ncm, 1000);
        assert_eq!(code(r), Some("algorithm_mismatch"));
        let other = Expect {
            backbone_sha256: Some("cd"),
            ..expect()
        };
        let r = open_delta(&env, "a", "g", &trusted, &other, algorithm, 1000);
        assert_eq!(code(r), Some("backbone_mismatch"));
        let other = Expect {
            dim: Some(D + 1),
            ..expect()
        };
        let r = open_delta(&env, "a", "g", &trusted, &other, algorithm, 1000);
        assert_eq!(code(r), Some("dimension_mismatch"));
        let r = open_delta(&env, "a", "g", &trusted, &expect(), algorithm, 4);
        assert_eq!(code(r), Some("fleet_too_many_samples"));
        // Embeddings far outside any backbone's range.
        let mut far = head("cup", 1, 1.0, 1);
        far.start_journal();
        far.update(&[2e6; D], "cup").unwrap();
        let env = a.seal_delta("a", "g", &far).unwrap();
        assert_eq!(code(open_as(&env, "a", "g")), Some("fleet_absurd"));
        // Re-signed envelopes whose fields do not add up.
        let resign = |f: &dyn Fn(&mut DeltaEnvelope)| {
            let mut e: DeltaEnvelope =
                ciborium::from_reader(a.seal_delta("a", "g", &h).unwrap().as_slice()).unwrap();
            f(&mut e);
            e.signature = Bytes(a.pair.sign(&signed_message(&e)).as_ref().to_vec());
            let mut out = Vec::new();
            ciborium::into_writer(&e, &mut out).unwrap();
            code(open_as(&out, "a", "g"))
        };
        assert_eq!(resign(&|e| e.base_version = None), Some("fleet_unsigned"));
        assert_eq!(
            resign(&|e| e.base_version = Some(6)),
            Some("fleet_unsigned")
        );
        assert_eq!(
            resign(&|e| e.samples = Bytes(vec![0x81, 0x01])),
            Some("fleet_unsigned")
        );
        let bad_label = [Learned {
            label: "a/b".into(),
            x: F32s(vec![0.0; D]),
        }];
        let bytes = crate::cbor::to_vec_exact(&bad_label).unwrap();
        assert_eq!(
            resign(&|e| e.samples = Bytes(bytes.clone())),
            Some("bad_label")
        );
        let short = [Learned {
            label: "cup".into(),
            x: F32s(vec![0.0; D - 1]),
        }];
        let bytes = crate::cbor::to_vec_exact(&short).unwrap();
        assert_eq!(
            resign(&|e| e.samples = Bytes(bytes.clone())),
            Some("dimension_mismatch")
        );
        // Without a journal: no base, no samples (peers fetch the whole head).
        let fresh = head("cup", 2, 1.0, 3);
        let d = open_as(&a.seal_delta("a", "g", &fresh).unwrap(), "a", "g").unwrap();
        assert_eq!((d.base, d.samples.len(), d.version), (None, 0, 3));
        // What a board sends beside its whole head: nothing for the same head again, the
        // samples, or no samples (fetch the whole head) when they outweigh it.
        let mut next = head("cup", 2, 1.0, 3);
        next.start_journal();
        assert_eq!(a.next_delta("a", "g", &next, 1 << 20).unwrap(), None);
        next.update(&[0.5; D], "cup").unwrap();
        let open_next = |whole: usize| {
            let d = a.next_delta("a", "g", &next, whole).unwrap().unwrap();
            open_as(&d, "a", "g").unwrap()
        };
        let d = open_next(1 << 20);
        assert_eq!((d.base, d.samples.len()), (Some(3), 1));
        let d = open_next(4 * D);
        assert_eq!((d.base, d.samples.len(), d.version), (None, 0, 4));
        // Nothing learned since the journal started: an empty delta, not an error.
        let mut idle = head("cup", 2, 1.0, 3);
        idle.start_journal();
        let d = open_as(&a.seal_delta("a", "g", &idle).unwrap(), "a", "g").unwrap();
        assert_eq!((d.base, d.samples.len(), d.version), (Some(3), 0, 3));
    }
}
