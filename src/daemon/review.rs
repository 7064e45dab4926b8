//! The review queue (`{root}/review`): predictions worth a label — unknown to the head, or with
//! the top two classes close — offered to the user at a bounded rate, with a thumbnail for
//! images, and their embeddings kept (bounded by bytes) so that `{root}/feedback` on them works
//! long after the feedback ring has forgotten them.

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Serialize;

use crate::config::ServiceSettings;
use crate::head::{Prediction, Scored};

/// Why a prediction is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The open set says the input is like none of the classes.
    Unknown,
    /// The top two classes' scores are within `service.review_margin`.
    LowMargin,
}

/// `{root}/review`.
#[derive(Debug, Serialize)]
pub struct ReviewDoc<'a> {
    /// The prediction id: `{root}/feedback` `{"id", "label"}` teaches it.
    pub id: &'a str,
    pub reason: Reason,
    /// The published prediction's label (the unknown label for an unknown input).
    pub label: Option<&'a str>,
    pub top: &'a [Scored],
    /// Top score minus the second's (`None` with one class).
    pub margin: Option<f32>,
    pub known: Option<bool>,
    pub novelty: Option<f32>,
    pub source: &'a str,
    /// A small JPEG of the input image (base64), for images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<String>,
}

/// Which predictions are offered, how often, and the embeddings of those offered.
#[derive(Debug)]
pub struct Review {
    margin: f32,
    interval: Duration,
    thumbnail_px: u32,
    max_bytes: usize,
    last: Mutex<Option<Instant>>,
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    entries: VecDeque<(String, Arc<Vec<f32>>)>,
    bytes: usize,
}

/// What one kept embedding costs: its floats and its id, plus the bookkeeping.
fn cost(id: &str, e: &[f32]) -> usize {
    std::mem::size_of_val(e) + id.len() + 64
}

impl Review {
    /// From `[service]`; `None` when `review` is off.
    pub fn from_settings(s: &ServiceSettings) -> Option<Review> {
        s.review.then(|| Review {
            margin: s.review_margin,
            interval: s.review_interval,
            thumbnail_px: s.review_thumbnail_px,
            max_bytes: s.review_max_bytes,
            last: Mutex::new(None),
            kept: Mutex::new(Kept::default()),
        })
    }

    /// Why `p` (whose open-set verdict is `known`) is worth a label, if it is.
    pub fn reason(&self, p: &Prediction, known: Option<bool>) -> Option<Reason> {
        if known == Some(false) {
            return Some(Reason::Unknown);
        }
        p.margin()
            .filter(|m| *m < self.margin)
            .map(|_| Reason::LowMargin)
    }

    /// Whether an offer may go out now (at most one per `review_interval_secs`); counts it.
    pub fn admit(&self, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some(t) if now.duration_since(t) < self.interval => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Keeps an offered prediction's embedding, forgetting the oldest past `review_max_bytes`.
    pub fn keep(&self, id: &str, embedding: Arc<Vec<f32>>) {
        let c = cost(id, &embedding);
        if c > self.max_bytes {
            return;
        }
        let mut k = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        while k.bytes + c > self.max_bytes {
            match k.entries.pop_front() {
                Some((old, e)) => k.bytes -= cost(&old, &e),
                None => break,
            }
        }
        k.bytes += c;
        k.entries.push_back((id.to_string(), embedding));
    }

    /// The embedding of the newest offered prediction with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Vec<f32>>> {
        let k = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        k.entries
            .iter()
            .rev()
            .find(|(i, _)| i == id)
            .map(|(_, e)| e.clone())
    }

    /// A JPEG thumbnail (base64) of an encoded image, at most `review_thumbnail_px` on a side;
    /// `None` when off or the image does not decode.
    pub fn thumbnail(&self, image: &[u8]) -> Option<String> {
        if self.thumbnail_px == 0 {
            return None;
        }
        let img = image::load_from_memory(image).ok()?;
        let small = img
            .thumbnail(self.thumbnail_px, self.thumbnail_px)
            .to_rgb8();
        let mut out = Cursor::new(Vec::new());
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 75);
        small.write_with_encoder(encoder).ok()?;
        Some(base64::engine::general_purpose::STANDARD.encode(out.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(margin: f32, interval_ms: u64, max_bytes: usize) -> Review {
        Review {
            margin,
            interval: Duration::from_millis(interval_ms),
            thumbnail_px: 32,
            max_bytes,
            last: Mutex::new(None),
            kept: Mutex::new(Kept::default()),
        }
    }

    fn pred(scores: &[f32]) -> Prediction {
        Prediction {
            top: scores
                .iter()
                .enumerate()
                .map(|(i, &score)| Scored {
                    label: format!("c{i}"),
                    score,
                })
                .collect(),
            novelty: None,
        }
    }

    #[test]
    fn unknown_and_close_calls_are_offered_confident_ones_not() {
        let r = review(0.2, 0, 1 << 20);
        assert_eq!(r.reason(&pred(&[0.9, 0.05]), Some(true)), None);
        assert_eq!(
            r.reason(&pred(&[0.5, 0.4]), Some(true)),
            Some(Reason::LowMargin)
        );
        assert_eq!(
            r.reason(&pred(&[0.9, 0.05]), Some(false)),
            Some(Reason::Unknown)
        );
        // One class: no margin, only the open set can offer it.
        assert_eq!(r.reason(&pred(&[1.0]), None), None);
    }

    #[test]
    fn offers_are_rate_limited() {
        let r = review(0.2, 1000, 1 << 20);
        let t = Instant::now();
        assert!(r.admit(t));
        assert!(!r.admit(t + Duration::from_millis(999)));
        assert!(r.admit(t + Duration::from_millis(1000)));
    }

    #[test]
    fn kept_embeddings_are_bounded_by_bytes_oldest_forgotten() {
        let e = Arc::new(vec![0.0f32; 100]);
        let one = cost("a0", &e);
        let r = review(0.2, 0, 3 * one);
        for i in 0..5 {
            r.keep(&format!("a{i}"), e.clone());
        }
        assert!(r.get("a0").is_none() && r.get("a1").is_none());
        assert!(r.get("a2").is_some() && r.get("a4").is_some());
        // Larger than the whole budget: not kept, nothing evicted.
        r.keep("huge", Arc::new(vec![0.0; 1000]));
        assert!(r.get("huge").is_none() && r.get("a4").is_some());
    }

    #[test]
    fn thumbnails_are_small_jpegs() {
        let r = review(0.2, 0, 1 << 20);
        let img = image::RgbImage::from_fn(200, 100, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let mut png = Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let b64 = r.thumbnail(png.get_ref()).expect("thumbnail");
        let jpeg = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert!(jpeg.starts_with(&[0xFF, 0xD8]));
        let back = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((back.width(), back.height()), (32, 16));
        assert!(r.thumbnail(b"not an image").is_none());
    }
}
