#!/usr/bin/env python3
"""Reference latency of the shipped backbone with onnxruntime (CPU), to compare with adaptd/tract.

Loads models/efficientnet-lite0/efficientnet-lite0.onnx, feeds one preprocessed input (raw
little-endian float32 NCHW [1,3,224,224], default the coffee golden input), batch 1, with
intra_op_num_threads = --threads, inter_op_num_threads = 1, sequential execution, graph
optimizations --opt (default all: onnxruntime then fuses Clip and Add into its Conv kernels); runs --warmup untimed then --runs timed inferences and prints one JSON line:
  {"runtime":"onnxruntime","version":...,"threads":N,"median_ms":...,"p90_ms":...,"min_ms":...,
   "load_ms":..., ...}
--profile also enables onnxruntime's profiler (which slows every node a little) and prints a
second JSON line with the time per op type, summed over the timed runs and per inference.

Pins (Python 3.11): scripts/requirements.txt
    pip install -r scripts/requirements.txt
    python3 scripts/ref_backbone.py --threads 1
    python3 scripts/ref_backbone.py --threads 2 --runs 200 --profile
"""
import argparse
import collections
import hashlib
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
MODEL = os.path.join(ROOT, "models", "efficientnet-lite0", "efficientnet-lite0.onnx")
INPUT = os.path.join(ROOT, "tests", "fixtures", "golden", "coffee.input.f32")
SHAPE = (1, 3, 224, 224)
OPT = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def percentile(sorted_ms, q):
    """Nearest-rank percentile of an ascending list."""
    k = max(0, min(len(sorted_ms) - 1, int(np.ceil(q / 100.0 * len(sorted_ms))) - 1))
    return sorted_ms[k]


def op_profile(path, runs):
    """Sums node durations per op type over the timed runs (events after the warmup)."""
    events = json.load(open(path))
    per_type = collections.defaultdict(lambda: [0, 0])  # op type -> [µs, count]
    model_runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if len(model_runs) < runs:
        raise SystemExit(f"profile has {len(model_runs)} runs, expected at least {runs}")
    first = model_runs[-runs]["ts"]  # start of the first timed run
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if e["ts"] < first:
            continue
        op = e.get("args", {}).get("op_name", "?")
        per_type[op][0] += e["dur"]
        per_type[op][1] += 1
    total = sum(v[0] for v in per_type.values()) or 1
    ops = [
        {
            "op": op,
            "total_ms": round(us / 1000.0, 3),
            "per_run_ms": round(us / 1000.0 / runs, 4),
            "share": round(us / total, 4),
            "nodes_per_run": n // runs,
        }
        for op, (us, n) in sorted(per_type.items(), key=lambda kv: -kv[1][0])
    ]
    return {"profile": "onnxruntime", "runs": runs, "node_total_per_run_ms": round(total / 1000.0 / runs, 4), "ops": ops}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--input", default=INPUT, help="raw little-endian float32 NCHW [1,3,224,224]")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--opt", choices=sorted(OPT), default="all", help="graph optimization level")
    ap.add_argument("--profile", action="store_true", help="also print time per op type")
    args = ap.parse_args()
    if args.runs < 1 or args.threads < 1 or args.warmup < 0:
        ap.error("--runs and --threads must be ≥ 1, --warmup ≥ 0")

    x = np.fromfile(args.input, dtype="<f4")
    if x.size != int(np.prod(SHAPE)):
        sys.exit(f"{args.input}: {x.size} floats, expected {int(np.prod(SHAPE))}")
    x = x.reshape(SHAPE).astype(np.float32)

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = OPT[args.opt]
    tmpdir = None
    if args.profile:
        tmpdir = tempfile.TemporaryDirectory(prefix="ref_backbone_")
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmpdir.name, "ort")

    t0 = time.perf_counter()
    sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - t0) * 1000.0
    name = sess.get_inputs()[0].name
    outputs = [o.name for o in sess.get_outputs()]

    for _ in range(args.warmup):
        sess.run(outputs, {name: x})
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        sess.run(outputs, {name: x})
        times.append((time.perf_counter() - t) * 1000.0)
    times.sort()

    result = {
        "runtime": "onnxruntime",
        "version": ort.__version__,
        "threads": args.threads,
        "median_ms": round(float(np.median(times)), 3),
        "p90_ms": round(percentile(times, 90), 3),
        "min_ms": round(times[0], 3),
        "load_ms": round(load_ms, 1),
        "runs": args.runs,
        "warmup": args.warmup,
        "opt": args.opt,
        "profiled": args.profile,
        "model_sha256": hashlib.sha256(open(args.model, "rb").read()).hexdigest(),
        "input": os.path.basename(args.input),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    print(json.dumps(result), flush=True)
    if args.profile:
        path = sess.end_profiling()
        print(json.dumps(op_profile(path, args.runs)))
        tmpdir.cleanup()


if __name__ == "__main__":
    main()
