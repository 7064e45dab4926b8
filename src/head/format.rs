//! The head file: a CBOR map (see `docs/head-format.md`), encoded from a head and decoded with
//! full validation; hostile input gives errors, never panics or length-driven allocations.

use std::collections::HashSet;

use serde::de;
use serde::{Deserialize, Serialize};

use super::auto::{self, AutoState, Record};
use super::linalg::packed_len;
use super::ncm::NcmState;
use super::openset::{self, Calibration};
use super::scatter::ScatterState;
use super::sgd::SgdState;
use super::{
    validate_label, Algorithm, Class, Expect, Head, HeadConfig, HeadError, Learner, SourceStats,
    MAX_CLASSES, MAX_DIM,
};

/// The `format` field of every head file.
pub const FORMAT_NAME: &str = "adaptd-head";

/// The `format_version` this code writes and reads.
pub const FORMAT_VERSION: u64 = 1;

/// Longest accepted backbone hash field, in bytes.
const MAX_BACKBONE_BYTES: usize = 256;

pub(crate) use crate::cbor::Bytes;

/// A little-endian array with its dtype (`"f32"` or `"f64"`) and row-major shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tensor {
    pub dtype: String,
    pub shape: Vec<u64>,
    pub data: Bytes,
}

impl Tensor {
    fn f64(shape: &[usize], values: impl IntoIterator<Item = f64>) -> Tensor {
        let data = values.into_iter().flat_map(f64::to_le_bytes).collect();
        Tensor {
            dtype: "f64".into(),
            shape: shape.iter().map(|&v| v as u64).collect(),
            data: Bytes(data),
        }
    }

    fn f32(shape: &[usize], values: &[f32]) -> Tensor {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor {
            dtype: "f32".into(),
            shape: shape.iter().map(|&v| v as u64).collect(),
            data: Bytes(data),
        }
    }

    fn check(
        &self,
        dtype: &str,
        width: usize,
        shape: &[usize],
        name: &str,
    ) -> Result<(), HeadError> {
        if self.dtype != dtype {
            return Err(bad(format!(
                "{name}: dtype {:?}, expected {dtype:?}",
                self.dtype
            )));
        }
        let same = self.shape.len() == shape.len()
            && self.shape.iter().zip(shape).all(|(&a, &b)| a == b as u64);
        if !same {
            return Err(bad(format!(
                "{name}: shape {:?}, expected {shape:?}",
                self.shape
            )));
        }
        let want = shape
            .iter()
            .try_fold(width, |acc, &v| acc.checked_mul(v))
            .ok_or_else(|| bad(format!("{name}: shape too large")))?;
        if self.data.0.len() != want {
            return Err(bad(format!(
                "{name}: {} data bytes, expected {want}",
                self.data.0.len()
            )));
        }
        Ok(())
    }

    fn to_f64(&self, shape: &[usize], name: &str) -> Result<Vec<f64>, HeadError> {
        self.check("f64", 8, shape, name)?;
        let v: Vec<f64> = self
            .data
            .0
            .chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                f64::from_le_bytes(a)
            })
            .collect();
        finite(&v, name)?;
        Ok(v)
    }

    fn to_f32(&self, shape: &[usize], name: &str) -> Result<Vec<f32>, HeadError> {
        self.check("f32", 4, shape, name)?;
        let v: Vec<f32> = self
            .data
            .0
            .chunks_exact(4)
            .map(|c| {
                let mut a = [0u8; 4];
                a.copy_from_slice(c);
                f32::from_le_bytes(a)
            })
            .collect();
        if v.iter().all(|x| x.is_finite()) {
            Ok(v)
        } else {
            Err(bad(format!("{name} contains a non-finite value")))
        }
    }
}

fn finite(v: &[f64], name: &str) -> Result<(), HeadError> {
    if v.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(bad(format!("{name} contains a non-finite value")))
    }
}

fn nonnegative(v: &[f64], name: &str) -> Result<(), HeadError> {
    if v.iter().all(|&x| x >= 0.0) {
        Ok(())
    } else {
        Err(bad(format!("{name} contains a negative value")))
    }
}

fn bad(msg: impl Into<String>) -> HeadError {
    HeadError::BadHead(msg.into())
}

/// A class entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileClass {
    pub name: String,
    pub samples: u64,
}

/// HeadDomain statistics: count, per-dimension sum and sum of squares (f64).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileStats {
    pub count: u64,
    pub sum: Tensor,
    pub sum_sq: Tensor,
}

/// The whole file, in field order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeadFile {
    pub format: String,
    pub format_version: u64,
    pub algorithm: String,
    pub backbone_sha256: String,
    pub dim: u64,
    pub version: u64,
    pub config: HeadConfig,
    pub classes: Vec<FileClass>,
    pub source_stats: FileStats,
    pub class_sum: Tensor,
    pub class_sum_sq: Tensor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ncm_normalized_sum: Option<Tensor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scatter: Option<Tensor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scatter_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sgd_steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<FileAuto>,
    /// The open-set calibration: the novelty of the last labeled samples, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_set: Option<Vec<f32>>,
    pub input_shift: Tensor,
    pub input_scale: Tensor,
    pub input_l2_normalize: bool,
    pub weights: Tensor,
    pub bias: Tensor,
}

/// `auto`'s record of its candidates (see `head::auto`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileAuto {
    /// The candidates' names, in order; a file with other candidates keeps its statistics and
    /// starts a new record.
    pub candidates: Vec<String>,
    /// The window, oldest first: one little-endian u16 per scored sample, bit k = candidate k
    /// was right.
    pub window: Bytes,
    pub tested: u64,
    pub hits: Vec<u64>,
    pub choice: u64,
}

impl FileAuto {
    fn of(r: &Record) -> FileAuto {
        FileAuto {
            candidates: auto::candidate_names(),
            window: Bytes(r.window.iter().flat_map(|m| m.to_le_bytes()).collect()),
            tested: r.tested,
            hits: r.hits.clone(),
            choice: r.choice as u64,
        }
    }

    fn record(&self) -> Result<Record, HeadError> {
        if self.candidates != auto::candidate_names() {
            return Ok(Record::default());
        }
        let k = self.candidates.len();
        if !self.window.0.len().is_multiple_of(2) || self.window.0.len() / 2 > auto::WINDOW {
            return Err(bad("auto.window has a bad length"));
        }
        if self.hits.len() != k || usize::try_from(self.choice).map_or(true, |c| c >= k) {
            return Err(bad("auto.hits or auto.choice do not match the candidates"));
        }
        let window = self
            .window
            .0
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect::<std::collections::VecDeque<u16>>();
        if window.len() as u64 > self.tested || self.hits.iter().any(|&h| h > self.tested) {
            return Err(bad("auto: more hits than samples tested"));
        }
        Ok(Record {
            window,
            tested: self.tested,
            hits: self.hits.clone(),
            choice: self.choice as usize,
            loo: None,
        })
    }
}

/// Just the identification, read first (other fields are skipped).
#[derive(Deserialize)]
struct Preamble {
    format: String,
    format_version: u64,
}

/// Builds the file structure of a head (takes a snapshot for the prediction fields).
pub(crate) fn to_file(head: &Head) -> HeadFile {
    let d = head.dim;
    let c = head.classes.len();
    let snap = head.snapshot();
    let parts = snap.parts();
    let rows = |f: &dyn Fn(&Class) -> &[f64]| -> Tensor {
        Tensor::f64(
            &[c, d],
            head.classes.iter().flat_map(|k| f(k).iter().copied()),
        )
    };
    let mut file = HeadFile {
        format: FORMAT_NAME.into(),
        format_version: FORMAT_VERSION,
        algorithm: head.algorithm().as_str().into(),
        backbone_sha256: head.backbone.clone(),
        dim: d as u64,
        version: head.version,
        config: head.config.clone(),
        classes: head
            .classes
            .iter()
            .map(|k| FileClass {
                name: k.name.clone(),
                samples: k.stats.count(),
            })
            .collect(),
        source_stats: FileStats {
            count: head.source.count(),
            sum: Tensor::f64(&[d], head.source.sum().iter().copied()),
            sum_sq: Tensor::f64(&[d], head.source.sum_sq().iter().copied()),
        },
        class_sum: rows(&|k| k.stats.sum()),
        class_sum_sq: rows(&|k| k.stats.sum_sq()),
        ncm_normalized_sum: None,
        scatter: None,
        scatter_count: None,
        sgd_steps: None,
        auto: None,
        open_set: (!head.calibration.scores.is_empty())
            .then(|| head.calibration.scores.iter().copied().collect()),
        input_shift: Tensor::f32(&[d], &parts.shift),
        input_scale: Tensor::f32(&[d], &parts.scale),
        input_l2_normalize: parts.l2_normalize,
        weights: Tensor::f32(&[c, d], &parts.weights),
        bias: Tensor::f32(&[c], &parts.bias),
    };
    match &head.learner {
        Learner::Ncm(s) => {
            file.ncm_normalized_sum = Some(Tensor::f64(
                &[c, d],
                s.normalized_sum.iter().flat_map(|r| r.iter().copied()),
            ));
        }
        Learner::Slda(s) | Learner::Ridge(s) => {
            file.scatter = Some(Tensor::f64(&[packed_len(d)], s.packed.iter().copied()));
            file.scatter_count = Some(s.count);
        }
        Learner::Sgd(s) => file.sgd_steps = Some(s.steps),
        Learner::Auto(a) => {
            file.ncm_normalized_sum = Some(Tensor::f64(
                &[c, d],
                a.ncm.normalized_sum.iter().flat_map(|r| r.iter().copied()),
            ));
            file.scatter = Some(Tensor::f64(
                &[packed_len(d)],
                a.scatter.packed.iter().copied(),
            ));
            file.scatter_count = Some(a.scatter.count);
            file.auto = Some(FileAuto::of(&a.record));
        }
    }
    file
}

/// Encodes a head file.
pub(crate) fn encode(head: &Head) -> Result<Vec<u8>, HeadError> {
    let mut out = Vec::new();
    ciborium::into_writer(&to_file(head), &mut out)
        .map_err(|e| HeadError::Encode(e.to_string()))?;
    Ok(out)
}

/// Parses one CBOR item that must span all of `bytes`.
fn parse<T: de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut rest = bytes;
    let value = ciborium::from_reader(&mut rest).map_err(|e| format!("{e:?}"))?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    Ok(value)
}

/// Decodes and validates a head file.
pub(crate) fn decode(bytes: &[u8], expect: &Expect<'_>) -> Result<Head, HeadError> {
    if bytes.len() > expect.max_bytes {
        return Err(HeadError::TooLarge {
            limit: expect.max_bytes,
            got: bytes.len(),
        });
    }
    let pre: Preamble = parse(bytes).map_err(|e| bad(format!("not an {FORMAT_NAME} file: {e}")))?;
    if pre.format != FORMAT_NAME {
        return Err(bad(format!(
            "format {:?}, expected {FORMAT_NAME:?}",
            pre.format
        )));
    }
    if pre.format_version != FORMAT_VERSION {
        return Err(bad(format!(
            "unsupported format_version {} (this build reads {FORMAT_VERSION})",
            pre.format_version
        )));
    }
    let file: HeadFile = parse(bytes).map_err(bad)?;
    from_file(file, expect)
}

/// Validates a parsed file and builds the head.
pub(crate) fn from_file(file: HeadFile, expect: &Expect<'_>) -> Result<Head, HeadError> {
    if file.format != FORMAT_NAME || file.format_version != FORMAT_VERSION {
        return Err(bad("wrong format or format_version"));
    }
    let algorithm: Algorithm = file
        .algorithm
        .parse()
        .map_err(|_| bad(format!("unknown algorithm {:?}", file.algorithm)))?;
    let dim = usize::try_from(file.dim).unwrap_or(usize::MAX);
    if dim == 0 || dim > MAX_DIM {
        return Err(bad(format!("dim {} out of range 1..={MAX_DIM}", file.dim)));
    }
    if let Some(want) = expect.dim {
        if want != dim {
            return Err(HeadError::DimensionMismatch {
                expected: want,
                got: dim,
            });
        }
    }
    let backbone = file.backbone_sha256;
    if backbone.len() > MAX_BACKBONE_BYTES || backbone.chars().any(char::is_control) {
        return Err(bad("invalid backbone_sha256"));
    }
    if let Some(want) = expect.backbone_sha256 {
        if want != backbone {
            return Err(HeadError::BackboneMismatch {
                expected: want.to_string(),
                got: backbone,
            });
        }
    }
    file.config
        .validate()
        .map_err(|e| bad(format!("config: {e}")))?;
    if file.config.algorithm != algorithm {
        return Err(bad("config.algorithm differs from algorithm"));
    }

    let c = file.classes.len();
    if c > MAX_CLASSES {
        return Err(bad(format!("{c} classes, at most {MAX_CLASSES}")));
    }
    let mut seen = HashSet::with_capacity(c);
    let mut total: u64 = 0;
    for (i, k) in file.classes.iter().enumerate() {
        validate_label(&k.name).map_err(|e| bad(format!("class {i}: {e}")))?;
        if !seen.insert(k.name.as_str()) {
            return Err(bad(format!("duplicate class {:?}", k.name)));
        }
        if k.samples == 0 {
            return Err(bad(format!("class {:?} has no samples", k.name)));
        }
        total = total
            .checked_add(k.samples)
            .ok_or_else(|| bad("sample counts overflow"))?;
    }
    if file.source_stats.count != total {
        return Err(bad(format!(
            "source_stats.count {} differs from the class total {total}",
            file.source_stats.count
        )));
    }
    let src_sum = file.source_stats.sum.to_f64(&[dim], "source_stats.sum")?;
    let src_sq = file
        .source_stats
        .sum_sq
        .to_f64(&[dim], "source_stats.sum_sq")?;
    nonnegative(&src_sq, "source_stats.sum_sq")?;
    let class_sum = file.class_sum.to_f64(&[c, dim], "class_sum")?;
    let class_sq = file.class_sum_sq.to_f64(&[c, dim], "class_sum_sq")?;
    nonnegative(&class_sq, "class_sum_sq")?;

    // Prediction fields: validated for everyone; the state of sgd.
    file.input_shift.to_f32(&[dim], "input_shift")?;
    let scale = file.input_scale.to_f32(&[dim], "input_scale")?;
    if scale.iter().any(|&s| s <= 0.0) {
        return Err(bad("input_scale must be positive"));
    }
    let weights = file.weights.to_f32(&[c, dim], "weights")?;
    let bias = file.bias.to_f32(&[c], "bias")?;

    let unexpected = |present: bool, name: &str| -> Result<(), HeadError> {
        if present {
            Err(bad(format!(
                "field {name} does not belong to {algorithm} heads"
            )))
        } else {
            Ok(())
        }
    };
    let ncm_sums = |t: Option<Tensor>| -> Result<NcmState, HeadError> {
        let t = t.ok_or_else(|| bad("missing ncm_normalized_sum"))?;
        let v = t.to_f64(&[c, dim], "ncm_normalized_sum")?;
        Ok(NcmState {
            normalized_sum: v.chunks_exact(dim).map(<[f64]>::to_vec).collect(),
        })
    };
    let scatter = |t: Option<Tensor>, count: Option<u64>| -> Result<ScatterState, HeadError> {
        let t = t.ok_or_else(|| bad("missing scatter"))?;
        let count = count.ok_or_else(|| bad("missing scatter_count"))?;
        if count < total {
            return Err(bad("scatter_count is below the number of samples"));
        }
        let packed = t.to_f64(&[packed_len(dim)], "scatter")?;
        let mut off = 0;
        for j in 0..dim {
            if packed[off] < 0.0 {
                return Err(bad("scatter has a negative diagonal"));
            }
            off += dim - j;
        }
        Ok(ScatterState { packed, count })
    };
    if algorithm != Algorithm::Auto {
        unexpected(file.auto.is_some(), "auto")?;
    }
    let learner = match algorithm {
        Algorithm::Auto => {
            unexpected(file.sgd_steps.is_some(), "sgd_steps")?;
            let record = file
                .auto
                .as_ref()
                .ok_or_else(|| bad("missing auto"))?
                .record()?;
            Learner::Auto(AutoState {
                ncm: ncm_sums(file.ncm_normalized_sum)?,
                scatter: scatter(file.scatter, file.scatter_count)?,
                record,
            })
        }
        Algorithm::Ncm => {
            unexpected(file.scatter.is_some(), "scatter")?;
            unexpected(file.scatter_count.is_some(), "scatter_count")?;
            unexpected(file.sgd_steps.is_some(), "sgd_steps")?;
            Learner::Ncm(ncm_sums(file.ncm_normalized_sum)?)
        }
        Algorithm::Slda | Algorithm::Ridge => {
            unexpected(file.ncm_normalized_sum.is_some(), "ncm_normalized_sum")?;
            unexpected(file.sgd_steps.is_some(), "sgd_steps")?;
            let s = scatter(file.scatter, file.scatter_count)?;
            if algorithm == Algorithm::Slda {
                Learner::Slda(s)
            } else {
                Learner::Ridge(s)
            }
        }
        Algorithm::Sgd => {
            unexpected(file.ncm_normalized_sum.is_some(), "ncm_normalized_sum")?;
            unexpected(file.scatter.is_some(), "scatter")?;
            unexpected(file.scatter_count.is_some(), "scatter_count")?;
            let steps = file.sgd_steps.ok_or_else(|| bad("missing sgd_steps"))?;
            if steps < total {
                return Err(bad("sgd_steps is below the number of samples"));
            }
            Learner::Sgd(SgdState::from_parts(weights, bias, steps))
        }
    };

    let classes = file
        .classes
        .into_iter()
        .zip(class_sum.chunks_exact(dim).zip(class_sq.chunks_exact(dim)))
        .map(|(k, (s, q))| Class {
            name: k.name,
            stats: SourceStats::from_parts(k.samples, s.to_vec(), q.to_vec()),
        })
        .collect();
    let source = SourceStats::from_parts(total, src_sum, src_sq);
    let mut calibration = Calibration::default();
    if let Some(scores) = file.open_set {
        if !scores.iter().all(|v| v.is_finite() && *v >= 0.0) {
            return Err(bad("open_set: a score is negative or not finite"));
        }
        // A writer with a longer window: its most recent scores.
        let skip = scores.len().saturating_sub(openset::WINDOW);
        calibration.scores = scores.into_iter().skip(skip).collect();
    }
    let mut head = Head::from_parts(
        file.config,
        dim,
        backbone,
        file.version,
        classes,
        source,
        learner,
    );
    head.calibration = calibration;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{blobs, train, BACKBONE};
    use super::*;

    fn expect(max_bytes: usize) -> Expect<'static> {
        Expect {
            backbone_sha256: Some(BACKBONE),
            dim: Some(6),
            max_bytes,
        }
    }

    /// Small trained heads of every algorithm (standardized and not).
    fn heads() -> Vec<Head> {
        let (data, _) = blobs(1, 6, 3, 4, 0, 2.0, 1.0);
        let mut out = Vec::new();
        for algorithm in Algorithm::ALL {
            for standardize in [false, true] {
                let cfg = HeadConfig {
                    algorithm,
                    standardize,
                    ..HeadConfig::default()
                };
                let mut h = train(&cfg, 6, &data);
                h.set_version(1234);
                out.push(h);
            }
        }
        out
    }

    fn reencode(file: &HeadFile) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(file, &mut out).unwrap();
        out
    }

    #[test]
    fn round_trip_is_exact() {
        let (probes, _) = blobs(9, 6, 3, 5, 0, 2.0, 1.0);
        for h in heads() {
            let bytes = h.to_bytes().unwrap();
            let back = Head::from_bytes(&bytes, &expect(bytes.len())).unwrap();
            assert_eq!(back.to_bytes().unwrap(), bytes, "{}", h.algorithm());
            assert_eq!(back.version(), 1234);
            assert_eq!(back.classes(), h.classes());
            assert_eq!(back.config(), h.config());
            assert_eq!(back.learner, h.learner);
            assert_eq!(back.source_stats(), h.source_stats());
            let (p, q) = (h.snapshot(), back.snapshot());
            for (x, _) in &probes {
                let (a, b) = (p.logits(x).unwrap(), q.logits(x).unwrap());
                assert_eq!(
                    a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
            }
            // The file carries the prediction the head makes.
            let file: HeadFile = ciborium::from_reader(&bytes[..]).unwrap();
            let w = file.weights.to_f32(&[3, 6], "weights").unwrap();
            assert_eq!(w, p.parts().weights);
            // An empty head round-trips too.
            let mut e = h.clone();
            e.reset();
            let eb = e.to_bytes().unwrap();
            let eh = Head::from_bytes(&eb, &expect(eb.len())).unwrap();
            assert_eq!(eh.to_bytes().unwrap(), eb);
            assert!(eh.snapshot().is_empty());
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        for h in heads().into_iter().step_by(2) {
            let bytes = h.to_bytes().unwrap();
            for n in 0..bytes.len() {
                let e = Head::from_bytes(&bytes[..n], &expect(1 << 20)).unwrap_err();
                assert_eq!(e.code(), "bad_head", "prefix {n}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(
                Head::from_bytes(&longer, &expect(1 << 20))
                    .unwrap_err()
                    .code(),
                "bad_head"
            );
        }
    }

    #[test]
    fn bit_flips_never_panic() {
        let (probes, _) = blobs(9, 6, 3, 1, 0, 2.0, 1.0);
        let mut rejected = 0;
        let mut total = 0;
        for h in heads().into_iter().step_by(3) {
            let bytes = h.to_bytes().unwrap();
            for i in 0..bytes.len() {
                for bit in [0, 3, 7] {
                    let mut b = bytes.clone();
                    b[i] ^= 1 << bit;
                    total += 1;
                    match Head::from_bytes(&b, &expect(1 << 20)) {
                        Err(_) => rejected += 1,
                        Ok(back) => {
                            // Whatever was accepted is a usable, consistent head.
                            let p = back.snapshot();
                            for (x, _) in &probes {
                                let _ = p.predict(x, 3);
                            }
                            let again = back.to_bytes().unwrap();
                            Head::from_bytes(&again, &expect(1 << 20)).unwrap();
                        }
                    }
                }
            }
        }
        // Structure and counts are checked: most flips must be caught.
        assert!(rejected * 4 > total, "{rejected} of {total}");
    }

    #[test]
    fn expectations_and_limits() {
        let h = &heads()[0];
        let bytes = h.to_bytes().unwrap();
        let e = Head::from_bytes(&bytes, &expect(bytes.len() - 1)).unwrap_err();
        assert_eq!(e.code(), "too_large");
        let wrong_backbone = Expect {
            backbone_sha256: Some("ff"),
            ..expect(1 << 20)
        };
        assert_eq!(
            Head::from_bytes(&bytes, &wrong_backbone)
                .unwrap_err()
                .code(),
            "backbone_mismatch"
        );
        let wrong_dim = Expect {
            dim: Some(7),
            ..expect(1 << 20)
        };
        assert_eq!(
            Head::from_bytes(&bytes, &wrong_dim).unwrap_err().code(),
            "dimension_mismatch"
        );
        let any = Expect {
            backbone_sha256: None,
            dim: None,
            max_bytes: 1 << 20,
        };
        assert!(Head::from_bytes(&bytes, &any).is_ok());
        for junk in [&b""[..], b"\xff", b"\xa0", b"hello", b"\x80"] {
            assert_eq!(Head::from_bytes(junk, &any).unwrap_err().code(), "bad_head");
        }
    }

    /// Applies `edit` to the decoded file of each head, re-encodes and expects rejection.
    fn rejects(what: &str, edit: impl Fn(&mut HeadFile)) {
        let mut applied = 0;
        for h in heads() {
            let bytes = h.to_bytes().unwrap();
            let mut file: HeadFile = ciborium::from_reader(&bytes[..]).unwrap();
            edit(&mut file);
            let b = reencode(&file);
            if b == bytes {
                continue; // the edit does not apply to this algorithm
            }
            let any = Expect {
                backbone_sha256: None,
                dim: None,
                max_bytes: 1 << 20,
            };
            let e = Head::from_bytes(&b, &any).expect_err(what);
            assert_eq!(e.code(), "bad_head", "{what}: {e}");
            applied += 1;
        }
        assert!(applied > 0, "{what} changed no file");
    }

    fn poke_f32(t: &mut Tensor, i: usize, v: f32) {
        t.data.0[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn poke_f64(t: &mut Tensor, i: usize, v: f64) {
        t.data.0[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn inconsistent_files_are_rejected() {
        rejects("NaN weight", |f| poke_f32(&mut f.weights, 5, f32::NAN));
        rejects("inf bias", |f| poke_f32(&mut f.bias, 1, f32::INFINITY));
        rejects("NaN shift", |f| poke_f32(&mut f.input_shift, 0, f32::NAN));
        rejects("zero scale", |f| poke_f32(&mut f.input_scale, 0, 0.0));
        rejects("NaN class sum", |f| poke_f64(&mut f.class_sum, 2, f64::NAN));
        rejects("negative sum_sq", |f| {
            poke_f64(&mut f.class_sum_sq, 2, -1.0)
        });
        rejects("NaN source", |f| {
            poke_f64(&mut f.source_stats.sum, 0, f64::NAN)
        });
        rejects("NaN scatter", |f| {
            if let Some(t) = &mut f.scatter {
                poke_f64(t, 3, f64::NAN);
            }
        });
        rejects("negative scatter diagonal", |f| {
            if let Some(t) = &mut f.scatter {
                poke_f64(t, 0, -1.0);
            }
        });
        rejects("NaN ncm", |f| {
            if let Some(t) = &mut f.ncm_normalized_sum {
                poke_f64(t, 0, f64::NAN);
            }
        });
        rejects("format", |f| f.format = "other".into());
        rejects("format_version", |f| f.format_version = 2);
        rejects("algorithm", |f| f.algorithm = "knn".into());
        rejects("algorithm vs config", |f| {
            f.algorithm = if f.algorithm == "ncm" { "sgd" } else { "ncm" }.into()
        });
        rejects("dim zero", |f| f.dim = 0);
        rejects("dim huge", |f| f.dim = 1 << 40);
        rejects("dim vs shapes", |f| f.dim = 5);
        rejects("duplicate class", |f| {
            f.classes[1].name = f.classes[0].name.clone()
        });
        rejects("bad class name", |f| f.classes[0].name = "a/b".into());
        rejects("empty class", |f| f.classes[0].samples = 0);
        rejects("count mismatch", |f| f.classes[0].samples += 1);
        rejects("source count", |f| f.source_stats.count += 1);
        rejects("extra class", |f| {
            f.classes.push(FileClass {
                name: "zz".into(),
                samples: 1,
            })
        });
        rejects("dtype", |f| f.weights.dtype = "f64".into());
        rejects("shape", |f| f.weights.shape = vec![6, 3]);
        rejects("short data", |f| {
            f.bias.data.0.pop();
        });
        rejects("missing state", |f| {
            f.ncm_normalized_sum = None;
            f.scatter = None;
            f.sgd_steps = None;
        });
        rejects("foreign state", |f| {
            if f.sgd_steps.is_some() {
                f.scatter_count = Some(1);
            } else {
                f.sgd_steps = Some(100);
            }
        });
        rejects("scatter_count", |f| {
            if let Some(c) = &mut f.scatter_count {
                *c = 1;
            }
        });
        rejects("sgd_steps", |f| {
            if let Some(c) = &mut f.sgd_steps {
                *c = 1;
            }
        });
        rejects("config", |f| f.config.ncm_temperature = -1.0);
        rejects("backbone", |f| f.backbone_sha256 = "x\n".into());
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_rejected() {
        let bytes = heads()[0].to_bytes().unwrap();
        let any = Expect {
            backbone_sha256: None,
            dim: None,
            max_bytes: 1 << 20,
        };
        let value: ciborium::Value = ciborium::from_reader(&bytes[..]).unwrap();
        let ciborium::Value::Map(entries) = value else {
            panic!("not a map")
        };
        type Entries = Vec<(ciborium::Value, ciborium::Value)>;
        let edit = |f: &dyn Fn(&mut Entries)| {
            let mut e = entries.clone();
            f(&mut e);
            let mut out = Vec::new();
            ciborium::into_writer(&ciborium::Value::Map(e), &mut out).unwrap();
            Head::from_bytes(&out, &any).unwrap_err().code()
        };
        let key = |k: &str| ciborium::Value::Text(k.into());
        assert_eq!(
            edit(&|e| e.push((key("extra"), ciborium::Value::Bool(true)))),
            "bad_head"
        );
        assert_eq!(edit(&|e| e.retain(|(k, _)| *k != key("bias"))), "bad_head");
        assert_eq!(
            edit(&|e| {
                for (k, v) in e.iter_mut() {
                    if *k == key("weights") {
                        *v = ciborium::Value::Array(vec![ciborium::Value::Integer(1.into())]);
                    }
                }
            }),
            "bad_head"
        );
        // Float arrays as arrays of numbers instead of byte strings are refused.
        assert_eq!(
            edit(&|e| {
                for (k, v) in e.iter_mut() {
                    if *k == key("input_shift") {
                        if let ciborium::Value::Map(m) = v {
                            for (kk, vv) in m.iter_mut() {
                                if *kk == key("data") {
                                    *vv = ciborium::Value::Array(vec![
                                        ciborium::Value::Integer(
                                            0.into()
                                        );
                                        24
                                    ]);
                                }
                            }
                        }
                    }
                }
            }),
            "bad_head"
        );
    }

    /// Replaces the first occurrence of `key` (as a CBOR text string) followed by one
    /// header byte with `key` followed by `header`.
    fn patch_after_key(bytes: &[u8], key: &str, header: &[u8]) -> Vec<u8> {
        let mut k = vec![0x60 | key.len() as u8];
        k.extend_from_slice(key.as_bytes());
        let pos = bytes
            .windows(k.len())
            .position(|w| w == k.as_slice())
            .unwrap();
        let at = pos + k.len();
        let mut out = bytes[..at].to_vec();
        out.extend_from_slice(header);
        out.extend_from_slice(&bytes[at + 1..]);
        out
    }

    #[test]
    fn huge_length_headers_do_not_allocate() {
        let any = Expect {
            backbone_sha256: None,
            dim: None,
            max_bytes: 1 << 20,
        };
        let huge = [0x1b, 0x10, 0, 0, 0, 0, 0, 0, 0]; // additional info 27: 2^60
        for h in heads().into_iter().step_by(2) {
            let bytes = h.to_bytes().unwrap();
            // Array of 2^60 classes, byte string of 2^60 bytes, text of 2^60 bytes, map of
            // 2^60 entries: each header type with a hostile length.
            for (key, major) in [
                ("classes", 0x80u8),
                ("shape", 0x80),
                ("data", 0x40),
                ("algorithm", 0x60),
                ("config", 0xa0),
                ("format", 0x60),
            ] {
                let mut header = huge.to_vec();
                header[0] |= major;
                let b = patch_after_key(&bytes, key, &header);
                assert_eq!(
                    Head::from_bytes(&b, &any).unwrap_err().code(),
                    "bad_head",
                    "{key}"
                );
            }
        }
        // Whole-file hostile headers.
        for first in [0x9bu8, 0xbb, 0x5b, 0x7b] {
            let mut b = vec![first];
            b.extend_from_slice(&huge[1..]);
            b.extend_from_slice(&[0u8; 64]);
            assert_eq!(Head::from_bytes(&b, &any).unwrap_err().code(), "bad_head");
        }
        // Deep nesting hits the recursion limit, not the stack.
        let deep = vec![0x81u8; 100_000];
        assert_eq!(
            Head::from_bytes(&deep, &any).unwrap_err().code(),
            "bad_head"
        );
    }

    /// Not a test: writes a small head of each algorithm and probes with the probabilities
    /// adaptd predicts, to check the Python reader of docs/head-format.md against.
    #[test]
    #[ignore = "fixture writer: ADAPTD_HEAD_FIXTURE_DIR=DIR cargo test --lib writes_a_fixture -- --ignored"]
    fn writes_a_fixture_for_the_python_reader() {
        let dir = std::env::var("ADAPTD_HEAD_FIXTURE_DIR").expect("set ADAPTD_HEAD_FIXTURE_DIR");
        let (data, probes) = blobs(5, 8, 4, 10, 2, 2.0, 1.0);
        for algorithm in Algorithm::ALL {
            let cfg = HeadConfig {
                algorithm,
                standardize: algorithm == Algorithm::Ncm,
                ..HeadConfig::default()
            };
            let h = train(&cfg, 8, &data);
            let p = h.snapshot();
            let dir = std::path::Path::new(&dir);
            std::fs::write(dir.join(format!("{algorithm}.head")), h.to_bytes().unwrap()).unwrap();
            let rows: Vec<serde_json::Value> = probes
                .iter()
                .map(|(x, _)| serde_json::json!({"x": x, "p": p.probabilities(x).unwrap()}))
                .collect();
            std::fs::write(
                dir.join(format!("{algorithm}.json")),
                serde_json::to_string(&rows).unwrap(),
            )
            .unwrap();
        }
    }
}
