#!/usr/bin/env python3
"""Per image, decoding included: adaptd's image path against PIL + numpy + onnxruntime, stage by
stage and end to end, one thread each side, same run.

adaptd's side is `adaptd bench --image FILE --json` (decode, preprocess, backbone, end to end:
the path a worker takes). The reference runs the recipe `tests/fixtures/make_golden.py` defines
for the golden fixtures (PIL decode, alpha onto the background, centre crop of 0.875, PIL bicubic
resize to 224, (x - 127) / 128, NCHW) and onnxruntime with one intra-op and one inter-op thread,
sequential. The sides alternate for --rounds rounds (adaptd a fresh process each round,
onnxruntime a fresh session); each cell is the median over rounds of each round's median.

    python3 -m venv /tmp/venv-image
    /tmp/venv-image/bin/pip install numpy==2.4.6 onnxruntime==1.20.1 pillow==13.0.0
    cargo build --release --locked
    /tmp/venv-image/bin/python scripts/bench_image.py --adaptd target/release/adaptd [IMAGE ...]

Without images it times the photos in tests/fixtures (JPEG and PNG).
"""
import argparse
import glob
import io
import json
import math
import os
import platform
import statistics
import subprocess
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
MODEL = os.path.join(ROOT, "models", "efficientnet-lite0", "efficientnet-lite0.onnx")
SIZE, CROP_FRACTION, MEAN, STD, BACKGROUND = 224, 0.875, 127.0, 128.0, (255, 255, 255)


def decode(data):
    """8-bit RGB array; alpha composited onto the background (make_golden.decode_rgb)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if not has_alpha:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    rgba = np.asarray(img.convert("RGBA"), dtype=np.uint32)
    a = rgba[..., 3:4]
    bg = np.array(BACKGROUND, dtype=np.uint32)
    return ((rgba[..., :3] * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


def preprocess(rgb):
    """Centre crop, bicubic resize, normalise, NCHW (make_golden.preprocess, crop "center")."""
    img = Image.fromarray(rgb, "RGB")
    w, h = img.size
    s = int(math.floor(min(w, h) * CROP_FRACTION + 0.5))
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s)).resize((SIZE, SIZE), Image.BICUBIC)
    x = (np.asarray(img, dtype=np.float32) - np.float32(MEAN)) / np.float32(STD)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def timing(f, runs, warmup):
    for _ in range(warmup):
        f()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def reference(path, runs, warmup):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(MODEL, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    data = open(path, "rb").read()
    rgb = decode(data)
    x = preprocess(rgb)
    embed = lambda t: sess.run(["embedding"], {inp: t})[0]
    return {
        "decode": timing(lambda: decode(data), runs, warmup),
        "preprocess": timing(lambda: preprocess(rgb), runs, warmup),
        "backbone": timing(lambda: embed(x), runs, warmup),
        "end_to_end": timing(lambda: embed(preprocess(decode(data))), runs, warmup),
        "embedding": embed(preprocess(decode(data)))[0],
    }


def adaptd(binary, path, runs, warmup):
    out = subprocess.run([binary, "bench", "--image", path, "--json", "--runs", str(runs),
                          "--warmup", str(warmup)], check=True, capture_output=True, text=True,
                         env={**os.environ, "RUST_LOG": "warn"})
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: r[k]["median_ms"] for k in ("decode", "preprocess", "backbone", "end_to_end")} | {
        "size": f"{r['width']}×{r['height']}"}


def embedding_cosine(binary, path, ref):
    out = subprocess.run([binary, "embed", "--json", path], check=True, capture_output=True,
                         text=True, env={**os.environ, "RUST_LOG": "warn"})
    e = np.array(json.loads(out.stdout.strip().splitlines()[-1])["embedding"], dtype=np.float64)
    return float(e @ ref / (np.linalg.norm(e) * np.linalg.norm(ref)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="*")
    ap.add_argument("--adaptd", default=os.path.join(ROOT, "target", "release", "adaptd"))
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    images = args.images or sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "*.jpg"))
                                   + glob.glob(os.path.join(ROOT, "tests", "fixtures", "*.png")))
    load_before = os.getloadavg()[0]
    stages = ("decode", "preprocess", "backbone", "end_to_end")
    rows = []
    for path in images:
        ours, ref = [], []
        for _ in range(args.rounds):
            ours.append(adaptd(args.adaptd, path, args.runs, args.warmup))
            ref.append(reference(path, args.runs, args.warmup))
        med = lambda rs, k: statistics.median(r[k] for r in rs)
        row = {"image": os.path.relpath(path, ROOT), "size": ours[0]["size"]}
        for k in stages:
            row[k] = (med(ours, k), med(ref, k))
        row["cosine"] = embedding_cosine(args.adaptd, path, ref[0]["embedding"])
        rows.append(row)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; load average "
          f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"adaptd: {os.path.relpath(args.adaptd, ROOT)}; onnxruntime {ort.__version__}, "
          f"numpy {np.__version__}, PIL {Image.__version__}; {args.rounds} rounds × {args.runs} "
          f"runs after {args.warmup} warm-up, one thread each side\n")
    print("| image | size | decode: adaptd ms | PIL ms | preprocess: adaptd ms | PIL + numpy ms "
          "| backbone: tract ms | ort ms | end to end: adaptd ms | reference ms | adaptd / ref "
          "| embedding cosine |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = " | ".join(f"{a:.2f} | {b:.2f}" for a, b in (r[k] for k in stages))
        ratio = r["end_to_end"][0] / r["end_to_end"][1]
        print(f"| {r['image']} | {r['size']} | {cells} | **{ratio:.2f}×** | {r['cosine']:.5f} |")
    for k in stages:
        ratios = [r[k][0] / r[k][1] for r in rows]
        print(f"{k}: adaptd / reference median {statistics.median(ratios):.2f}× "
              f"({min(ratios):.2f}–{max(ratios):.2f})")


if __name__ == "__main__":
    main()
