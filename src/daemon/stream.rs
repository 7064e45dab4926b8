//! Live streams: audio (`[[sources]] kind = "stream"`), each message a small WAV chunk (Rhasspy's
//! Hermes `audioFrame`), and sensor readings (`kind = "readings"`, parsed by
//! [`crate::daemon::readings`]), gathered per topic into a sliding window; every hop the intake
//! cuts a window for the workers. An audio window's prediction is published only when what is
//! heard changes; a sensor window's every time. Holds no backbone: decoding a chunk is cheap and
//! runs on the intake.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::SourceTopic;
use crate::daemon::error::RequestError;
use crate::daemon::readings;
use crate::model::audio::{self, AudioError, Clip};
use crate::model::{EmbedError, Embedder, Input, Modality};

/// Most streams (distinct topics) followed at once; a chunk on a new topic beyond it is refused.
pub const MAX_STREAMS: usize = 64;
/// Longest chunk accepted (seconds): Hermes sends tens of milliseconds.
const MAX_CHUNK_SECONDS: f64 = 5.0;
/// A stream's decode errors are reported at most this often (a broken publisher sends dozens
/// a second).
const ERROR_EVERY: Duration = Duration::from_secs(10);

/// One stream source's window.
#[derive(Debug, Clone)]
enum Plan {
    /// Audio, in seconds.
    Audio {
        window: f64,
        hop: f64,
        threshold: f32,
    },
    /// Sensor readings: the model's channels, its window length and the hop, in readings.
    Readings {
        channels: Vec<String>,
        length: usize,
        hop: usize,
    },
}

/// A window cut from a stream, for the workers.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamWindow {
    /// The window as an input: a clip, or a sensor window.
    pub input: Input,
    /// For a sensor window, which readings of its topic it holds (first, last; counted from 0
    /// since adaptd began following the topic).
    pub readings: Option<(u64, u64)>,
}

/// One stream's recent samples, at the rate its chunks come in.
#[derive(Debug, Default)]
struct Buffer {
    rate: u32,
    samples: VecDeque<f32>,
    /// Samples since the last window was cut.
    fresh: usize,
    /// What was last published: the label heard (score ≥ threshold), `None` for nothing; the
    /// outer `None` before the first prediction.
    heard: Option<Option<String>>,
    /// A sensor stream's readings.
    readings: readings::Buffer,
    last_error: Option<Instant>,
}

/// The streams of every stream source.
#[derive(Debug)]
pub struct Streams {
    /// Per source (by index in `[[sources]]`), its window when it is a stream.
    plans: Vec<Option<Plan>>,
    buffers: Mutex<HashMap<String, Buffer>>,
}

/// Why a chunk was not taken, and whether to say so now.
#[derive(Debug)]
pub struct ChunkError {
    pub error: RequestError,
    /// False while the stream's last error was reported less than 10 s ago.
    pub report: bool,
}

impl Streams {
    /// The streams of `sources` for the model `embedder` runs. A stream source on a model that
    /// does not take sound is an error at start.
    pub fn new(sources: &[SourceTopic], embedder: &Embedder) -> anyhow::Result<Streams> {
        let audio = embedder.model.spec.audio.as_ref();
        let mut plans = Vec::with_capacity(sources.len());
        for source in sources {
            if let Some(r) = &source.readings {
                let Some(windows) = &embedder.windows else {
                    anyhow::bail!(
                        "source {:?} is a sensor's readings, but the model {} does not take \
                         sensor windows (set [model] dir to a sensor model, e.g. \
                         models/minirocket-basicmotions-acc)",
                        source.topic,
                        embedder.model.spec.name
                    );
                };
                let length = windows.length();
                let hop = r.hop.unwrap_or(length);
                anyhow::ensure!(
                    (1..=length).contains(&hop),
                    "source {:?}: hop_readings {hop} must be at most the model's window \
                     ({length} readings)",
                    source.topic
                );
                plans.push(Some(Plan::Readings {
                    channels: windows.spec().channels.clone(),
                    length,
                    hop,
                }));
                continue;
            }
            let Some(stream) = &source.stream else {
                plans.push(None);
                continue;
            };
            let Some(audio) = audio.filter(|_| embedder.modality() == Modality::Audio) else {
                anyhow::bail!(
                    "source {:?} is an audio stream, but the model {} does not take sound \
                     (set [model] dir to a sound model, e.g. models/yamnet-l10)",
                    source.topic,
                    embedder.model.spec.name
                );
            };
            let one_window = audio.patch_samples() as f64 / f64::from(audio.sample_rate);
            let window = stream.window_seconds.unwrap_or(one_window);
            anyhow::ensure!(
                window <= audio.max_seconds && stream.hop_seconds <= window,
                "source {:?}: window_seconds {window} must be at most the model's max_seconds \
                 ({}) and at least hop_seconds ({})",
                source.topic,
                audio.max_seconds,
                stream.hop_seconds
            );
            plans.push(Some(Plan::Audio {
                window,
                hop: stream.hop_seconds,
                threshold: stream.threshold,
            }));
        }
        Ok(Streams {
            plans,
            buffers: Mutex::new(HashMap::new()),
        })
    }

    /// No stream sources.
    pub fn none() -> Streams {
        Streams {
            plans: Vec::new(),
            buffers: Mutex::new(HashMap::new()),
        }
    }

    fn plan(&self, source: usize) -> Option<&Plan> {
        self.plans.get(source).and_then(Option::as_ref)
    }

    /// Takes a chunk on `topic` (of stream source `source`): a window to embed when a hop has
    /// passed since the last one and a whole window is there.
    pub fn push(
        &self,
        source: usize,
        topic: &str,
        payload: &[u8],
    ) -> Result<Option<StreamWindow>, ChunkError> {
        let plan = self.plan(source).ok_or_else(|| ChunkError {
            error: RequestError::BadRequest(format!("{topic} is not a stream source")),
            report: true,
        })?;
        let mut buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        if !buffers.contains_key(topic) && buffers.len() >= MAX_STREAMS {
            return Err(ChunkError {
                error: RequestError::BadRequest(format!(
                    "more than {MAX_STREAMS} streams; {topic} is not followed"
                )),
                report: true,
            });
        }
        let buffer = buffers.entry(topic.to_string()).or_default();
        let (window, hop) = match plan {
            Plan::Audio { window, hop, .. } => (*window, *hop),
            Plan::Readings {
                channels,
                length,
                hop,
            } => {
                let cut = readings::parse(payload, channels)
                    .and_then(|batch| buffer.readings.push(batch, channels.len(), *length, *hop));
                return match cut {
                    // Channel after channel: the layout a sensor model's tensor input has.
                    Ok(cut) => Ok(cut.map(|c| StreamWindow {
                        input: Input::Tensor(c.values),
                        readings: Some((c.first, c.last)),
                    })),
                    Err(error) => Err(buffer.refusal(error)),
                };
            }
        };
        let chunk = match decode_chunk(payload) {
            Ok(c) => c,
            Err(error) => return Err(buffer.refusal(error)),
        };
        if chunk.rate != buffer.rate {
            // A new stream, or its format changed: start over at the new rate.
            buffer.rate = chunk.rate;
            buffer.samples.clear();
            buffer.fresh = 0;
        }
        let rate = f64::from(chunk.rate);
        let window = ((window * rate).round() as usize).max(1);
        let hop = ((hop * rate).round() as usize).max(1);
        buffer.fresh += chunk.samples.len();
        buffer.samples.extend(chunk.samples);
        let excess = buffer.samples.len().saturating_sub(window);
        buffer.samples.drain(..excess);
        if buffer.samples.len() < window || buffer.fresh < hop {
            return Ok(None);
        }
        // Keep the cadence: the next window is due a hop after this one was, not after this
        // chunk (one window at most, however large the chunk).
        buffer.fresh = (buffer.fresh - hop) % hop;
        Ok(Some(StreamWindow {
            input: Input::Pcm(Clip {
                samples: buffer.samples.iter().copied().collect(),
                rate: chunk.rate,
            }),
            readings: None,
        }))
    }

    /// Whether a window's prediction on `topic` says something new: what is heard (the top
    /// label when its score reaches the source's threshold, else nothing) differs from what
    /// was last published for that stream. Records it when it does.
    pub fn changed(&self, source: usize, topic: &str, label: Option<&str>, score: f32) -> bool {
        let threshold = match self.plan(source) {
            Some(Plan::Audio { threshold, .. }) => *threshold,
            // Every sensor window's prediction is published.
            Some(Plan::Readings { .. }) => return true,
            None => 0.0,
        };
        let heard = label.filter(|_| score >= threshold).map(str::to_string);
        let mut buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(buffer) = buffers.get_mut(topic) else {
            return true;
        };
        if buffer.heard.as_ref() == Some(&heard) {
            return false;
        }
        buffer.heard = Some(heard);
        true
    }
}

impl Buffer {
    /// A refused chunk: reported unless the last report on this stream was under 10 s ago.
    fn refusal(&mut self, error: RequestError) -> ChunkError {
        let report = self.last_error.is_none_or(|at| at.elapsed() >= ERROR_EVERY);
        if report {
            self.last_error = Some(Instant::now());
        }
        ChunkError { error, report }
    }
}

/// A chunk: a WAV (Hermes `audioFrame`), mono after down-mixing.
fn decode_chunk(payload: &[u8]) -> Result<Clip, RequestError> {
    if !audio::is_wav(payload) {
        return Err(RequestError::Embed(EmbedError::Audio(AudioError::Wav(
            format!(
                "a stream chunk must be a WAV (Hermes audioFrame); got {} bytes that are not",
                payload.len()
            ),
        ))));
    }
    audio::decode_wav(payload, MAX_CHUNK_SECONDS).map_err(|e| RequestError::Embed(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(window: f64, hop: f64) -> Streams {
        Streams {
            plans: vec![
                None,
                Some(Plan::Audio {
                    window,
                    hop,
                    threshold: 0.5,
                }),
            ],
            buffers: Mutex::new(HashMap::new()),
        }
    }

    fn clip(w: StreamWindow) -> Clip {
        match w.input {
            Input::Pcm(c) => c,
            other => panic!("not a clip: {other:?}"),
        }
    }

    fn chunk(n: usize, rate: u32, value: f32) -> Vec<u8> {
        audio::encode_wav(&vec![value; n], rate, 1).expect("wav")
    }

    #[test]
    fn windows_are_cut_every_hop_once_a_window_is_there() {
        // 1 s window, 0.5 s hop, 16 kHz, chunks of 256 samples (16 ms, as Hermes sends).
        let s = streams(1.0, 0.5);
        let mut cut = Vec::new();
        for i in 0..250 {
            if let Some(clip) = s
                .push(1, "t", &chunk(256, 16000, 0.1))
                .expect("chunk")
                .map(clip)
            {
                assert_eq!(clip.samples.len(), 16000);
                assert_eq!(clip.rate, 16000);
                cut.push(i);
            }
        }
        // 250 chunks = 64,000 samples = 4 s: windows at 1.0, 1.5, …, 4.0 s.
        assert_eq!(cut.len(), 7, "{cut:?}");
        assert_eq!(cut[0], 62); // the chunk that completes the first second
                                // The window is the most recent second.
        let s = streams(0.1, 0.1);
        s.push(1, "t", &chunk(1600, 16000, 0.0)).expect("first");
        let clip = s
            .push(1, "t", &chunk(1600, 16000, 0.5))
            .expect("second")
            .map(clip)
            .expect("a window");
        assert!(clip.samples.iter().all(|v| (v - 0.5).abs() < 1e-3));
    }

    #[test]
    fn a_rate_change_restarts_the_stream_and_streams_are_separate() {
        let s = streams(0.1, 0.05);
        assert!(s
            .push(1, "a", &chunk(1000, 16000, 0.1))
            .expect("a")
            .is_none());
        // Another topic does not complete a's window.
        assert!(s
            .push(1, "b", &chunk(1000, 16000, 0.1))
            .expect("b")
            .is_none());
        // A new rate on a: starts over, so 1000 + 1000 samples at 48 kHz is still short.
        assert!(s
            .push(1, "a", &chunk(1000, 48000, 0.1))
            .expect("a")
            .is_none());
        assert!(s
            .push(1, "a", &chunk(1000, 48000, 0.1))
            .expect("a")
            .is_none());
        assert!(s
            .push(1, "a", &chunk(3000, 48000, 0.1))
            .expect("a")
            .is_some());
    }

    #[test]
    fn bad_chunks_are_refused_and_reported_at_most_every_ten_seconds() {
        let s = streams(0.1, 0.05);
        let first = s.push(1, "t", b"not a wav").expect_err("junk");
        assert_eq!(first.error.code(), "bad_payload");
        assert!(first.report);
        let second = s.push(1, "t", b"RIFF....WAVEjunk").expect_err("junk");
        assert!(!second.report);
        // A good chunk after them is taken.
        assert!(s.push(1, "t", &chunk(100, 16000, 0.1)).is_ok());
        // Not a stream source; too many streams.
        assert!(s.push(0, "t", &chunk(100, 16000, 0.1)).is_err());
        for i in 0..MAX_STREAMS {
            let _ = s.push(1, &format!("s{i}"), &chunk(10, 16000, 0.1));
        }
        let e = s
            .push(1, "one-more", &chunk(10, 16000, 0.1))
            .expect_err("cap");
        assert_eq!(e.error.code(), "bad_request");
    }

    #[test]
    fn only_changes_in_what_is_heard_are_published() {
        let s = streams(0.1, 0.05);
        s.push(1, "t", &chunk(10, 16000, 0.1)).expect("chunk");
        assert!(s.changed(1, "t", Some("quiet"), 0.9)); // first
        assert!(!s.changed(1, "t", Some("quiet"), 0.8)); // same
        assert!(s.changed(1, "t", Some("bell"), 0.7)); // new label
        assert!(s.changed(1, "t", Some("bell"), 0.3)); // fell below: nothing heard
        assert!(!s.changed(1, "t", Some("dog"), 0.2)); // still nothing
        assert!(s.changed(1, "t", Some("bell"), 0.6)); // heard again
    }
}
