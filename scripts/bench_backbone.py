#!/usr/bin/env python3
"""tract (adaptd bench) vs onnxruntime on the shipped backbone, side by side in one invocation.

For each thread count (1 and all cores) the two runtimes are run alternately for --rounds
rounds on the same preprocessed input (the coffee golden tensor), each round a fresh process
with --warmup untimed and --runs timed inferences; the report takes the median over rounds of
each round's median. tract runs twice per round: with adaptd's channel-last depthwise rewrite
(the daemon's layout) and with `--depthwise-layout tract` (tract's own choice for this CPU). Also: load-to-ready time and the peak RSS of `adaptd embed` on one image.
Prints a markdown table for docs/benchmarks.md.

    pip install -r scripts/requirements.txt
    cargo build --release
    python3 scripts/bench_backbone.py --adaptd target/release/adaptd
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
INPUT = os.path.join(ROOT, "tests", "fixtures", "golden", "coffee.input.f32")
IMAGE = os.path.join(ROOT, "tests", "fixtures", "coffee.jpg")


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[0])


def peak_rss_kib(cmd):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit(f"{cmd} failed")
    return usage.ru_maxrss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--adaptd", default=os.path.join(ROOT, "target", "release", "adaptd"))
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    for threads in sorted({1, cores}):
        tract, prods, own, ort = [], [], [], []
        for _ in range(args.rounds):
            bench = [args.adaptd, "bench", "--json", "--input", INPUT, "--threads", str(threads),
                     "--runs", str(args.runs), "--warmup", str(args.warmup)]
            tract.append(run_json(bench))
            prods.append(run_json(bench + ["--depthwise-layout", "adaptd-depthwise"]))
            own.append(run_json(bench + ["--depthwise-layout", "tract"]))
            ort.append(run_json([sys.executable, os.path.join(ROOT, "scripts", "ref_backbone.py"), "--input", INPUT,
                                 "--threads", str(threads), "--runs", str(args.runs), "--warmup", str(args.warmup)]))
        t = statistics.median(r["median_ms"] for r in tract)
        tp = statistics.median(r["median_ms"] for r in prods)
        tw = statistics.median(r["median_ms"] for r in own)
        o = statistics.median(r["median_ms"] for r in ort)
        tl = statistics.median(r["load_ms"] for r in tract)
        ol = statistics.median(r["load_ms"] for r in ort)
        rows.append((threads, t, tp, tw, o, t / o, tw / o, tl, ol, ort[0].get("version", "?")))
    rss = peak_rss_kib([args.adaptd, "embed", IMAGE])
    print(f"machine: {platform.machine()}, {cores} cores, {platform.processor() or platform.platform()}")
    print(f"adaptd binary: {os.path.relpath(args.adaptd, ROOT)}; {args.rounds} rounds x {args.runs} runs "
          f"after {args.warmup} warm-up, batch 1, coffee input\n")
    print("| threads | adaptd (tract + adaptd's ops) ms | adaptd's depthwise, tract's products, ms "
          "| tract, its own layout, ms | onnxruntime median ms "
          "| adaptd / onnxruntime | tract's own / onnxruntime | adaptd load ms | onnxruntime load ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for threads, t, tp, tw, o, ratio, own_ratio, tl, ol, ver in rows:
        print(f"| {threads} | {t:.2f} | {tp:.2f} | {tw:.2f} | {o:.2f} (ort {ver}) | **{ratio:.2f}×** "
              f"| {own_ratio:.2f}× | {tl:.0f} | {ol:.0f} |")
    print(f"\npeak RSS of `adaptd embed coffee.jpg`: {rss / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
