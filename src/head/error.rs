//! Errors of the head module, with stable machine-readable codes, and label validation.

use super::Algorithm;

/// Longest accepted class label, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;

/// Everything that can go wrong when training, predicting with, merging or loading a head.
///
/// Every variant has a stable snake_case [`code`](HeadError::code) for replies on the wire.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum HeadError {
    /// The embedding (or a head file) has a different dimension than expected.
    #[error("dimension mismatch: expected {expected}, got {got}")]
    DimensionMismatch {
        /// The dimension the head (or the caller) expects.
        expected: usize,
        /// The dimension that was given.
        got: usize,
    },
    /// The embedding contains NaN or infinity, or a score overflowed.
    #[error("embedding contains a non-finite value (or is too large to score)")]
    NonFinite,
    /// The label is empty, too long or contains a forbidden character.
    #[error("invalid label: {0}")]
    BadLabel(String),
    /// `unlearn` named a class that the head does not have.
    #[error("unknown class {0:?}")]
    UnknownClass(String),
    /// A new label would exceed [`MAX_CLASSES`](super::MAX_CLASSES).
    #[error("too many classes (limit {limit})")]
    TooManyClasses {
        /// The limit.
        limit: usize,
    },
    /// The operation is not available for this learner (e.g. `unlearn` on `sgd`).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A head file is malformed or inconsistent.
    #[error("invalid head file: {0}")]
    BadHead(String),
    /// A head (file) was made for a different backbone.
    #[error("backbone mismatch: expected {expected}, got {got}")]
    BackboneMismatch {
        /// The backbone hash expected.
        expected: String,
        /// The backbone hash found.
        got: String,
    },
    /// Two heads (or a head and a request) use different algorithms.
    #[error("algorithm mismatch: expected {expected}, got {got}")]
    AlgorithmMismatch {
        /// The algorithm expected.
        expected: Algorithm,
        /// The algorithm found.
        got: Algorithm,
    },
    /// Two heads have configurations that cannot be merged.
    #[error("config mismatch: {0}")]
    ConfigMismatch(String),
    /// A configuration value is out of range.
    #[error("invalid head config: {0}")]
    BadConfig(String),
    /// Prediction was asked of a head without classes.
    #[error("the head has no classes")]
    NoClasses,
    /// A head file is larger than the caller allows.
    #[error("head file too large: {got} bytes, limit {limit}")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
        /// The size given.
        got: usize,
    },
    /// Encoding a head file failed (not expected to happen).
    #[error("cannot encode head: {0}")]
    Encode(String),
    /// `unmerge` was given a head that was not merged into this one.
    #[error("not merged into this head: {0}")]
    NotMerged(String),
}

impl HeadError {
    /// A stable snake_case code for this error, for replies on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            HeadError::DimensionMismatch { .. } => "dimension_mismatch",
            HeadError::NonFinite => "non_finite",
            HeadError::BadLabel(_) => "bad_label",
            HeadError::UnknownClass(_) => "unknown_class",
            HeadError::TooManyClasses { .. } => "too_many_classes",
            HeadError::Unsupported(_) => "unsupported",
            HeadError::BadHead(_) => "bad_head",
            HeadError::BackboneMismatch { .. } => "backbone_mismatch",
            HeadError::AlgorithmMismatch { .. } => "algorithm_mismatch",
            HeadError::ConfigMismatch(_) => "config_mismatch",
            HeadError::BadConfig(_) => "bad_config",
            HeadError::NoClasses => "no_classes",
            HeadError::TooLarge { .. } => "too_large",
            HeadError::Encode(_) => "encode_failed",
            HeadError::NotMerged(_) => "not_merged",
        }
    }
}

/// Checks a class label: non-empty, at most [`MAX_LABEL_BYTES`] bytes, and free of MQTT topic
/// metacharacters (`+`, `#`, `/`) and control characters (including NUL).
pub fn validate_label(s: &str) -> Result<(), HeadError> {
    if s.is_empty() {
        return Err(HeadError::BadLabel("label is empty".into()));
    }
    if s.len() > MAX_LABEL_BYTES {
        return Err(HeadError::BadLabel(format!(
            "label is {} bytes, at most {MAX_LABEL_BYTES} allowed",
            s.len()
        )));
    }
    if let Some(c) = s
        .chars()
        .find(|c| matches!(c, '+' | '#' | '/') || c.is_control())
    {
        return Err(HeadError::BadLabel(format!(
            "label contains forbidden character {c:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in [
            "cat",
            "a",
            "Kaffee ☕",
            "with space",
            "x".repeat(64).as_str(),
        ] {
            assert_eq!(validate_label(ok), Ok(()), "{ok:?}");
        }
        let long = "x".repeat(65);
        let two_byte = "é".repeat(33); // 66 bytes, 33 chars
        for bad in [
            "",
            "a+b",
            "a#",
            "/",
            "nul\0",
            "tab\t",
            "nl\n",
            "del\u{7f}",
            &long,
            &two_byte,
        ] {
            let e = validate_label(bad).expect_err(bad);
            assert_eq!(e.code(), "bad_label");
        }
    }
}
