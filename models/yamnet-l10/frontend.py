"""YAMNet's audio front-end in numpy (float64): waveform -> log-mel -> 96x64 patches.

The reference for what adaptd computes before `yamnet_l10.onnx`. Checked against the TensorFlow
graph inside the pinned wheel's SavedModel by verify.py (log-mel max abs diff ~1e-5, which is
TensorFlow's float32 arithmetic). Constants are YAMNet's params.py defaults.
"""
import numpy as np

SAMPLE_RATE = 16000
STFT_WINDOW = 400  # samples, 25 ms
STFT_HOP = 160  # samples, 10 ms
FFT_LENGTH = 512  # next power of two >= 400
MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.001
PATCH_FRAMES = 96  # 0.96 s
PATCH_HOP_FRAMES = 48  # 0.48 s
# Samples for one patch: 96 hops of 160 plus the rest of the last 400-sample window.
PATCH_SAMPLES = (PATCH_FRAMES - 1) * STFT_HOP + STFT_WINDOW  # 15600
PATCH_HOP_SAMPLES = PATCH_HOP_FRAMES * STFT_HOP  # 7680


def hz_to_mel(hz):
    """HTK mel scale, natural log: 1127 * ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


def mel_matrix():
    """[257, 64]: tf.signal.linear_to_mel_weight_matrix(64, 257, 16000, 125, 7500) in float64.

    Triangles are linear in *mel* (not in Hz), on the bin frequencies linspace(0, 8000, 257);
    66 band edges equally spaced in mel from mel(125) to mel(7500); no area normalisation;
    row 0 (DC) is all zeros.
    """
    nbins = FFT_LENGTH // 2 + 1
    bins_mel = hz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2.0, nbins)[1:])[:, None]
    edges = np.linspace(hz_to_mel(MEL_MIN_HZ), hz_to_mel(MEL_MAX_HZ), MEL_BANDS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    up_slope = (bins_mel - lower) / (center - lower)
    down_slope = (upper - bins_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(up_slope, down_slope))
    return np.concatenate([np.zeros((1, MEL_BANDS)), weights], axis=0)


def hann_periodic(n=STFT_WINDOW):
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def pad_waveform(wave):
    """Zero-pads at the end to PATCH_SAMPLES + k * PATCH_HOP_SAMPLES samples (the least k >= 0
    that holds the whole clip), as YAMNet's features.pad_waveform. Returns (padded, patches = k+1)."""
    wave = np.asarray(wave, np.float64)
    n = max(len(wave), PATCH_SAMPLES)
    k = -(-(n - PATCH_SAMPLES) // PATCH_HOP_SAMPLES)
    total = PATCH_SAMPLES + k * PATCH_HOP_SAMPLES
    return np.concatenate([wave, np.zeros(total - len(wave))]), k + 1


def log_mel(wave):
    """[frames, 64] for an already padded waveform: frames = 1 + (len - 400) // 160, not centred."""
    frames = 1 + (len(wave) - STFT_WINDOW) // STFT_HOP
    idx = np.arange(STFT_WINDOW)[None, :] + STFT_HOP * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(wave[idx] * hann_periodic(), n=FFT_LENGTH, axis=1))
    return np.log(spec @ mel_matrix() + LOG_OFFSET)


def patches(wave):
    """16 kHz mono float waveform in [-1, 1] -> (log-mel [frames, 64], patches [P, 96, 64])."""
    padded, count = pad_waveform(wave)
    lm = log_mel(padded)
    assert lm.shape[0] == PATCH_FRAMES + (count - 1) * PATCH_HOP_FRAMES
    return lm, np.stack([lm[PATCH_HOP_FRAMES * i : PATCH_HOP_FRAMES * i + PATCH_FRAMES] for i in range(count)])
