#!/usr/bin/env python3
# Reference measurement for adaptd's sensor backbone (MiniRocket, models/minirocket/build.py):
# what aeon's MiniRocket reaches on the official UCR/UEA TRAIN/TEST splits, and how long its
# transform takes per window on one thread.
#
# For each dataset (default BasicMotions, GunPoint, ItalyPowerDemand, ACSF1, JapaneseVowels),
# read from the .ts files bundled in the aeon wheel (aeon/datasets/data/, or --data-dir);
# unequal-length datasets are skipped with a message (JapaneseVowels: 7-29 samples; the bundled
# equal-length variant can be named explicitly: --datasets JapaneseVowels_eq):
#   (a) aeon's MiniRocketClassifier with its defaults (n_kernels=10000 features,
#       max_dilations_per_kernel=32) and random_state=--seed. Its pipeline, in aeon 1.6.0:
#       MiniRocket -> StandardScaler(with_mean=False) -> RidgeClassifierCV(alphas=np.logspace(-3, 3,
#       10)). (The paper's code is MiniRocket -> RidgeClassifierCV(alphas=np.logspace(-3, 3, 10),
#       normalize=True), an option scikit-learn has since removed; aeon's scaler stands in for it.)
#   (b) the same at n_kernels=--features (1344, what adaptd's model uses) and the same seed as
#       build.py (0): the fitted MiniRocket then has exactly the parameters of the model that
#       `build.py --features 1344 --seed 0` builds from the same TRAIN file.
#   (b') with --model-dir DIR, when DIR/minirocket-<dataset lower-case>/ holds a model whose input
#       matches the dataset: the same scaler + ridge on that ONNX model's features (onnxruntime),
#       which should equal (b).
#   (c) with --embeddings-dir DIR: the same scaler + ridge on DIR/<Name>_train.npy and
#       DIR/<Name>_test.npy (n × F), labels from DIR/<Name>_train_y.npy / _test_y.npy if present,
#       else the official labels (same order as the .ts files).
#   (d) timing, one thread (numba set_num_threads(1), MiniRocket n_jobs=1, onnxruntime 1 intra-
#       and 1 inter-op thread), after a warm-up call (numba compiles on first use): aeon's
#       MiniRocket.transform of one window (median of --runs calls on the first test window) and
#       of the whole test set divided by its size (median of --runs calls), at both feature counts;
#       onnxruntime on the (b') model, one window per call: the first test window (median of
#       --runs x 10 calls) and the whole test set window by window (median of --runs passes).
# Prints a markdown table; --json FILE writes the raw results.
#
#   /tmp/venv-sensor/bin/python scripts/ref_sensor.py --model-dir models --json /tmp/ref_sensor.json
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tomllib  # noqa: E402

import numpy as np  # noqa: E402

DEFAULT_DATASETS = "BasicMotions,GunPoint,ItalyPowerDemand,ACSF1,JapaneseVowels"
ALPHAS = np.logspace(-3, 3, 10)


def default_data_dir():
    import aeon

    return os.path.join(os.path.dirname(aeon.__file__), "datasets", "data")


def find_split(data_dir, name, split):
    hits = sorted(glob.glob(os.path.join(data_dir, "*", f"{name}_{split}.ts")))
    return hits[0] if hits else None


def load(path):
    from aeon.datasets import load_from_ts_file

    X, y, meta = load_from_ts_file(path, return_meta_data=True)
    if not isinstance(X, np.ndarray) or X.ndim != 3:
        lengths = sorted({x.shape[-1] for x in X})
        return None, y, (lengths[0], lengths[-1])
    return X.astype(np.float32), np.asarray(y), None


def ridge_pipeline():
    # aeon 1.6.0's MiniRocketClassifier after its transform
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(with_mean=False), RidgeClassifierCV(alphas=ALPHAS))


def accuracy_on_features(Ftr, ytr, Fte, yte):
    clf = ridge_pipeline().fit(Ftr, ytr)
    return float(np.mean(clf.predict(Fte) == yte))


def median_time(fn, runs):
    fn()  # warm-up
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), ts


def aeon_run(Xtr, ytr, Xte, yte, n_kernels, seed, runs):
    from aeon.classification.convolution_based import MiniRocketClassifier

    kw = {} if n_kernels is None else {"n_kernels": n_kernels}
    clf = MiniRocketClassifier(random_state=seed, n_jobs=1, **kw)
    t = time.perf_counter()
    clf.fit(Xtr, ytr)
    fit_s = time.perf_counter() - t
    acc = float(np.mean(clf.predict(Xte) == yte))
    mr = clf._transformer  # the fitted MiniRocket (aeon's pipeline_[0])
    n_features = int(len(mr.parameters[4]))
    one, one_ts = median_time(lambda: mr.transform(Xte[:1]), runs)
    batch, batch_ts = median_time(lambda: mr.transform(Xte), runs)
    return {
        "n_kernels_arg": clf.n_kernels,
        "n_features": n_features,
        "accuracy": acc,
        "fit_seconds": fit_s,
        "transform_one_window_s": one,
        "transform_test_set_per_window_s": batch / len(Xte),
        "raw_one_window_s": one_ts,
        "raw_test_set_s": batch_ts,
        "dilations": [int(d) for d in mr.parameters[2]],
        "features_per_dilation": [int(n) for n in mr.parameters[3]],
        "_transformer": mr,
    }


def onnx_run(model_dir, Xtr, ytr, Xte, yte, mr_b, runs):
    import onnxruntime as ort

    with open(os.path.join(model_dir, "model.toml"), "rb") as f:
        meta = tomllib.load(f)
    shape = list(meta["input"]["shape"])
    if shape != [1, Xte.shape[1], Xte.shape[2]]:
        return {"skipped": f"model input {shape} != dataset [1, {Xte.shape[1]}, {Xte.shape[2]}]"}
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(
        os.path.join(model_dir, meta["file"]), so, providers=["CPUExecutionProvider"]
    )
    inp, out = meta["input"]["name"], meta["embedding_output"]

    def feats(X):
        return np.concatenate([sess.run([out], {inp: X[i:i + 1]})[0] for i in range(len(X))])

    Ftr, Fte = feats(Xtr), feats(Xte)
    same_as_aeon = int(np.sum(Fte != np.asarray(mr_b.transform(Xte), dtype=np.float32)))
    acc = accuracy_on_features(Ftr, ytr, Fte, yte)
    w = Xte[:1]
    one, one_ts = median_time(lambda: sess.run([out], {inp: w}), runs * 10)
    batch, batch_ts = median_time(lambda: feats(Xte), runs)
    return {
        "model_dir": model_dir,
        "sha256": meta.get("sha256"),
        "accuracy": acc,
        "test_values_differing_from_aeon_b": same_as_aeon,
        "run_one_window_s": one,
        "run_test_set_per_window_s": batch / len(Xte),
        "raw_one_window_s": one_ts,
        "raw_test_set_s": batch_ts,
    }


def embeddings_run(d, name, ytr, yte):
    ptr, pte = os.path.join(d, f"{name}_train.npy"), os.path.join(d, f"{name}_test.npy")
    if not (os.path.exists(ptr) and os.path.exists(pte)):
        return {"skipped": f"no {name}_train.npy / {name}_test.npy in {d}"}
    Ftr, Fte = np.load(ptr), np.load(pte)
    for suffix, default in (("train", ytr), ("test", yte)):
        p = os.path.join(d, f"{name}_{suffix}_y.npy")
        y = np.load(p, allow_pickle=False) if os.path.exists(p) else default
        if suffix == "train":
            ytr_ = y
        else:
            yte_ = y
    if len(Ftr) != len(ytr_) or len(Fte) != len(yte_):
        return {"skipped": "embedding and label counts differ"}
    return {"dim": int(Ftr.shape[1]), "accuracy": accuracy_on_features(Ftr, ytr_, Fte, yte_)}


def versions():
    import aeon
    import numba
    import onnxruntime
    import sklearn

    return {
        "python": platform.python_version(),
        "aeon": aeon.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "numba": numba.__version__,
        "onnxruntime": onnxruntime.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs",
    }


def us(s):
    return "—" if s is None else f"{s * 1e6:,.0f}"


def pct(a):
    return "—" if a is None else f"{100 * a:.1f}"


def main():
    ap = argparse.ArgumentParser(description="MiniRocket reference: aeon accuracy and timing")
    ap.add_argument("--datasets", default=DEFAULT_DATASETS)
    ap.add_argument("--data-dir", default=None, help="default: the aeon wheel's datasets/data")
    ap.add_argument("--features", type=int, default=1344, help="(b)'s feature count (1344)")
    ap.add_argument("--seed", type=int, default=0, help="random_state for (a) and (b) (0 = build.py's)")
    ap.add_argument("--runs", type=int, default=7, help="timing repetitions (median)")
    ap.add_argument("--model-dir", help="directory holding minirocket-<dataset>/ models (e.g. models)")
    ap.add_argument("--embeddings-dir", help="<Name>_train.npy / <Name>_test.npy per dataset")
    ap.add_argument("--json", help="write raw results here")
    a = ap.parse_args()

    import numba

    numba.set_num_threads(1)
    data_dir = a.data_dir or default_data_dir()
    vers = versions()
    results = []
    for name in [n.strip() for n in a.datasets.split(",") if n.strip()]:
        ptr, pte = find_split(data_dir, name, "TRAIN"), find_split(data_dir, name, "TEST")
        if not ptr or not pte:
            print(f"{name}: no {name}_TRAIN.ts / {name}_TEST.ts under {data_dir}; skipped", file=sys.stderr)
            results.append({"dataset": name, "skipped": "not found"})
            continue
        Xtr, ytr, unequal = load(ptr)
        Xte, yte, unequal_te = load(pte)
        if unequal or unequal_te:
            lo = min(u[0] for u in (unequal, unequal_te) if u)
            hi = max(u[1] for u in (unequal, unequal_te) if u)
            eq = find_split(data_dir, name + "_eq", "TRAIN")
            hint = f"; an equal-length variant is bundled: --datasets {name}_eq" if eq else ""
            print(f"{name}: unequal-length series ({lo}-{hi} samples); skipped{hint}", file=sys.stderr)
            results.append({"dataset": name, "skipped": f"unequal length {lo}-{hi}"})
            continue
        r = {
            "dataset": name,
            "train_file": os.path.relpath(ptr, os.path.dirname(os.path.dirname(data_dir))),
            "n_train": int(len(Xtr)),
            "n_test": int(len(Xte)),
            "channels": int(Xtr.shape[1]),
            "length": int(Xtr.shape[2]),
            "classes": int(len(np.unique(ytr))),
        }
        print(f"{name}: {r['n_train']} train / {r['n_test']} test, {r['channels']}×{r['length']}", file=sys.stderr)
        ra = aeon_run(Xtr, ytr, Xte, yte, None, a.seed, a.runs)
        rb = aeon_run(Xtr, ytr, Xte, yte, a.features, a.seed, a.runs)
        mr_b = rb.pop("_transformer")
        ra.pop("_transformer")
        r["a_default"], r["b_features"] = ra, rb
        if a.model_dir:
            md = os.path.join(a.model_dir, f"minirocket-{name.lower()}")
            if os.path.exists(os.path.join(md, "model.toml")):
                r["onnx"] = onnx_run(md, Xtr, ytr, Xte, yte, mr_b, a.runs)
            else:
                r["onnx"] = {"skipped": f"no {md}/model.toml"}
        if a.embeddings_dir:
            r["embeddings"] = embeddings_run(a.embeddings_dir, name, ytr, yte)
        results.append(r)

    # ---- table
    fb = a.features
    print()
    print(
        f"MiniRocket on the official UCR/UEA splits, random_state={a.seed}; aeon {vers['aeon']} "
        f"MiniRocketClassifier = MiniRocket -> StandardScaler(with_mean=False) -> "
        f"RidgeClassifierCV(alphas=logspace(-3, 3, 10)). Times: µs per window, one thread, median "
        f"of {a.runs} runs after a warm-up ({vers['machine']})."
    )
    print()
    head = [
        "dataset", "train/test", "C×T", "dilations (b)",
        "(a) acc % 10k", f"(b) acc % {fb}", f"(b') ONNX acc % {fb}",
        "aeon 10k: 1 window", "aeon 10k: test set/n",
        f"aeon {fb}: 1 window", f"aeon {fb}: test set/n",
        f"ORT {fb}: 1 window", f"ORT {fb}: test set/n",
    ]
    if a.embeddings_dir:
        head.append("(c) emb acc %")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join([" --- "] * 3 + [" --- "] + [" ---: "] * (len(head) - 4)) + "|")
    for r in results:
        if "skipped" in r:
            print(f"| {r['dataset']} | skipped: {r['skipped']} |" + " |" * (len(head) - 2))
            continue
        ra, rb, ro = r["a_default"], r["b_features"], r.get("onnx", {})
        row = [
            r["dataset"], f"{r['n_train']}/{r['n_test']}", f"{r['channels']}×{r['length']}",
            ",".join(map(str, rb["dilations"])),
            pct(ra["accuracy"]), pct(rb["accuracy"]), pct(ro.get("accuracy")),
            us(ra["transform_one_window_s"]), us(ra["transform_test_set_per_window_s"]),
            us(rb["transform_one_window_s"]), us(rb["transform_test_set_per_window_s"]),
            us(ro.get("run_one_window_s")), us(ro.get("run_test_set_per_window_s")),
        ]
        if a.embeddings_dir:
            row.append(pct(r.get("embeddings", {}).get("accuracy")))
        print("| " + " | ".join(row) + " |")
    print()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    for r in results:
        ro = r.get("onnx")
        if ro and "skipped" not in ro:
            print(
                f"{r['dataset']}: ONNX model {ro['model_dir']} (sha256 {ro['sha256'][:12]}…): "
                f"{ro['test_values_differing_from_aeon_b']} test feature values differ from (b)'s aeon transform"
            )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"versions": vers, "seed": a.seed, "features_b": fb, "runs": a.runs,
                       "pipeline": "MiniRocket -> StandardScaler(with_mean=False) -> "
                                   "RidgeClassifierCV(alphas=np.logspace(-3, 3, 10))",
                       "results": results}, f, indent=1)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
