//! Text models: the `[text]` section of `model.toml` and BERT's uncased WordPiece tokenizer
//! (normalizer, pre-tokenizer, WordPiece, `[CLS] … [SEP]`, truncation), written to give the
//! same token ids as Hugging Face's `tokenizers` (`BertNormalizer`, `BertPreTokenizer`,
//! `WordPiece`, `TemplateProcessing`) on every input; `tests/text.rs` checks it against ids the
//! Python library produced.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use unicode_categories::UnicodeCategories;
use unicode_normalization::UnicodeNormalization;

/// The `[text]` section: how a UTF-8 text becomes the backbone's token inputs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    /// WordPiece vocabulary, one token per line (the line number is the id), relative to the
    /// model directory.
    pub vocab: PathBuf,
    /// SHA-256 of the vocabulary file (hex): part of the model's identity; a file with another
    /// hash refuses to load.
    pub vocab_sha256: String,
    /// Uncased: strip accents (NFD, drop non-spacing marks) and lowercase.
    #[serde(default = "yes")]
    pub lowercase: bool,
    /// At most this many tokens, `[CLS]` and `[SEP]` included; longer text is truncated.
    pub max_tokens: usize,
    /// Payloads longer than this many bytes are refused (`too_long`).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Graph input taking the attention mask (all ones: one sentence, no padding).
    #[serde(default)]
    pub attention_mask: Option<String>,
    /// Graph input taking the segment ids (all zeros: one sentence).
    #[serde(default)]
    pub token_type_ids: Option<String>,
    /// The unknown token.
    #[serde(default = "default_unknown")]
    pub unknown_token: String,
}

fn yes() -> bool {
    true
}
fn default_max_bytes() -> usize {
    8192
}
fn default_unknown() -> String {
    "[UNK]".into()
}

/// Words longer than this many characters become one `[UNK]` (the reference's
/// `max_input_chars_per_word`).
const MAX_CHARS_PER_WORD: usize = 100;

/// Tokens kept whole wherever they appear in the text (the reference's special added tokens).
const SPECIAL: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

impl TextSpec {
    /// Checks values that cannot work.
    pub fn validate(&self, input_shape: &[usize]) -> Result<(), String> {
        if self.max_tokens < 3 {
            return Err(format!(
                "text.max_tokens {} must be at least 3",
                self.max_tokens
            ));
        }
        if input_shape != [1, self.max_tokens] {
            return Err(format!(
                "input.shape {input_shape:?} must be [1, text.max_tokens] = [1, {}]",
                self.max_tokens
            ));
        }
        if self.max_bytes == 0 {
            return Err("text.max_bytes must be positive".into());
        }
        Ok(())
    }

    /// What the embedding depends on besides the ONNX file (the model identity hashes it).
    pub fn recipe(&self, vocab_sha256: &str) -> String {
        format!(
            "wordpiece vocab={vocab_sha256} lowercase={} max_tokens={} unknown={}",
            self.lowercase, self.max_tokens, self.unknown_token
        )
    }
}

/// Why a text could not become tokens. `code()` is the stable machine-readable kind.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("text is not valid UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    #[error("empty text")]
    Empty,
    #[error("text of {got} bytes is over this model's limit of {limit} (text.max_bytes)")]
    TooLong { got: usize, limit: usize },
    #[error("cannot read vocabulary {path}: {message}")]
    Vocab { path: String, message: String },
}

impl TextError {
    /// Stable error code for replies.
    pub fn code(&self) -> &'static str {
        match self {
            TextError::NotUtf8(_) => "invalid_text",
            TextError::Empty => "empty_text",
            TextError::TooLong { .. } => "too_long",
            TextError::Vocab { .. } => "model",
        }
    }
}

/// A text's tokens, ready for the backbone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Token ids, `[CLS]` first and `[SEP]` last.
    pub ids: Vec<i64>,
    /// Whether the text was cut at `max_tokens`.
    pub truncated: bool,
}

/// BERT's WordPiece tokenizer over a loaded vocabulary.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    spec: TextSpec,
    vocab: HashMap<String, u32>,
    /// SHA-256 of the vocabulary file (hex).
    vocab_sha256: String,
    unk: u32,
    cls: u32,
    sep: u32,
    /// Ids of the special tokens matched whole in the text, in [`SPECIAL`]'s order (absent ones
    /// are not matched).
    special: Vec<(&'static str, u32)>,
}

impl Tokenizer {
    /// Reads the vocabulary `spec.vocab` under `dir` and checks its hash.
    pub fn load(dir: &Path, spec: &TextSpec) -> Result<Tokenizer, TextError> {
        use sha2::{Digest, Sha256};
        let path = dir.join(&spec.vocab);
        let fail = |message: String| TextError::Vocab {
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        if !spec.vocab_sha256.eq_ignore_ascii_case(&sha) {
            return Err(fail(format!(
                "SHA-256 {sha}, its model.toml expects {}",
                spec.vocab_sha256
            )));
        }
        let text = String::from_utf8(bytes).map_err(|e| fail(format!("not UTF-8: {e}")))?;
        Tokenizer::from_vocab(spec.clone(), &text, sha).map_err(fail)
    }

    /// A tokenizer over `vocab` (one token per line).
    pub fn from_vocab(
        spec: TextSpec,
        vocab: &str,
        vocab_sha256: String,
    ) -> Result<Tokenizer, String> {
        let mut map = HashMap::new();
        for (id, line) in vocab.lines().enumerate() {
            let id = u32::try_from(id).map_err(|_| "vocabulary too large".to_string())?;
            // The reference reads `vocab.txt` line by line and keeps the last id of a duplicate.
            map.insert(line.trim_end().to_string(), id);
        }
        let id = |t: &str| {
            map.get(t)
                .copied()
                .ok_or_else(|| format!("the vocabulary has no {t} token"))
        };
        let (unk, cls, sep) = (id(&spec.unknown_token)?, id("[CLS]")?, id("[SEP]")?);
        let special = SPECIAL
            .iter()
            .filter_map(|t| map.get(*t).map(|&i| (*t, i)))
            .collect();
        Ok(Tokenizer {
            spec,
            vocab: map,
            vocab_sha256,
            unk,
            cls,
            sep,
            special,
        })
    }

    /// The description this tokenizer follows.
    pub fn spec(&self) -> &TextSpec {
        &self.spec
    }

    /// SHA-256 of the vocabulary file (hex).
    pub fn vocab_sha256(&self) -> &str {
        &self.vocab_sha256
    }

    /// Number of entries in the vocabulary.
    pub fn vocab_len(&self) -> usize {
        self.vocab.len()
    }

    /// A payload's text: valid UTF-8, not empty, within `max_bytes`.
    pub fn text<'a>(&self, bytes: &'a [u8]) -> Result<&'a str, TextError> {
        if bytes.len() > self.spec.max_bytes {
            return Err(TextError::TooLong {
                got: bytes.len(),
                limit: self.spec.max_bytes,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| TextError::NotUtf8(e.valid_up_to()))?;
        self.check(text)?;
        Ok(text)
    }

    /// Refuses empty or over-long text.
    pub fn check(&self, text: &str) -> Result<(), TextError> {
        if text.len() > self.spec.max_bytes {
            return Err(TextError::TooLong {
                got: text.len(),
                limit: self.spec.max_bytes,
            });
        }
        if text.is_empty() {
            return Err(TextError::Empty);
        }
        Ok(())
    }

    /// `[CLS]` + the text's WordPiece ids (cut to `max_tokens - 2`) + `[SEP]`. Any string is
    /// accepted (whitespace-only gives `[CLS] [SEP]`); size limits are [`Tokenizer::check`]'s.
    pub fn encode(&self, text: &str) -> Tokens {
        let budget = self.spec.max_tokens.saturating_sub(2);
        let mut ids = Vec::with_capacity(16);
        ids.push(i64::from(self.cls));
        let mut pieces = 0usize;
        let mut truncated = false;
        let mut push = |id: u32, ids: &mut Vec<i64>| {
            if pieces < budget {
                ids.push(i64::from(id));
                pieces += 1;
            } else {
                truncated = true;
            }
        };
        for segment in self.split_special(text) {
            match segment {
                Segment::Special(id) => push(id, &mut ids),
                Segment::Text(s) => {
                    let normalized = self.normalize(s);
                    for word in pre_tokenize(&normalized) {
                        self.word_piece(word, |id| push(id, &mut ids));
                    }
                }
            }
        }
        ids.push(i64::from(self.sep));
        Tokens { ids, truncated }
    }

    /// Cuts the text around whole special tokens (leftmost match; they cannot overlap).
    fn split_special<'a>(&self, text: &'a str) -> Vec<Segment<'a>> {
        let mut out = Vec::new();
        let mut rest = text;
        loop {
            let next = self
                .special
                .iter()
                .filter_map(|&(t, id)| rest.find(t).map(|at| (at, t.len(), id)))
                .min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)));
            match next {
                Some((at, len, id)) => {
                    if at > 0 {
                        out.push(Segment::Text(&rest[..at]));
                    }
                    out.push(Segment::Special(id));
                    rest = &rest[at + len..];
                }
                None => {
                    if !rest.is_empty() {
                        out.push(Segment::Text(rest));
                    }
                    return out;
                }
            }
        }
    }

    /// BERT's normalizer: drop NUL, U+FFFD and control/format/private-use characters, map
    /// whitespace to spaces, space out CJK ideographs, then (uncased) NFD without non-spacing
    /// marks, then lowercase — in that order, as the reference.
    fn normalize(&self, text: &str) -> String {
        let mut cleaned = String::with_capacity(text.len() + 8);
        for c in text.chars() {
            if c == '\0' || c == '\u{fffd}' || is_control(c) {
                continue;
            }
            if is_whitespace(c) {
                cleaned.push(' ');
            } else if is_chinese_char(c) {
                cleaned.push(' ');
                cleaned.push(c);
                cleaned.push(' ');
            } else {
                cleaned.push(c);
            }
        }
        if !self.spec.lowercase {
            return cleaned;
        }
        let mut out = String::with_capacity(cleaned.len());
        for c in cleaned.nfd().filter(|c| !c.is_mark_nonspacing()) {
            out.extend(c.to_lowercase());
        }
        out
    }

    /// Greedy longest-match-first WordPiece of one word; a word with a part that matches
    /// nothing, or longer than [`MAX_CHARS_PER_WORD`], is one unknown token.
    fn word_piece(&self, word: &str, mut emit: impl FnMut(u32)) {
        if word.chars().count() > MAX_CHARS_PER_WORD {
            emit(self.unk);
            return;
        }
        let mut found = Vec::new();
        let mut start = 0;
        let mut piece = String::new();
        while start < word.len() {
            let mut end = word.len();
            let mut hit = None;
            while start < end {
                piece.clear();
                if start > 0 {
                    piece.push_str("##");
                }
                piece.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(piece.as_str()) {
                    hit = Some(id);
                    break;
                }
                end -= word[start..end]
                    .chars()
                    .next_back()
                    .map_or(1, char::len_utf8);
            }
            match hit {
                Some(id) => found.push(id),
                None => {
                    emit(self.unk);
                    return;
                }
            }
            start = end;
        }
        found.into_iter().for_each(emit);
    }
}

enum Segment<'a> {
    Text(&'a str),
    Special(u32),
}

/// BERT's pre-tokenizer: split on whitespace (dropped), then every punctuation character is a
/// word of its own.
fn pre_tokenize(text: &str) -> impl Iterator<Item = &str> {
    text.split(char::is_whitespace)
        .filter(|w| !w.is_empty())
        .flat_map(split_punctuation)
}

fn split_punctuation(word: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in word.char_indices() {
        if is_punctuation(c) {
            if start < i {
                out.push(&word[start..i]);
            }
            out.push(&word[i..i + c.len_utf8()]);
            start = i + c.len_utf8();
        }
    }
    if start < word.len() {
        out.push(&word[start..]);
    }
    out
}

fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

/// Control (Cc), format (Cf) and private-use (Co), except tab and line breaks.
fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// The CJK ideograph blocks BERT spaces out (not kana or hangul).
fn is_chinese_char(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max_tokens: usize) -> TextSpec {
        TextSpec {
            vocab: "vocab.txt".into(),
            vocab_sha256: String::new(),
            lowercase: true,
            max_tokens,
            max_bytes: 64,
            attention_mask: None,
            token_type_ids: None,
            unknown_token: "[UNK]".into(),
        }
    }

    const VOCAB: &str = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nturn\nthe\nlight\noff\n!\n,\n##s\nun\n##aff\n##able\ncafe\n中\n";

    fn tok(max_tokens: usize) -> Tokenizer {
        Tokenizer::from_vocab(spec(max_tokens), VOCAB, String::new()).expect("vocab")
    }

    #[test]
    fn wordpiece_longest_match_first_with_continuations() {
        let t = tok(32);
        assert_eq!(
            t.encode("Turn the lights OFF!").ids,
            [2, 5, 6, 7, 11, 8, 9, 3]
        );
        assert_eq!(t.encode("unaffable").ids, [2, 12, 13, 14, 3]);
        // One part matches nothing: the whole word is unknown.
        assert_eq!(t.encode("unaffablex").ids, [2, 1, 3]);
    }

    #[test]
    fn normalizer_strips_accents_controls_and_spaces_out_ideographs() {
        let t = tok(32);
        assert_eq!(t.encode("Café\u{0}\u{200b}").ids, [2, 15, 3]);
        assert_eq!(t.encode("cafe\u{301}").ids, [2, 15, 3]);
        assert_eq!(t.encode("light中off").ids, [2, 7, 16, 8, 3]);
        assert_eq!(t.encode(" \t\n ").ids, [2, 3]);
        assert_eq!(t.encode("light[SEP]off").ids, [2, 7, 3, 8, 3]);
    }

    /// Any string: [CLS] first, [SEP] last, within max_tokens, every id in the vocabulary.
    #[test]
    fn random_text_never_breaks_the_bounds() {
        use rand::{Rng, SeedableRng};
        let t = tok(12);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let pool = [
            'a', 'é', '\u{301}', '中', '!', ' ', '\n', '\0', '\u{200b}', '😀', 'İ', '[',
        ];
        for _ in 0..2000 {
            let len = rng.gen_range(0..40);
            let s: String = (0..len)
                .map(|_| match rng.gen_range(0..3) {
                    0 => pool[rng.gen_range(0..pool.len())],
                    1 => char::from_u32(rng.gen_range(0..0x11_0000)).unwrap_or('x'),
                    _ => ['t', 'u', 'r', 'n', 'S', 'E', 'P', ']'][rng.gen_range(0..8)],
                })
                .collect();
            let ids = t.encode(&s).ids;
            assert!(ids.len() >= 2 && ids.len() <= 12, "{s:?}: {ids:?}");
            assert_eq!((ids[0], ids[ids.len() - 1]), (2, 3), "{s:?}");
            assert!(
                ids.iter()
                    .all(|&id| id >= 0 && (id as usize) < t.vocab_len()),
                "{s:?}: {ids:?}"
            );
        }
    }

    #[test]
    fn truncates_to_max_tokens_and_refuses_bad_payloads() {
        let t = tok(4);
        let out = t.encode("turn the light off");
        assert_eq!(out.ids, [2, 5, 6, 3]);
        assert!(out.truncated);
        assert!(!t.encode("turn").truncated);
        let long = "x".repeat(101);
        assert_eq!(tok(8).encode(&long).ids, [2, 1, 3]);
        assert_eq!(t.text(b"").map_err(|e| e.code()), Err("empty_text"));
        assert_eq!(
            t.text(b"\xff\xfe").map_err(|e| e.code()),
            Err("invalid_text")
        );
        assert_eq!(t.text(&[b'a'; 65]).map_err(|e| e.code()), Err("too_long"));
        assert_eq!(t.text(b"turn").ok(), Some("turn"));
    }
}
