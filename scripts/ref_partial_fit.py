#!/usr/bin/env python3
# Reference costs of online learning in Python, to compare with `cargo bench --bench head`:
# scikit-learn SGDClassifier(loss="log_loss").partial_fit one sample at a time, and river's
# logistic regression (softmax, and one-vs-rest LogisticRegression) learn_one, on the same
# shape of data as the bench (d = 1280, 10 and 100 classes, seeded Gaussian blobs).
# Prints one JSON line per (library, model, classes) with µs per update and per prediction.
#
# Pins (Python 3.11): numpy==2.4.6 scikit-learn==1.9.1 river==0.26.1
#   pip install numpy==2.4.6 scikit-learn==1.9.1 river==0.26.1
# Where OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set for safety, unset both for this command
# only when benchmarking:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 scripts/ref_partial_fit.py
import argparse
import json
import platform
import sys
import time

import numpy as np

DIM = 1280


def blobs(classes, n, seed):
    """n samples of `classes` Gaussian blobs: centers ~ N(0.5, 1), noise 0.5 (as the bench)."""
    rng = np.random.default_rng(seed)
    centers = 0.5 + rng.standard_normal((classes, DIM))
    y = np.arange(n) % classes
    x = centers[y] + 0.5 * rng.standard_normal((n, DIM))
    return x.astype(np.float32), y


def per_call_us(fn, n):
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n * 1e6


def sklearn_sgd(classes, warm, n):
    import sklearn
    from sklearn.linear_model import SGDClassifier

    x, y = blobs(classes, warm + n, seed=classes)
    clf = SGDClassifier(loss="log_loss", random_state=0)
    clf.partial_fit(x[:1], y[:1], classes=np.arange(classes))
    for i in range(1, warm):
        clf.partial_fit(x[i : i + 1], y[i : i + 1])
    xs, ys = x[warm:], y[warm:]
    upd = per_call_us(lambda i: clf.partial_fit(xs[i : i + 1], ys[i : i + 1]), n)
    pred = per_call_us(lambda i: clf.predict_proba(xs[i : i + 1]), n)
    acc = float((clf.predict(xs) == ys).mean())
    return {
        "lib": f"scikit-learn {sklearn.__version__}",
        "model": 'SGDClassifier(loss="log_loss") partial_fit, one-vs-rest',
        "classes": classes,
        "updates": n,
        "us_per_update": round(upd, 1),
        "us_per_predict": round(pred, 1),
        "train_accuracy_after": acc,
    }


def river_model(classes, warm, n, which):
    import river
    from river import linear_model, multiclass, optim

    if which == "softmax":
        model = linear_model.SoftmaxRegression(optimizer=optim.SGD(0.01))
        name = "linear_model.SoftmaxRegression learn_one"
    else:
        model = multiclass.OneVsRestClassifier(linear_model.LogisticRegression())
        name = "OneVsRestClassifier(linear_model.LogisticRegression) learn_one"
    x, y = blobs(classes, warm + n, seed=classes)
    rows = [dict(enumerate(map(float, r))) for r in x]
    for i in range(warm):
        model.learn_one(rows[i], int(y[i]))
    rs, ys = rows[warm:], y[warm:]
    upd = per_call_us(lambda i: model.learn_one(rs[i], int(ys[i])), n)
    pred = per_call_us(lambda i: model.predict_proba_one(rs[i]), n)
    return {
        "lib": f"river {river.__version__}",
        "model": name,
        "classes": classes,
        "updates": n,
        "us_per_update": round(upd, 1),
        "us_per_predict": round(pred, 1),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--updates", type=int, default=300, help="timed updates (sklearn)")
    ap.add_argument("--river-updates", type=int, default=50, help="timed updates (river)")
    ap.add_argument("--no-river", action="store_true")
    args = ap.parse_args()
    env = {"python": platform.python_version(), "numpy": np.__version__, "dim": DIM}
    for classes in (10, 100):
        warm = 2 * classes
        print(json.dumps({**env, **sklearn_sgd(classes, warm, args.updates)}), flush=True)
        if args.no_river:
            continue
        try:
            for which in ("softmax", "ovr"):
                row = river_model(classes, warm, args.river_updates, which)
                print(json.dumps({**env, **row}), flush=True)
        except ImportError as e:
            print(json.dumps({**env, "lib": "river", "skipped": str(e)}), file=sys.stderr)


if __name__ == "__main__":
    main()
