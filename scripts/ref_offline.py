#!/usr/bin/env python3
# Offline baselines for `adaptd eval` (docs/learners.md): fits scikit-learn models on exactly
# the embeddings and split that `adaptd eval --export-embeddings DIR` wrote, with every training
# sample available at once and as many passes as they need:
#   logreg: StandardScaler + multinomial LogisticRegression (lbfgs), C chosen by 5-fold stratified
#           cross-validation on the training split over 10^-5 … 10^2;
#   ridge:  StandardScaler + RidgeClassifier, alpha chosen by the same cross-validation.
# Prints one JSON object and writes it to DIR/baseline.json (or --out), for
# `adaptd eval … --baseline DIR/baseline.json`:
#   {"logreg": {"accuracy": …, "C": …, "cv_accuracy": …}, "ridge": {"accuracy": …, "alpha": …},
#    "dataset": …, "train": …, "test": …, "dim": …, "classes": …, "versions": {…}}
#
#   target/venv-eval/bin/pip install -r scripts/requirements.txt
#   target/venv-eval/bin/python scripts/ref_offline.py target/eval/digits
# For sound datasets, scripts/ref_sound_baseline.py adds a no-transfer baseline (log-mel
# statistics + logistic regression) on the same split.
import argparse
import json
import os
import sys
import time

import numpy as np


def load(d):
    x_tr = np.load(os.path.join(d, "train_x.npy"))
    y_tr = np.load(os.path.join(d, "train_y.npy"))
    x_te = np.load(os.path.join(d, "test_x.npy"))
    y_te = np.load(os.path.join(d, "test_y.npy"))
    meta = {}
    p = os.path.join(d, "meta.json")
    if os.path.exists(p):
        with open(p) as f:
            meta = json.load(f)
    if x_tr.ndim != 2 or x_te.ndim != 2 or x_tr.shape[1] != x_te.shape[1]:
        sys.exit(f"{d}: train/test embeddings must be 2-D with the same width")
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        sys.exit(f"{d}: embeddings and labels differ in length")
    return x_tr.astype(np.float64), y_tr, x_te.astype(np.float64), y_te, meta


def folds(y):
    # As many folds as the smallest class allows, at most 5.
    _, counts = np.unique(y, return_counts=True)
    return int(max(2, min(5, counts.min())))


# The grids searched by cross-validation on the training split.
LOGREG_C = [10.0**e for e in range(-5, 3)]
RIDGE_ALPHA = [10.0**e for e in range(-2, 7)]


def tuned(x_tr, y_tr, x_te, y_te, model, param, grid, jobs=2, scale=True):
    """StandardScaler + model, the hyper-parameter `param` picked from `grid` by stratified
    cross-validation on the training split (folds(y_tr) folds, shuffled, seed 0); test accuracy,
    the picked value, the CV accuracy and the fit time. Also used by ref_sound_baseline.py and,
    with scale=False (the model alone: a TF-IDF pipeline on raw texts), ref_text_baseline.py."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    pipe = make_pipeline(StandardScaler(), model) if scale else make_pipeline(model)
    step = pipe.steps[-1][0]
    cv = StratifiedKFold(n_splits=folds(y_tr), shuffle=True, random_state=0)
    search = GridSearchCV(pipe, {f"{step}__{param}": grid}, cv=cv, n_jobs=jobs).fit(x_tr, y_tr)
    return {
        "accuracy": float(search.score(x_te, y_te)),
        param: float(search.best_params_[f"{step}__{param}"]),
        "cv_accuracy": float(search.best_score_),
        "fit_s": round(time.perf_counter() - t0, 2),
    }


def main():
    ap = argparse.ArgumentParser(description="offline baselines on exported embeddings")
    ap.add_argument("dir", help="directory written by adaptd eval --export-embeddings")
    ap.add_argument("--out", help="output JSON (default DIR/baseline.json)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel CV fits")
    args = ap.parse_args()

    import sklearn
    from sklearn.linear_model import LogisticRegression, RidgeClassifier

    x_tr, y_tr, x_te, y_te, meta = load(args.dir)
    out = {
        "dataset": meta.get("dataset", os.path.basename(os.path.normpath(args.dir))),
        "train": int(len(y_tr)),
        "test": int(len(y_te)),
        "dim": int(x_tr.shape[1]),
        "classes": int(len(np.unique(np.concatenate([y_tr, y_te])))),
        "cv_folds": folds(y_tr),
        "versions": {"scikit-learn": sklearn.__version__, "numpy": np.__version__,
                     "python": sys.version.split()[0]},
    }

    out["logreg"] = tuned(
        x_tr, y_tr, x_te, y_te, LogisticRegression(max_iter=5000), "C", LOGREG_C, args.jobs
    )
    out["ridge"] = tuned(x_tr, y_tr, x_te, y_te, RidgeClassifier(), "alpha", RIDGE_ALPHA, args.jobs)

    text = json.dumps(out, indent=2)
    print(text)
    with open(args.out or os.path.join(args.dir, "baseline.json"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
