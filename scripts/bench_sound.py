#!/usr/bin/env python3
"""adaptd's sound path vs its references, per stage and end to end, one thread, in one invocation.

adaptd (Rust front-end + tract, `adaptd bench --clip FILE --json`) against the references the
model was verified with: models/yamnet-l10/frontend.py (numpy, float64) for the front-end and
onnxruntime (1 intra-op thread, 1 inter-op thread, sequential) for the backbone. Per clip:

  (a) front-end: WAV bytes -> windows (decode, down-mix, resample to 16 kHz, log-mel, windows);
  (b) backbone per window: one pass on the clip's first window;
  (c) end to end: WAV bytes -> clip embedding (front-end, backbone once per window, mean);

each --runs timed calls after --warmup untimed ones; the two sides alternate for --rounds rounds
(adaptd a fresh process each round, onnxruntime a fresh session) and the table takes the median
over rounds of each round's median. The real-time factor is seconds of audio per second of
single-core compute, end to end. numpy's BLAS is held to one thread (OMP/OPENBLAS/MKL_NUM_THREADS=1).

Clips: the fixtures speech.wav, sweep_noise.wav, doorbell.wav (16 kHz mono), and a 10 s and a
30 s clip synthesised here (deterministic: bells, sweeps, buzz, noise bursts, seeded noise) into
--out-dir, each as 16 kHz mono and as 44.1 kHz stereo. For 44.1 kHz the numpy reference resamples
the channel mean with scipy.signal.resample_poly(x, 160, 441): the exact rational ratio, a
linear-phase Kaiser-windowed FIR with its delay compensated, and ceil(n * 160 / 441) output
samples, the same count as adaptd's rubato resampler (whose filter differs, so the cosine there is
a little lower). It also checks the cosine between `adaptd embed --json` and numpy + onnxruntime's
clip embedding for every clip (target >= 0.9999) and, for the fixtures, that this script's
reference equals tests/fixtures/sound/reference.json. --profile adds per-op times of both
runtimes on speech.wav's first window. Prints markdown for docs/benchmarks.md.

    python3 -m venv /tmp/venv-sound
    /tmp/venv-sound/bin/pip install numpy==1.26.4 onnxruntime==1.32.0 scipy==1.17.1
    cargo build --release
    /tmp/venv-sound/bin/python scripts/bench_sound.py --adaptd target/release/adaptd [--profile]
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported: the reference runs on one thread

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import wave  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import scipy  # noqa: E402
from scipy.signal import resample_poly  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
MODEL_DIR = os.path.join(ROOT, "models", "yamnet-l10")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "sound")
sys.path.insert(0, MODEL_DIR)
import frontend  # noqa: E402

SR = frontend.SAMPLE_RATE
COSINE_TARGET = 0.9999


# ---------------------------------------------------------------------------- clips

def write_wav(path, x, sr):
    """x: float [-1, 1], shape [n, channels] -> 16-bit PCM (as make_fixtures.py)."""
    pcm = np.clip(np.round(np.asarray(x) * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())


def synth(seconds, sr, seed):
    """A deterministic scene, as (left, right) float arrays at `sr`: every 1.25 s an event
    (two-tone bell, exponential sweep, noise burst, 8 Hz AM tone, 220 Hz buzz) over seeded
    background noise; the tonal part is a function of time only (the same at every rate, all
    below 7.5 kHz), the noise is seeded per rate and channel."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    left, right = np.zeros(n), np.zeros(n)
    rng = np.random.default_rng([seed, sr])
    for i, start in enumerate(np.arange(0.1, seconds - 0.2, 1.25)):
        tt = t - start
        on = (tt >= 0) & (tt < 1.1)
        kind = i % 5
        if kind == 0:  # bell: partials 1, 2, 3, 4.2 of 659.26 Hz then 554.37 Hz, exp. decay
            for f0, delay in ((659.26, 0.0), (554.37, 0.5)):
                u = tt - delay
                m = on & (u >= 0)
                for ratio, amp, tau in ((1.0, 1.0, 0.45), (2.0, 0.5, 0.3), (3.0, 0.25, 0.2), (4.2, 0.12, 0.12)):
                    left[m] += 0.3 * amp * np.exp(-u[m] / tau) * np.sin(2 * np.pi * f0 * ratio * u[m])
        elif kind == 1:  # exponential sweep 150 -> 6000 Hz over 1 s
            f0, f1, d = 150.0, 6000.0, 1.0
            m = on & (tt < d)
            phase = 2 * np.pi * f0 * d / np.log(f1 / f0) * (np.exp(tt[m] / d * np.log(f1 / f0)) - 1)
            right[m] += 0.3 * np.sin(phase) * np.sin(np.pi * tt[m] / d)
        elif kind == 2:  # noise burst, 0.2 s, Hann-shaped (seeded per rate)
            m = on & (tt < 0.2)
            k = int(m.sum())
            burst = rng.standard_normal(k) * np.hanning(k)
            left[m] += 0.25 * burst
            right[m] += 0.25 * burst[::-1]
        elif kind == 3:  # 1 kHz tone with 8 Hz amplitude modulation
            right[on] += 0.25 * (0.6 + 0.4 * np.sin(2 * np.pi * 8 * tt[on])) * np.sin(2 * np.pi * 1000 * tt[on])
        else:  # 220 Hz buzz, odd harmonics 1..19 with 1/h
            buzz = sum(np.sin(2 * np.pi * 220 * h * tt[on]) / h for h in range(1, 20, 2))
            left[on] += 0.15 * buzz * np.exp(-tt[on] / 0.6)
    left += 0.01 * rng.standard_normal(n)
    right += 0.01 * rng.standard_normal(n)
    peak = max(np.abs(left).max(), np.abs(right).max())
    scale = 0.9 / peak if peak > 0.9 else 1.0
    return left * scale, right * scale


def make_clips(out_dir):
    """[(label, path)]: the fixtures, then the synthesised clips (16 kHz mono, 44.1 kHz stereo)."""
    clips = [(name, os.path.join(FIXTURES, name)) for name in ("speech.wav", "sweep_noise.wav", "doorbell.wav")]
    os.makedirs(out_dir, exist_ok=True)
    for seconds in (10, 30):
        for sr, stereo in ((16000, False), (44100, True)):
            left, right = synth(seconds, sr, seed=seconds)
            x = np.stack([left, right], axis=1) if stereo else ((left + right) / 2)[:, None]
            name = f"synth_{seconds}s_{'44.1k_stereo' if stereo else '16k_mono'}.wav"
            path = os.path.join(out_dir, name)
            write_wav(path, x, sr)
            clips.append((name, path))
    return clips


# ---------------------------------------------------------------------------- reference

def read_wav(blob):
    """WAV bytes -> (16 kHz mono float64 samples, source rate, channels, frames)."""
    with wave.open(io.BytesIO(blob), "rb") as w:
        assert w.getsampwidth() == 2, "16-bit PCM only"
        sr, ch, n = w.getframerate(), w.getnchannels(), w.getnframes()
        pcm = np.frombuffer(w.readframes(n), dtype="<i2").reshape(n, ch)
    x = pcm.astype(np.float64).mean(axis=1) / 32768.0
    if sr != SR:
        g = math.gcd(SR, sr)
        x = resample_poly(x, SR // g, sr // g)
    return x, sr, ch, n


def ref_front_end(blob):
    """WAV bytes -> windows [P, 96, 64] float32 (what the model takes)."""
    x, _, _, _ = read_wav(blob)
    return frontend.patches(x)[1].astype(np.float32)


class Reference:
    def __init__(self, model):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        t0 = time.perf_counter()
        self.sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        self.load_ms = (time.perf_counter() - t0) * 1e3

    def window(self, patch):
        return self.sess.run(["embedding"], {"patch": patch[None]})[0][0]

    def clip(self, blob):
        windows = ref_front_end(blob)
        return np.mean(np.stack([self.window(p) for p in windows]), axis=0)


def timed(f, warmup, runs):
    for _ in range(warmup):
        f()
    times = []
    for _ in range(max(1, runs)):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def ref_round(ref, blob, warmup, runs):
    first = ref_front_end(blob)[0]
    return {
        "front_end": timed(lambda: ref_front_end(blob), warmup, runs),
        "backbone_per_window": timed(lambda: ref.window(first), warmup, runs),
        "end_to_end": timed(lambda: ref.clip(blob), warmup, runs),
    }


# ---------------------------------------------------------------------------- adaptd

def run_json_lines(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def adaptd_round(adaptd, model, path, warmup, runs):
    r = run_json_lines([adaptd, "bench", "--json", "--model", model, "--clip", path,
                        "--runs", str(runs), "--warmup", str(warmup)])[0]
    return r


def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def machine_line():
    model = platform.processor() or platform.platform()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
        mem = f", {kib / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores{mem}, {model}"


def profile(args, ref_model):
    """Per-op times of both runtimes on speech.wav's first window (tract: adaptd bench --profile;
    onnxruntime: its profiler, summed by scripts/ref_backbone.py's op_profile)."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from ref_backbone import op_profile  # noqa: E402

    blob = open(os.path.join(FIXTURES, "speech.wav"), "rb").read()
    first = ref_front_end(blob)[0]
    path = os.path.join(args.out_dir, "speech_window0.f32")
    first.astype("<f4").tofile(path)
    runs = args.profile_runs
    tract = run_json_lines([args.adaptd, "bench", "--json", "--profile", "--model", args.model,
                            "--input", path, "--runs", str(runs), "--warmup", str(args.warmup)])[0]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(args.out_dir, "ort_profile")
    sess = ort.InferenceSession(ref_model, so, providers=["CPUExecutionProvider"])
    for _ in range(args.warmup + runs):
        sess.run(["embedding"], {"patch": first[None]})
    prof_path = sess.end_profiling()
    ortp = op_profile(prof_path, runs)
    ort_nodes = ort_node_ms(prof_path, runs)
    os.remove(prof_path)
    print(f"\nPer-op times on speech.wav's first window, {runs} profiled passes after {args.warmup} warm-up "
          "(profilers add overhead to both):\n")
    print(f"tract ({tract['version']}, {tract['channel_last_depthwise'][0]}/{tract['channel_last_depthwise'][1]} "
          f"depthwise channel-last, {tract['adaptd_depthwise']} on adaptd's kernel): "
          f"{tract['total_ms']:.3f} ms per pass in nodes\n")
    print("| tract op | nodes | ms per pass | share |")
    print("|---|---|---|---|")
    for o in tract["by_op"]:
        print(f"| {o['op']} | {o['nodes']} | {o['ms']:.3f} | {100 * o['share']:.1f} % |")
    print(f"\nonnxruntime {ort.__version__}: {ortp['node_total_per_run_ms']:.3f} ms per pass in nodes\n")
    print("| onnxruntime op | nodes | ms per pass | share |")
    print("|---|---|---|---|")
    for o in ortp["ops"]:
        print(f"| {o['op']} | {o['nodes_per_run']} | {o['per_run_ms']:.3f} | {100 * o['share']:.1f} % |")

    # The same layers side by side: both runtimes keep the ONNX node names as prefixes.
    def layer_part(name):
        m = re.match(r"(layer\d+)\.(depthwise|pointwise|conv)", name)
        return (m.group(1), m.group(2)) if m else ("other", "other")

    tract_by, ort_by, shapes = {}, {}, {}
    for n in tract["nodes"]:
        key = layer_part(n["name"])
        tract_by[key] = tract_by.get(key, 0.0) + n["ms"]
        mkn = re.search(r"Mult: m:(\d+) k:(\d+) n:(\d+)", n["info"])
        if mkn and key[1] in ("pointwise", "conv"):
            shapes[key] = "×".join(mkn.groups())
    for name, ms in ort_nodes.items():
        key = layer_part(name)
        ort_by[key] = ort_by.get(key, 0.0) + ms
    layers = sorted({k[0] for k in tract_by} | {k[0] for k in ort_by},
                    key=lambda l: int(l[5:]) if l.startswith("layer") else 99)
    print("\n| layer | depthwise: tract ms | ort ms | pointwise (stem: 3×3 conv): tract ms | ort ms | tract / ort "
          "| matrix product m×k×n (tract) |")
    print("|---|---|---|---|---|---|---|")
    totals = {"depthwise": [0.0, 0.0], "pointwise": [0.0, 0.0], "other": [0.0, 0.0]}
    for layer in layers:
        dw = (tract_by.get((layer, "depthwise"), 0.0), ort_by.get((layer, "depthwise"), 0.0))
        pkey = (layer, "conv") if layer == "layer1" else (layer, "pointwise") if layer != "other" else ("other", "other")
        pw = (tract_by.get(pkey, 0.0), ort_by.get(pkey, 0.0))
        totals["depthwise"][0] += dw[0]
        totals["depthwise"][1] += dw[1]
        group = "other" if layer == "other" else "pointwise"
        totals[group][0] += pw[0]
        totals[group][1] += pw[1]
        ratio = f"{pw[0] / pw[1]:.2f}×" if pw[1] > 0 else "—"
        dws = f"{dw[0]:.3f} | {dw[1]:.3f}" if layer not in ("layer1", "other") else "— | —"
        print(f"| {layer} | {dws} | {pw[0]:.3f} | {pw[1]:.3f} | {ratio} | {shapes.get(pkey, '')} |")
    print("\n" + "; ".join(f"{g}: tract {t:.3f} ms, ort {o:.3f} ms ({t / o:.2f}×)" for g, (t, o) in totals.items() if o > 0)
          + " (pointwise includes the stem conv; other: reshapes, padding, pooling)")


def ort_node_ms(path, runs):
    """ms per pass of each onnxruntime node over the last `runs` runs of a profile."""
    events = json.load(open(path))
    model_runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first = model_runs[-runs]["ts"]
    per_node = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= first:
            name = e["name"][: -len("_kernel_time")]
            per_node[name] = per_node.get(name, 0.0) + e["dur"] / 1000.0 / runs
    return per_node


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adaptd", default=os.path.join(ROOT, "target", "release", "adaptd"))
    ap.add_argument("--model", default=MODEL_DIR, help="the sound model directory")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out-dir", default="/tmp/adaptd-bench-sound", help="where the synthesised clips go")
    ap.add_argument("--profile", action="store_true", help="also per-op times of both runtimes")
    ap.add_argument("--profile-runs", type=int, default=200)
    args = ap.parse_args()
    model_toml = open(os.path.join(args.model, "model.toml")).read()
    onnx_file = next(line.split("=", 1)[1].split("#")[0].strip().strip('"')
                     for line in model_toml.splitlines() if line.startswith("file"))
    ref_model = os.path.join(args.model, onnx_file)

    load_before = os.getloadavg()
    clips = make_clips(args.out_dir)
    blobs = {name: open(path, "rb").read() for name, path in clips}
    rounds = {name: {"adaptd": [], "ref": []} for name, _ in clips}
    ref_load = []
    for k in range(args.rounds):
        ref = Reference(ref_model)
        ref_load.append(ref.load_ms)
        for name, path in clips:
            # Alternate which side goes first, so a drift in load favours neither.
            sides = [("adaptd", lambda: adaptd_round(args.adaptd, args.model, path, args.warmup, args.runs)),
                     ("ref", lambda: ref_round(ref, blobs[name], args.warmup, args.runs))]
            for side, f in sides if k % 2 == 0 else sides[::-1]:
                rounds[name][side].append(f())
    load_after = os.getloadavg()

    # Embeddings: adaptd embed (one process, every clip) vs numpy + onnxruntime.
    ref = Reference(ref_model)
    emb = {os.path.basename(r["file"]): r["embedding"]
           for r in run_json_lines([args.adaptd, "embed", "--json", "--model", args.model] + [p for _, p in clips])}
    golden = {c["file"]: c for c in json.load(open(os.path.join(FIXTURES, "reference.json")))["clips"]}

    med = statistics.median
    rows, checks = [], []
    for name, path in clips:
        a, r = rounds[name]["adaptd"], rounds[name]["ref"]
        x, sr, ch, frames = read_wav(blobs[name])
        seconds = frames / sr
        stage = {s: (med(v[s]["median_ms"] for v in a), med(v[s] for v in r))
                 for s in ("front_end", "backbone_per_window", "end_to_end")}
        windows = a[0]["windows"]
        ref_windows = len(frontend.patches(x)[1])
        rows.append((name, sr, ch, seconds, windows, stage))
        ref_emb = ref.clip(blobs[name])
        cos = cosine(emb[name], ref_emb)
        diff = float(np.abs(np.asarray(emb[name], np.float64) - ref_emb).max())
        gold = golden.get(name, {}).get("mean_embedding")
        gold_cos = cosine(ref_emb, gold) if gold else None
        checks.append((name, sr, cos, diff, windows, ref_windows, gold_cos))

    first = rounds[clips[0][0]]["adaptd"][0]
    print(f"machine: {machine_line()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"adaptd binary: {os.path.relpath(args.adaptd, ROOT)} (tract {first['version']}, depthwise "
          f"{first['channel_last_depthwise'][0]}/{first['channel_last_depthwise'][1]} channel-last, "
          f"{first['adaptd_depthwise']} on adaptd's kernel); reference: numpy {np.__version__} frontend.py "
          f"(float64), scipy {scipy.__version__} resample_poly, onnxruntime {ort.__version__} (1 thread, "
          f"sequential); python {platform.python_version()}")
    print(f"{args.rounds} rounds x {args.runs} runs after {args.warmup} warm-up, one thread each side; "
          "median over rounds of each round's median; adaptd load "
          f"{med(v['load_ms'] for n, _ in clips for v in rounds[n]['adaptd']):.0f} ms, "
          f"onnxruntime session {med(ref_load):.0f} ms\n")
    print("| clip | rate, ch | s | windows | front-end: Rust ms | numpy ms | Rust / numpy "
          "| backbone per window: tract ms | onnxruntime ms | tract / ort "
          "| end to end per clip: adaptd ms | numpy + ort ms | adaptd / ref | real-time factor: adaptd | ref |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios = {"front_end": [], "backbone_per_window": [], "end_to_end": []}
    for name, sr, ch, seconds, windows, stage in rows:
        cells = []
        for s in ("front_end", "backbone_per_window", "end_to_end"):
            rust, refv = stage[s]
            ratios[s].append(rust / refv)
            cells.append(f"{rust:.2f} | {refv:.2f} | **{rust / refv:.2f}×**")
        rtf_a = seconds / (stage["end_to_end"][0] / 1e3)
        rtf_r = seconds / (stage["end_to_end"][1] / 1e3)
        print(f"| {name} | {sr / 1000:g} kHz, {ch} | {seconds:.2f} | {windows} | " + " | ".join(cells)
              + f" | {rtf_a:.0f}× | {rtf_r:.0f}× |")
    print("\nratios, median over clips (min–max): " + "; ".join(
        f"{s.replace('_', ' ')} {med(v):.2f}× ({min(v):.2f}–{max(v):.2f})" for s, v in ratios.items()))

    print(f"\n| clip | cosine adaptd vs numpy + onnxruntime (target ≥ {COSINE_TARGET}) | max abs diff | windows "
          "adaptd / numpy | this reference vs reference.json (cosine) |")
    print("|---|---|---|---|---|")
    ok = True
    for name, sr, cos, diff, windows, ref_windows, gold_cos in checks:
        ok &= cos >= COSINE_TARGET and windows == ref_windows
        note = " (resample_poly vs rubato)" if sr != SR else ""
        gold = f"{gold_cos:.8f}" if gold_cos is not None else "—"
        print(f"| {name} | {cos:.7f}{note} | {diff:.2e} | {windows} / {ref_windows} | {gold} |")
    print(f"\nall cosines ≥ {COSINE_TARGET} and window counts equal: {'yes' if ok else 'NO'}")
    if args.profile:
        profile(args, ref_model)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
