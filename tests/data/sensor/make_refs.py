#!/usr/bin/env python3
"""Reference windows and MiniRocket features for adaptd's sensor backbone test.

Regenerate (Python 3.11, pins in scripts/requirements-sensor.txt), from the repository root:

    python3 -m venv /tmp/venv-sensor && /tmp/venv-sensor/bin/pip install -r scripts/requirements-sensor.txt
    /tmp/venv-sensor/bin/python tests/data/sensor/make_refs.py

Writes tests/data/sensor/basicmotions_features.json: the first 8 windows of BasicMotions_TEST.ts
(from the aeon wheel, 6 channels × 100 samples, as float32), their labels, and aeon's MiniRocket
features of each window (1344 float32 values) with exactly the parameters of
models/minirocket-basicmotions/minirocket.onnx.

How "exactly the parameters" is made sure of: the model's metadata (seed, feature count,
max_dilations_per_kernel, graph form, SHA-256 of the training file) is read back, aeon's MiniRocket
is fitted again on that training file with those settings, and the ONNX graph is rebuilt from the
fitted parameters with models/minirocket/build.py's own code: its SHA-256 must equal the model
file's (and model.toml's), or the script stops. The features are aeon's `transform`
(`_static_transform_multi`); the script also runs the model with onnxruntime and requires it to be
bit-identical.

Numbers are written as the shortest decimal that gives back the same float32 when parsed as a
float64 and then rounded to float32 (checked for every value), so a Rust reader that parses f64
and casts `as f32` gets the exact float32 inputs and features.
"""
import hashlib
import json
import os
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT / "models" / "minirocket"))

import build  # noqa: E402  (models/minirocket/build.py)

MODEL_DIR = ROOT / "models" / "minirocket-basicmotions"
TRAIN = "aeon:BasicMotions/BasicMotions_TRAIN.ts"
TEST = "aeon:BasicMotions/BasicMotions_TEST.ts"
N_WINDOWS = 8
OUT = HERE / "basicmotions_features.json"


def f32_text(x):
    x = np.float32(x)
    s = np.format_float_positional(x, unique=True, trim="-")
    if np.float32(float(s)) != x:  # f64 parse then f32 rounding must give x back
        s = repr(float(x))  # the float32's exact value as a float64
        assert np.float32(float(s)) == x
    return s


def f32_list(values):
    return "[" + ",".join(f32_text(v) for v in np.ravel(values)) + "]"


def main():
    import onnx
    import tomllib

    with open(MODEL_DIR / "model.toml", "rb") as f:
        toml = tomllib.load(f)
    onnx_bytes = (MODEL_DIR / toml["file"]).read_bytes()
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    if sha != toml["sha256"]:
        sys.exit(f"{MODEL_DIR}: model.toml's sha256 {toml['sha256']} != the file's {sha}")
    model = onnx.load_from_string(onnx_bytes)
    meta = {p.key: p.value for p in model.metadata_props}

    X, _ = build.load_windows(TRAIN)
    train_sha = build.sha256_file(build.resolve(TRAIN))
    if train_sha != meta["train_sha256"]:
        sys.exit(f"the model was fitted on a file with SHA-256 {meta['train_sha256']}, not {TRAIN} ({train_sha})")
    seed, features = int(meta["seed"]), int(meta["n_features"])
    max_dil, graph = int(meta["max_dilations_per_kernel"]), meta.get("graph", "exact")
    mr = build.fit(X, features, max_dil, seed)
    C, T = X.shape[1:]
    rebuilt = build.build_onnx(
        mr.parameters, C, T, model.graph.name, [(p.key, p.value) for p in model.metadata_props], graph
    )
    if hashlib.sha256(rebuilt).hexdigest() != sha:
        sys.exit("the refitted parameters do not rebuild the model byte for byte; not writing references")

    Xt, yt = build.load_windows(TEST)
    W = Xt[:N_WINDOWS]
    feats = np.asarray(mr.transform(W), dtype=np.float32)
    ort = build.ort_features(onnx_bytes, W)
    if not np.array_equal(ort, feats):
        sys.exit(f"onnxruntime differs from aeon on {int((ort != feats).sum())} values")

    v = build.versions()
    test_src, test_sha = build.source_description(TEST)
    cases = []
    for i in range(N_WINDOWS):
        rows = ",".join(f32_list(W[i, c]) for c in range(C))
        cases.append(
            f'  {{"index":{i},"label":{json.dumps(str(yt[i]))},"window":[{rows}],'
            f'"features":{f32_list(feats[i])}}}'
        )
    head = {
        "about": (
            "First 8 windows of BasicMotions_TEST.ts (6 channels acc_x..gyr_z × 100 samples, float32) "
            "and aeon's MiniRocket features of each for the parameters of "
            "models/minirocket-basicmotions/minirocket.onnx (fitted on BasicMotions_TRAIN.ts, "
            f"random_state={seed}, n_kernels={features}, max_dilations_per_kernel={max_dil}); the "
            "model was rebuilt from those parameters byte for byte, and onnxruntime gives the same "
            "features bit for bit. Feature order: dilation-major, then the 84 kernels, then the "
            "biases of that dilation. Numbers are the shortest decimals that parse (f64, then f32) "
            "to the exact float32. Regenerate: tests/data/sensor/make_refs.py"
        ),
        "model": "models/minirocket-basicmotions",
        "model_sha256": sha,
        "input": toml["input"]["name"],
        "input_shape": toml["input"]["shape"],
        "output": toml["embedding_output"],
        "n_features": int(feats.shape[1]),
        "dilations": [int(d) for d in mr.parameters[2]],
        "features_per_dilation": [int(n) for n in mr.parameters[3]],
        "source": {"file": test_src.replace("`", ""), "sha256": test_sha, "windows": f"0..{N_WINDOWS - 1}"},
        "versions": {k: v[k] for k in ("aeon", "numpy", "numba", "onnxruntime")},
        "expect": (
            "bit-identical features (the graph repeats aeon's float32 additions in aeon's order); "
            "a runtime that reorders or fuses them can move a convolution output that ties with a "
            "bias, changing a feature by k/L (L = 100, or 100 - 8·dilation)"
        ),
    }
    lines = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False, separators=(',', ':'))}," for k, v in head.items()]
    text = "{\n" + "\n".join(lines) + '\n "cases": [\n' + ",\n".join(cases) + "\n ]\n}\n"
    json.loads(text)  # well-formed
    OUT.write_text(text)
    print(f"wrote {os.path.relpath(OUT, ROOT)} ({len(text)} bytes): {N_WINDOWS} windows, labels "
          f"{[str(y) for y in yt[:N_WINDOWS]]}, {feats.shape[1]} features each; model sha256 {sha}")


if __name__ == "__main__":
    main()
