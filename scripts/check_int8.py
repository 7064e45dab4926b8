#!/usr/bin/env python3
"""Does tract compute the int8 backbone the way onnxruntime does? (issue #7)

For each model directory written by scripts/quantize_backbone.py and each golden input
(tests/fixtures/golden/*.input.f32, preprocessed photos), compares three embeddings:

  tract int8   `adaptd embed --json --model DIR x.input.f32`
  ort int8     onnxruntime 1.20.1 on the same .onnx file
  ort fp32     onnxruntime on the shipped model

and prints, per input, cosine(tract int8, ort int8), max |diff| / max |ort int8|, and
cosine(int8, fp32) for both runtimes. With --rounds R it also times every model, fp32
included, in both runtimes (1 thread, batch 1, the coffee input; R interleaved rounds of fresh
processes, the median over rounds of each round's median) and prints the speed-ups over fp32. A tract build with overflow checks (dev/test profile)
panics in tract-core's quantized Sub; use the release binary. Exit status 1 when tract's int8
embedding disagrees with onnxruntime's (cosine < --min-cosine) on any input.

    target/venv-eval/bin/python scripts/check_int8.py --adaptd target/release/adaptd \
        target/int8/int8-all target/int8/int8-pointwise
"""
import argparse
import glob
import statistics
import json
import os
import subprocess
import sys
import tomllib

import numpy as np
import onnxruntime as ort

from bench_backbone import run_json  # same directory: one JSON line from a benchmark process

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SHIPPED = os.path.join(ROOT, "models", "efficientnet-lite0")
GOLDEN = os.path.join(ROOT, "tests", "fixtures", "golden")


def session(model_dir):
    spec = tomllib.load(open(os.path.join(model_dir, "model.toml"), "rb"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    s = ort.InferenceSession(os.path.join(model_dir, spec["file"]), opts,
                             providers=["CPUExecutionProvider"])
    return s, spec["embedding_output"], spec["input"]["shape"]


def ort_embed(sess, x):
    s, out, shape = sess
    return s.run([out], {s.get_inputs()[0].name: x.reshape(shape)})[0].reshape(-1)


def tract_embed(adaptd, model_dir, paths):
    r = subprocess.run([adaptd, "embed", "--json", "--model", model_dir, *paths],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"adaptd embed failed on {model_dir}:\n{r.stderr}")
    return [np.array(json.loads(line)["embedding"], dtype=np.float32)
            for line in r.stdout.splitlines() if line.strip()]


def bench(adaptd, dirs, rounds, runs):
    """Median ms per model directory for tract and onnxruntime, rounds interleaved."""
    x = os.path.join(GOLDEN, "coffee.input.f32")
    ref = os.path.join(ROOT, "scripts", "ref_backbone.py")
    times = {d: ([], []) for d in dirs}
    for _ in range(rounds):
        for d in dirs:
            spec = tomllib.load(open(os.path.join(d, "model.toml"), "rb"))
            times[d][0].append(run_json([adaptd, "bench", "--json", "--model", d, "--input", x,
                                         "--runs", str(runs), "--warmup", "5"])["median_ms"])
            times[d][1].append(run_json([sys.executable, ref, "--model", os.path.join(d, spec["file"]),
                                         "--input", x, "--runs", str(runs), "--warmup", "5"])["median_ms"])
    return {d: (statistics.median(t), statistics.median(o)) for d, (t, o) in times.items()}


def cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="model directories (quantize_backbone.py output)")
    ap.add_argument("--adaptd", default=os.path.join(ROOT, "target", "release", "adaptd"))
    ap.add_argument("--min-cosine", type=float, default=0.99)
    ap.add_argument("--rounds", type=int, default=0, help="also time the models, R rounds")
    ap.add_argument("--runs", type=int, default=50, help="timed runs per round")
    args = ap.parse_args()

    paths = sorted(glob.glob(os.path.join(GOLDEN, "*.input.f32")))
    xs = [np.fromfile(p, dtype="<f4") for p in paths]
    fp32 = session(SHIPPED)
    ref = [ort_embed(fp32, x) for x in xs]
    bad = 0
    print(f"{'model':<16} {'input':<10} {'cos tract/ort':>13} {'max rel diff':>12} "
          f"{'cos ort int8/fp32':>17} {'cos tract int8/fp32':>19}")
    for d in args.models:
        q = session(d)
        tract = tract_embed(args.adaptd, d, paths)
        for p, x, r, t in zip(paths, xs, ref, tract):
            o = ort_embed(q, x)
            c = cos(t, o)
            rel = float(np.max(np.abs(t - o)) / (np.max(np.abs(o)) + 1e-30))
            name = os.path.basename(p).split(".")[0]
            print(f"{os.path.basename(d.rstrip('/')):<16} {name:<10} {c:>13.6f} {rel:>12.2e} "
                  f"{cos(o, r):>17.6f} {cos(t, r):>19.6f}")
            bad += c < args.min_cosine
    if args.rounds:
        res = bench(args.adaptd, [SHIPPED, *args.models], args.rounds, args.runs)
        t0, o0 = res[SHIPPED]
        print(f"\n{args.rounds} rounds x {args.runs} runs, 1 thread, batch 1\n")
        print("| model | tract ms | tract speed-up vs fp32 | onnxruntime ms | onnxruntime speed-up vs fp32 | tract / onnxruntime |")
        print("|---|---|---|---|---|---|")
        for d, (t, o) in res.items():
            name = "fp32 (shipped)" if d == SHIPPED else os.path.relpath(d, ROOT)
            print(f"| {name} | {t:.2f} | {t0 / t:.2f}× | {o:.2f} | {o0 / o:.2f}× | {t / o:.2f}× |")
    if bad:
        sys.exit(f"{bad} input(s) where tract's int8 embedding disagrees with onnxruntime's")


if __name__ == "__main__":
    main()
