#!/usr/bin/env python3
# What the pretrained sound embedding adds (docs/learners.md, "Sound"): on exactly the split and
# stream that `adaptd eval --export-embeddings DIR` wrote for a dataset of WAV clips, fits the same
# classifier on two representations of each clip:
#   embedding: the backbone's clip embedding (train_x.npy / test_x.npy, e.g. yamnet-l10, 512-d);
#   logmel:    no transfer: statistics of the clip's log-mel spectrogram (the front-end YAMNet
#              itself reads, models/yamnet-l10/frontend.py: 25 ms Hann windows every 10 ms, 64 HTK
#              mel bands 125-7500 Hz, ln(mel + 0.001)) — per band the mean and standard deviation
#              over time and the standard deviation of its frame-to-frame difference: 192-d.
# Classifier: StandardScaler + multinomial LogisticRegression (lbfgs), C picked by stratified
# cross-validation on the training samples used (ref_offline.py's grid 10^-5 ... 10^2, as many
# folds as the smallest class allows, at most 5); with one sample per class no cross-validation
# is possible and C = 1 (scikit-learn's default).
# Training sets: for each k of --shots, per class the first k training samples of the stream
# (train_y.npy is in stream order: the samples the streaming learners see first), or all of a
# class's samples when it has fewer than k (counted in "short_classes"); then every training
# sample ("all"). Test: the whole test split. Also the majority-class rate.
# The clips are read from the files named in DIR/files.json (paths as adaptd eval saw them: run
# from the same directory, or pass --root). WAV at any rate and channel count: mixed to mono and
# resampled to 16 kHz (scipy's resample_poly).
# Prints a table and writes DIR/sound_baseline.json (or --out).
#
#   target/venv-eval/bin/python scripts/ref_sound_baseline.py target/eval/keywords
import argparse
import json
import math
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "models", "yamnet-l10"))
sys.path.insert(0, HERE)

import frontend  # noqa: E402  (models/yamnet-l10/frontend.py)
from ref_offline import LOGREG_C, load, tuned  # noqa: E402


def read_wav(path):
    """A WAV file as 16 kHz mono float64 in [-1, 1]."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    rate, x = wavfile.read(path)
    if x.dtype == np.uint8:
        x = (x.astype(np.float64) - 128.0) / 128.0
    elif np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float64) / float(-np.iinfo(x.dtype).min)
    else:
        x = x.astype(np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate != frontend.SAMPLE_RATE:
        g = math.gcd(rate, frontend.SAMPLE_RATE)
        x = resample_poly(x, frontend.SAMPLE_RATE // g, rate // g)
    return x


def logmel_stats(x):
    """192-d: per mel band, mean and std over time of the log-mel, and std of its frame-to-frame
    difference."""
    if len(x) < frontend.STFT_WINDOW + frontend.STFT_HOP:
        x = np.concatenate([x, np.zeros(frontend.STFT_WINDOW + frontend.STFT_HOP - len(x))])
    lm = frontend.log_mel(x)
    return np.concatenate([lm.mean(axis=0), lm.std(axis=0), np.diff(lm, axis=0).std(axis=0)])


def first_per_class(y, k):
    """Indices of the first k samples of each class in stream order (all of a class with fewer),
    and how many classes had fewer."""
    picked, seen = [], {}
    for i, c in enumerate(y):
        if seen.get(c, 0) < k:
            seen[c] = seen.get(c, 0) + 1
            picked.append(i)
    short = sum(1 for c in np.unique(y) if seen[c] < k)
    return np.array(picked), short


def fit(x_tr, y_tr, x_te, y_te, jobs):
    """StandardScaler + LogisticRegression; C by CV when every class has two samples."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if np.unique(y_tr, return_counts=True)[1].min() >= 2:
        return tuned(x_tr, y_tr, x_te, y_te, LogisticRegression(max_iter=5000), "C", LOGREG_C,
                     jobs)
    t0 = time.perf_counter()
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    with warnings.catch_warnings():
        # One sample per class: scikit-learn wonders whether y is a regression target.
        warnings.filterwarnings("ignore", message="The number of unique classes")
        model.fit(x_tr, y_tr)
    return {"accuracy": float(model.score(x_te, y_te)), "C": 1.0, "cv_accuracy": None,
            "fit_s": round(time.perf_counter() - t0, 2)}


def main():
    ap = argparse.ArgumentParser(description="no-transfer baseline for a sound dataset")
    ap.add_argument("dir", help="directory written by adaptd eval --export-embeddings")
    ap.add_argument("--shots", default="1,5,10", help="samples per class, comma-separated")
    ap.add_argument("--root", default=".", help="directory the paths in files.json are relative to")
    ap.add_argument("--out", help="output JSON (default DIR/sound_baseline.json)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel CV fits")
    args = ap.parse_args()

    import scipy
    import sklearn

    emb_tr, y_tr, emb_te, y_te, meta = load(args.dir)
    with open(os.path.join(args.dir, "files.json")) as f:
        files = json.load(f)
    if len(files["train"]) != len(y_tr) or len(files["test"]) != len(y_te):
        sys.exit(f"{args.dir}: files.json does not match the embeddings")
    paths = [os.path.join(args.root, p) for p in files["train"] + files["test"]]
    bad = [p for p in paths if not p.lower().endswith(".wav") or not os.path.isfile(p)]
    if bad:
        sys.exit(f"not WAV files (or not found from --root {args.root}): {bad[:3]} ...")
    t0 = time.perf_counter()
    feats = np.stack([logmel_stats(read_wav(p)) for p in paths])
    feature_s = round(time.perf_counter() - t0, 1)
    mel_tr, mel_te = feats[: len(y_tr)], feats[len(y_tr):]

    classes, counts = np.unique(np.concatenate([y_tr, y_te]), return_counts=True)
    majority = np.bincount(y_tr).argmax()
    out = {
        "dataset": meta.get("dataset", os.path.basename(os.path.normpath(args.dir))),
        "train": int(len(y_tr)),
        "test": int(len(y_te)),
        "classes": int(len(classes)),
        "majority_class_accuracy": float(np.mean(y_te == majority)),
        "features": {"embedding": int(emb_tr.shape[1]), "logmel": int(feats.shape[1])},
        "logmel_feature_s": feature_s,
        "results": [],
        "versions": {"scikit-learn": sklearn.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__, "python": sys.version.split()[0]},
    }
    shots = [int(s) for s in args.shots.split(",") if s.strip()]
    for k in shots + [None]:
        if k is None:
            idx, short = np.arange(len(y_tr)), 0
        else:
            idx, short = first_per_class(y_tr, k)
        row = {"per_class": k if k is not None else "all", "samples": int(len(idx)),
               "short_classes": int(short)}
        for name, (a, b) in {"embedding": (emb_tr, emb_te), "logmel": (mel_tr, mel_te)}.items():
            row[name] = fit(a[idx], y_tr[idx], b, y_te, args.jobs)
        out["results"].append(row)

    print(f"{out['dataset']}: {out['classes']} classes, {out['train']} train / {out['test']} test;"
          f" majority class {out['majority_class_accuracy']:.3f}")
    print("| per class | samples | log-mel stats + logreg | embedding + logreg | C (log-mel, emb.) |")
    print("|---|---|---|---|---|")
    for r in out["results"]:
        note = f" ({r['short_classes']} classes fewer)" if r["short_classes"] else ""
        print(f"| {r['per_class']} | {r['samples']}{note} | {r['logmel']['accuracy']:.3f} | "
              f"{r['embedding']['accuracy']:.3f} | {r['logmel']['C']:g}, {r['embedding']['C']:g} |")
    text = json.dumps(out, indent=2)
    with open(args.out or os.path.join(args.dir, "sound_baseline.json"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
