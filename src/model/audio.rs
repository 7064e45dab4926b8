//! Sound → the sound backbone's input patches: WAV decoding, down-mix, resampling to the
//! model's rate, and the log-mel front-end (`[audio]` of `model.toml`) the network was trained
//! with.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use serde::{Deserialize, Serialize};

/// How a clip becomes log-mel patches (`[audio]` of `model.toml`). The defaults are YAMNet's.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AudioSpec {
    /// Sample rate the network was trained at (Hz); clips are resampled to it.
    pub sample_rate: u32,
    /// STFT window, in samples (periodic Hann, not centred).
    pub window: usize,
    /// STFT hop, in samples.
    pub hop: usize,
    /// FFT length (≥ window; the frame is zero-padded).
    pub fft: usize,
    /// Mel bands (HTK mel scale, triangular, unnormalised; the DC bin is left out).
    pub mel_bands: usize,
    /// Lowest and highest band edge (Hz).
    pub fmin: f64,
    pub fmax: f64,
    /// `ln(mel + log_offset)`.
    pub log_offset: f64,
    /// Frames per patch (one backbone input).
    pub patch_frames: usize,
    /// Frames between the starts of consecutive patches.
    pub patch_hop_frames: usize,
    /// Longest clip accepted, in seconds (the cost is one backbone pass per patch hop).
    pub max_seconds: f64,
}

impl AudioSpec {
    /// Checks values that cannot work; `input_len` is the backbone input's element count.
    pub fn validate(&self, input_len: usize) -> Result<(), String> {
        let positive = [
            ("sample_rate", self.sample_rate as usize),
            ("window", self.window),
            ("hop", self.hop),
            ("mel_bands", self.mel_bands),
            ("patch_frames", self.patch_frames),
            ("patch_hop_frames", self.patch_hop_frames),
        ];
        if let Some((k, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("audio.{k} must be positive"));
        }
        if self.fft < self.window || self.fft > 1 << 16 {
            return Err(format!(
                "audio.fft = {} must be ≥ window ({}) and ≤ 65536",
                self.fft, self.window
            ));
        }
        let nyquist = f64::from(self.sample_rate) / 2.0;
        if !(self.fmin >= 0.0 && self.fmin < self.fmax && self.fmax <= nyquist) {
            return Err(format!(
                "audio.fmin/fmax = {}/{} must satisfy 0 ≤ fmin < fmax ≤ {nyquist}",
                self.fmin, self.fmax
            ));
        }
        if !(self.log_offset.is_finite() && self.log_offset > 0.0) {
            return Err("audio.log_offset must be positive".into());
        }
        if !(self.max_seconds.is_finite() && self.max_seconds > 0.0 && self.max_seconds <= 3600.0) {
            return Err("audio.max_seconds must be in (0, 3600]".into());
        }
        if self.patch_frames * self.mel_bands != input_len {
            return Err(format!(
                "audio patches of {} frames × {} bands do not fill the input ({input_len} values)",
                self.patch_frames, self.mel_bands
            ));
        }
        Ok(())
    }

    /// Samples of one patch at the model's rate: the shortest clip that fills one input.
    pub fn patch_samples(&self) -> usize {
        self.window + (self.patch_frames - 1) * self.hop
    }

    /// The recipe as one canonical line: part of the model's identity (a head learned on one
    /// front-end is not valid for another).
    pub fn recipe(&self) -> String {
        format!(
            "audio sr={} win={} hop={} fft={} mel={} fmin={} fmax={} log_offset={} patch={}/{}",
            self.sample_rate,
            self.window,
            self.hop,
            self.fft,
            self.mel_bands,
            self.fmin,
            self.fmax,
            self.log_offset,
            self.patch_frames,
            self.patch_hop_frames
        )
    }
}

/// Why a sound payload could not become patches.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("cannot decode WAV: {0}")]
    Wav(String),
    #[error(
        "clip of {seconds:.1} s is longer than the model's limit of {max} s (audio.max_seconds)"
    )]
    TooLong { seconds: f64, max: f64 },
    #[error("clip has no samples")]
    Empty,
    #[error("sample {index} is not finite")]
    NonFinite { index: usize },
    #[error("sample {index} is {value}, outside ±{MAX_LEVEL} (a float WAV's full scale is ±1)")]
    OutOfRange { index: usize, value: f32 },
    #[error("sample rate {0} Hz is out of range (1000–384000)")]
    Rate(u32),
    #[error("{0} channels; at most {MAX_CHANNELS} are accepted")]
    Channels(u16),
    #[error("cannot resample {0}")]
    Resample(String),
    #[error("bad PCM: {0}")]
    Pcm(String),
}

impl AudioError {
    /// Stable error code for replies.
    pub fn code(&self) -> &'static str {
        match self {
            AudioError::TooLong { .. } => "too_long",
            AudioError::NonFinite { .. } => "non_finite",
            AudioError::OutOfRange { .. } => "out_of_range",
            _ => "bad_payload",
        }
    }
}

/// A clip: mono samples in [-1, 1] and their rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    pub samples: Vec<f32>,
    pub rate: u32,
}

/// A clip from raw signed 16-bit little-endian mono PCM at `rate` Hz (a JSON request's `pcm`).
pub fn pcm_s16le(bytes: &[u8], rate: u32) -> Result<Clip, AudioError> {
    check_rate(rate)?;
    if !bytes.len().is_multiple_of(2) {
        return Err(AudioError::Pcm(format!(
            "{} bytes is not a whole number of 16-bit samples",
            bytes.len()
        )));
    }
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    let samples = bytes
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    Ok(Clip { samples, rate })
}

/// Encodes interleaved samples in [-1, 1] (`channels` per frame) as a 16-bit PCM WAV, clamped
/// and rounded: what a microphone publisher sends (the tests', `scripts/`' and tools' WAVs).
pub fn encode_wav(interleaved: &[f32], rate: u32, channels: u16) -> Result<Vec<u8>, AudioError> {
    write_wav(
        interleaved
            .iter()
            .map(|v| (v.clamp(-1.0, 1.0) * 32767.0).round() as i16),
        interleaved.len(),
        rate,
        channels,
        16,
        hound::SampleFormat::Int,
    )
}

/// Encodes mono samples as a 32-bit float WAV, values as given (not clamped, NaN kept): what
/// float recorders write, and the tests' way to send out-of-range or non-finite audio.
pub fn encode_float_wav(samples: &[f32], rate: u32) -> Result<Vec<u8>, AudioError> {
    let format = hound::SampleFormat::Float;
    write_wav(samples.iter().copied(), samples.len(), rate, 1, 32, format)
}

fn write_wav<S: hound::Sample>(
    samples: impl Iterator<Item = S>,
    len: usize,
    rate: u32,
    channels: u16,
    bits_per_sample: u16,
    sample_format: hound::SampleFormat,
) -> Result<Vec<u8>, AudioError> {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample,
        sample_format,
    };
    let fail = |e: hound::Error| AudioError::Wav(e.to_string());
    let bytes = 44 + len * usize::from(bits_per_sample / 8);
    let mut out = std::io::Cursor::new(Vec::with_capacity(bytes));
    let mut w = hound::WavWriter::new(&mut out, spec).map_err(fail)?;
    for v in samples {
        w.write_sample(v).map_err(fail)?;
    }
    w.finalize().map_err(fail)?;
    Ok(out.into_inner())
}

/// Whether the payload is a RIFF/WAVE file.
pub fn is_wav(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WAVE"
}

/// Most channels a WAV payload may have (down-mixed to mono; 32 covers every microphone array).
pub const MAX_CHANNELS: u16 = 32;

/// Largest magnitude a sample may have. Integer PCM decodes to ±1; a float WAV's full scale is
/// ±1 too, and a sample 60 dB above it is not audio. Magnitudes near `f32::MAX` overflow the
/// resampler's FFT to infinity, on which rubato panics (found by fuzzing): they are refused.
pub const MAX_LEVEL: f32 = 1000.0;

/// The first sample that is not finite or lies outside ±[`MAX_LEVEL`], as the error it makes.
fn check_levels(samples: &[f32]) -> Result<(), AudioError> {
    match samples
        .iter()
        .position(|v| !v.is_finite() || v.abs() > MAX_LEVEL)
    {
        Some(index) if !samples[index].is_finite() => Err(AudioError::NonFinite { index }),
        Some(index) => Err(AudioError::OutOfRange {
            index,
            value: samples[index],
        }),
        None => Ok(()),
    }
}

/// Decodes a WAV file (PCM 8/16/24/32-bit integer or 32-bit float, up to [`MAX_CHANNELS`]
/// channels) and down-mixes it to mono by averaging the channels. The data length in the
/// header is not trusted: a stream written before its length was known (`arecord` to a pipe)
/// claims more than it holds, so reading stops at the real end of the data, and the duration
/// limit applies to what is there.
pub fn decode_wav(bytes: &[u8], max_seconds: f64) -> Result<Clip, AudioError> {
    let bytes = fit_data_length(bytes);
    let reader = hound::WavReader::new(std::io::Cursor::new(&bytes[..]))
        .map_err(|e| AudioError::Wav(e.to_string()))?;
    let spec = reader.spec();
    check_rate(spec.sample_rate)?;
    if spec.channels == 0 || spec.channels > MAX_CHANNELS {
        return Err(AudioError::Channels(spec.channels));
    }
    let channels = usize::from(spec.channels);
    // One frame past the limit is enough to know the clip is too long.
    let limit = (max_seconds * f64::from(spec.sample_rate)).ceil() as usize + 1;
    let interleaved = match spec.sample_format {
        hound::SampleFormat::Float => {
            read_samples(reader.into_samples::<f32>(), channels, limit, |v| v)?
        }
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            read_samples(reader.into_samples::<i32>(), channels, limit, |v| {
                v as f32 * scale
            })?
        }
    };
    check_levels(&interleaved)?;
    let samples: Vec<f32> = interleaved
        .chunks_exact(channels)
        .map(|c| c.iter().sum::<f32>() / channels as f32)
        .collect();
    if samples.is_empty() {
        return Err(AudioError::Empty);
    }
    let seconds = samples.len() as f64 / f64::from(spec.sample_rate);
    if samples.len() >= limit {
        return Err(AudioError::TooLong {
            seconds,
            max: max_seconds,
        });
    }
    Ok(Clip {
        samples,
        rate: spec.sample_rate,
    })
}

/// A WAV whose `data` chunk claims more bytes than follow it, with the claim cut to the whole
/// frames present. `arecord` writing to a pipe cannot seek back to fill in the length, so it
/// writes 0x7FFFFFFF, which the WAV reader refuses (not a whole number of frames) before a
/// single sample is read. Anything else is returned as it is, for the reader to judge.
fn fit_data_length(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let u16_at = |i: usize| {
        bytes
            .get(i..i + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |i: usize| {
        bytes
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut block_align = None;
    let mut at = 12;
    while let (Some(id), Some(size)) = (bytes.get(at..at + 4), u32_at(at + 4)) {
        let body = at + 8;
        if id == b"fmt " {
            block_align = u16_at(body + 12).filter(|a| *a > 0);
        }
        if id == b"data" {
            let present = bytes.len() - body;
            return match block_align {
                Some(align) if size as usize > present => {
                    let fitted = (present - present % usize::from(align)) as u32;
                    let mut owned = bytes.to_vec();
                    owned[at + 4..body].copy_from_slice(&fitted.to_le_bytes());
                    std::borrow::Cow::Owned(owned)
                }
                _ => std::borrow::Cow::Borrowed(bytes),
            };
        }
        // Chunks are padded to an even length.
        at = body
            .saturating_add(size as usize)
            .saturating_add(size as usize % 2);
    }
    std::borrow::Cow::Borrowed(bytes)
}

/// Reads at most `limit` frames of interleaved samples, stopping quietly at the end of the
/// data (a header that claims more) but failing on any other read error.
fn read_samples<S, I>(
    samples: I,
    channels: usize,
    limit: usize,
    convert: impl Fn(S) -> f32,
) -> Result<Vec<f32>, AudioError>
where
    I: Iterator<Item = hound::Result<S>>,
{
    let mut out = Vec::new();
    for sample in samples.take(limit.saturating_mul(channels)) {
        match sample {
            Ok(v) => out.push(convert(v)),
            Err(hound::Error::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(AudioError::Wav(e.to_string())),
        }
    }
    // A frame cut by the end of the data is dropped.
    out.truncate(out.len() - out.len() % channels);
    Ok(out)
}

fn check_rate(rate: u32) -> Result<(), AudioError> {
    if (1000..=384_000).contains(&rate) {
        Ok(())
    } else {
        Err(AudioError::Rate(rate))
    }
}

/// Resamples `x` from `from` Hz to `to` Hz with rubato's synchronous FFT resampler
/// (anti-aliasing filter below the lower Nyquist frequency, startup delay trimmed, output length
/// `ceil(len · to / from)`). Identity when the rates agree.
pub fn resample(x: &[f32], from: u32, to: u32) -> Result<Vec<f32>, AudioError> {
    use rubato::audioadapter_buffers::direct::InterleavedSlice;
    use rubato::{Fft, FixedSync, Resampler};
    if from == to || x.is_empty() {
        return Ok(x.to_vec());
    }
    check_rate(from)?;
    check_rate(to)?;
    let fail = |e: &dyn std::fmt::Display| AudioError::Resample(format!("{from} → {to} Hz: {e}"));
    let mut resampler = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Both)
        .map_err(|e| fail(&e))?;
    let input = InterleavedSlice::new(x, 1, x.len()).map_err(|e| fail(&e))?;
    let out = resampler
        .process_all(&input, x.len(), None)
        .map_err(|e| fail(&e))?;
    Ok(out.take_data())
}

/// The front-end: clip → log-mel patches, each one backbone input (`patch_frames × mel_bands`,
/// row-major by frame).
pub struct FrontEnd {
    spec: AudioSpec,
    window: Vec<f32>,
    /// Per mel band: first FFT bin and its weights.
    mel: Vec<(usize, Vec<f32>)>,
    fft: Arc<dyn Fft<f32>>,
}

impl std::fmt::Debug for FrontEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontEnd")
            .field("spec", &self.spec)
            .finish()
    }
}

impl FrontEnd {
    /// A front-end for a validated spec.
    pub fn new(spec: AudioSpec) -> FrontEnd {
        // Periodic Hann: the window of a DFT frame (as TensorFlow's and YAMNet's).
        let window = (0..spec.window)
            .map(|i| {
                let phase = 2.0 * std::f64::consts::PI * i as f64 / spec.window as f64;
                (0.5 - 0.5 * phase.cos()) as f32
            })
            .collect();
        let mel = mel_matrix(&spec);
        let fft = FftPlanner::new().plan_fft_forward(spec.fft);
        FrontEnd {
            spec,
            window,
            mel,
            fft,
        }
    }

    /// The recipe this front-end follows.
    pub fn spec(&self) -> &AudioSpec {
        &self.spec
    }

    /// A decoded clip at any rate → its patches. A clip shorter than one patch is zero-padded
    /// to one; the last partial patch is zero-padded too, so every sample is heard.
    pub fn patches(&self, clip: &Clip) -> Result<Vec<Vec<f32>>, AudioError> {
        check_rate(clip.rate)?;
        if clip.samples.is_empty() {
            return Err(AudioError::Empty);
        }
        let seconds = clip.samples.len() as f64 / f64::from(clip.rate);
        if seconds > self.spec.max_seconds {
            return Err(AudioError::TooLong {
                seconds,
                max: self.spec.max_seconds,
            });
        }
        check_levels(&clip.samples)?;
        let mut x = resample(&clip.samples, clip.rate, self.spec.sample_rate)?;
        let patch = self.spec.patch_samples();
        let step = self.spec.patch_hop_frames * self.spec.hop;
        let n_patches = if x.len() <= patch {
            1
        } else {
            1 + (x.len() - patch).div_ceil(step)
        };
        x.resize(patch + (n_patches - 1) * step, 0.0);
        let frames = self.log_mel(&x);
        let bands = self.spec.mel_bands;
        Ok((0..n_patches)
            .map(|p| {
                let start = p * self.spec.patch_hop_frames * bands;
                frames[start..start + self.spec.patch_frames * bands].to_vec()
            })
            .collect())
    }

    /// Log-mel frames of samples at the model's rate, row-major `[frames, mel_bands]`; only
    /// whole windows (no centring, no padding).
    pub fn log_mel(&self, x: &[f32]) -> Vec<f32> {
        let (win, hop, bands) = (self.spec.window, self.spec.hop, self.spec.mel_bands);
        if x.len() < win {
            return Vec::new();
        }
        let n_frames = 1 + (x.len() - win) / hop;
        let mut out = Vec::with_capacity(n_frames * bands);
        let mut buf = vec![Complex::new(0.0f32, 0.0); self.spec.fft];
        let mut scratch = vec![Complex::new(0.0f32, 0.0); self.fft.get_inplace_scratch_len()];
        let mut mag = vec![0f32; self.spec.fft / 2 + 1];
        let offset = self.spec.log_offset as f32;
        for f in 0..n_frames {
            let frame = &x[f * hop..f * hop + win];
            for (b, (s, w)) in buf.iter_mut().zip(frame.iter().zip(&self.window)) {
                *b = Complex::new(s * w, 0.0);
            }
            buf[win..].fill(Complex::new(0.0, 0.0));
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            for (m, c) in mag.iter_mut().zip(&buf) {
                *m = c.norm();
            }
            for (first, weights) in &self.mel {
                let e: f32 = weights.iter().zip(&mag[*first..]).map(|(w, m)| w * m).sum();
                out.push((e + offset).ln());
            }
        }
        out
    }
}

fn hz_to_mel(hz: f64) -> f64 {
    1127.0 * (1.0 + hz / 700.0).ln()
}

/// Triangular HTK-mel weights on the FFT bins `k · rate / fft`, bands with edges equally
/// spaced in mel between fmin and fmax, unnormalised; bin 0 (DC) gets no weight. Stored
/// sparse: per band, its first bin and the weights from there.
fn mel_matrix(spec: &AudioSpec) -> Vec<(usize, Vec<f32>)> {
    let bins = spec.fft / 2 + 1;
    let nyquist = f64::from(spec.sample_rate) / 2.0;
    let bin_mel: Vec<f64> = (0..bins)
        .map(|k| hz_to_mel(nyquist * k as f64 / (bins - 1) as f64))
        .collect();
    let (lo, hi) = (hz_to_mel(spec.fmin), hz_to_mel(spec.fmax));
    let edges: Vec<f64> = (0..spec.mel_bands + 2)
        .map(|i| lo + (hi - lo) * i as f64 / (spec.mel_bands + 1) as f64)
        .collect();
    (0..spec.mel_bands)
        .map(|b| {
            let (l, c, r) = (edges[b], edges[b + 1], edges[b + 2]);
            let w: Vec<f32> = bin_mel
                .iter()
                .enumerate()
                .map(|(k, &m)| {
                    if k == 0 {
                        return 0.0;
                    }
                    let up = (m - l) / (c - l);
                    let down = (r - m) / (r - c);
                    up.min(down).max(0.0) as f32
                })
                .collect();
            let first = w.iter().position(|v| *v > 0.0).unwrap_or(0);
            let last = w.iter().rposition(|v| *v > 0.0).map_or(first, |i| i + 1);
            (first, w[first..last.max(first)].to_vec())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn yamnet() -> AudioSpec {
        AudioSpec {
            sample_rate: 16000,
            window: 400,
            hop: 160,
            fft: 512,
            mel_bands: 64,
            fmin: 125.0,
            fmax: 7500.0,
            log_offset: 0.001,
            patch_frames: 96,
            patch_hop_frames: 48,
            max_seconds: 30.0,
        }
    }

    fn tone(hz: f64, rate: u32, seconds: f64) -> Vec<f32> {
        let n = (f64::from(rate) * seconds) as usize;
        (0..n)
            .map(|i| {
                (0.5 * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin()) as f32
            })
            .collect()
    }

    fn wav(samples: &[f32], rate: u32, channels: u16) -> Vec<u8> {
        let frames: Vec<f32> = samples
            .iter()
            .flat_map(|s| std::iter::repeat_n(*s, usize::from(channels)))
            .collect();
        encode_wav(&frames, rate, channels).expect("wav")
    }

    #[test]
    fn patch_count_and_padding_follow_the_hops() {
        let fe = FrontEnd::new(yamnet());
        let spec = yamnet();
        assert_eq!(spec.patch_samples(), 15600);
        for (len, want) in [
            (1, 1),
            (15600, 1),
            (15601, 2),
            (15600 + 7680, 2),
            (48000, 6),
        ] {
            let clip = Clip {
                samples: vec![0.1; len],
                rate: 16000,
            };
            let p = fe.patches(&clip).expect("patches");
            assert_eq!(p.len(), want, "{len} samples");
            assert!(p.iter().all(|q| q.len() == 96 * 64));
        }
    }

    #[test]
    fn a_tone_lands_in_the_mel_band_of_its_frequency() {
        let fe = FrontEnd::new(yamnet());
        let frames = fe.log_mel(&tone(1000.0, 16000, 0.5));
        let first = &frames[..64];
        let peak = first
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .expect("bands");
        // The band whose centre is nearest to 1 kHz on the HTK mel scale.
        let (lo, hi) = (hz_to_mel(125.0), hz_to_mel(7500.0));
        let centre = |b: usize| lo + (hi - lo) * (b + 1) as f64 / 65.0;
        let want = (0..64)
            .min_by(|&a, &b| {
                (centre(a) - hz_to_mel(1000.0))
                    .abs()
                    .total_cmp(&(centre(b) - hz_to_mel(1000.0)).abs())
            })
            .expect("band");
        assert!(peak.abs_diff(want) <= 1, "peak band {peak}, want {want}");
        // Silence is ln(offset) in every band.
        let silent = fe.log_mel(&vec![0.0; 400]);
        assert!(silent.iter().all(|v| (v - 0.001f32.ln()).abs() < 1e-6));
    }

    #[test]
    fn resampling_keeps_a_tone_and_its_length() {
        let x = tone(440.0, 44100, 1.0);
        let y = resample(&x, 44100, 16000).expect("resample");
        assert_eq!(y.len(), 16000);
        // Away from the edges the resampled tone is a 440 Hz tone of the same amplitude (the
        // FFT resampler may leave a fraction of a sample of delay, which no spectrum sees): fit
        // a sinusoid at 440 Hz and check its amplitude and what is left after removing it.
        let seg = &y[200..15800];
        let w = 2.0 * std::f64::consts::PI * 440.0 / 16000.0;
        let (mut s_, mut c_) = (0.0f64, 0.0f64);
        for (i, v) in seg.iter().enumerate() {
            let t = (i + 200) as f64 * w;
            s_ += f64::from(*v) * t.sin();
            c_ += f64::from(*v) * t.cos();
        }
        let (a, b) = (2.0 * s_ / seg.len() as f64, 2.0 * c_ / seg.len() as f64);
        let amp = a.hypot(b);
        assert!((amp - 0.5).abs() < 2e-3, "amplitude {amp}");
        let residual = seg
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let t = (i + 200) as f64 * w;
                (f64::from(*v) - a * t.sin() - b * t.cos()).abs()
            })
            .fold(0.0f64, f64::max);
        assert!(residual < 2e-3, "residual {residual}");
        // Content above the new Nyquist frequency is removed, not folded back.
        let high = tone(12000.0, 44100, 1.0);
        let folded = resample(&high, 44100, 16000).expect("resample");
        let rms = (folded[200..15800].iter().map(|v| v * v).sum::<f32>() / 15600.0).sqrt();
        assert!(rms < 1e-3, "aliased rms {rms}");
    }

    fn float_wav(samples: &[f32], rate: u32) -> Vec<u8> {
        encode_float_wav(samples, rate).expect("float wav")
    }

    /// The fuzzer's crash (`fuzz/seeds/audio_payload/float-overflow.wav`): float samples near
    /// `f32::MAX` at 44.1 kHz overflowed the resampler's FFT and rubato panicked, which aborts
    /// the daemon. They are refused with `out_of_range` before resampling, from a WAV and from a
    /// clip that did not come through the WAV decoder.
    #[test]
    fn huge_float_samples_are_refused_before_the_resampler() {
        let fe = FrontEnd::new(yamnet());
        let mut x = tone(440.0, 44100, 0.5);
        x[100] = 3.0e38;
        let err = decode_wav(&float_wav(&x, 44100), 30.0).expect_err("huge sample");
        assert_eq!(err.code(), "out_of_range", "{err}");
        assert!(err.to_string().contains("sample 100"), "{err}");
        let clip = Clip {
            samples: x,
            rate: 44100,
        };
        assert_eq!(fe.patches(&clip).expect_err("huge").code(), "out_of_range");
        // Loud but plausible float audio (over full scale, under the limit) still works.
        let loud: Vec<f32> = tone(440.0, 44100, 0.5).iter().map(|v| v * 400.0).collect();
        let clip = decode_wav(&float_wav(&loud, 44100), 30.0).expect("loud");
        let patches = fe.patches(&clip).expect("patches");
        assert!(patches.iter().flatten().all(|v| v.is_finite()));
        let crash = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/seeds/audio_payload/float-overflow.wav"
        ))
        .expect("seed");
        let err = decode_wav(&crash, 30.0).expect_err("the crash input is refused");
        assert_eq!(err.code(), "out_of_range", "{err}");
    }

    #[test]
    fn wav_decoding_downmixes_and_refuses_bad_files() {
        let x = tone(300.0, 22050, 0.2);
        let clip = decode_wav(&wav(&x, 22050, 2), 30.0).expect("stereo");
        assert_eq!(clip.rate, 22050);
        assert_eq!(clip.samples.len(), x.len());
        assert!((clip.samples[10] - x[10]).abs() < 1e-3);
        let long = decode_wav(&wav(&x, 22050, 1), 0.1).expect_err("too long");
        assert_eq!(long.code(), "too_long");
        let bytes = wav(&x, 22050, 1);
        for cut in [12, 30, 44] {
            assert!(decode_wav(&bytes[..cut], 30.0).is_err(), "cut at {cut}");
        }
        assert!(decode_wav(b"RIFF\0\0\0\0WAVEjunkjunk", 30.0).is_err());
        assert!(is_wav(&bytes) && !is_wav(b"\xff\xd8\xff"));
    }
}
