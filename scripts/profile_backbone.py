#!/usr/bin/env python3
"""Where the backbone's time goes: tract's per-node profile (`adaptd bench --profile`) beside
onnxruntime's (SessionOptions.enable_profiling), one thread each, same preprocessed input.

Prints ms per forward pass by operator family for both runtimes, the ratio, and the slowest
tract nodes with the kernel tract picked. ONNX Conv nodes are split by kind (1x1 pointwise,
depthwise, full k x k) on both sides from the graph's own attributes, so the families match.

    python3 -m venv target/venv-eval && target/venv-eval/bin/pip install -r scripts/requirements.txt
    cargo build --release
    target/venv-eval/bin/python scripts/profile_backbone.py --adaptd target/release/adaptd
"""
import argparse
import collections
import glob
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
MODEL = os.path.join(ROOT, "models", "efficientnet-lite0", "efficientnet-lite0.onnx")
INPUT = os.path.join(ROOT, "tests", "fixtures", "golden", "coffee.input.f32")


def onnx_families(model_path):
    """Node name -> family (Conv split into 1x1, depthwise, k x k) for the graph in model_path
    (onnxruntime's own optimized graph: its NCHWc Conv nodes are renamed, so the families come
    from that graph's attributes); None without the onnx package."""
    try:
        import onnx
    except ImportError:
        return None
    m = onnx.load(model_path)
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    fam = {}
    for n in m.graph.node:
        f = n.op_type
        if n.op_type in ("Conv", "FusedConv"):
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            kernel = next((list(a.ints) for a in n.attribute if a.name == "kernel_shape"), None)
            w = inits.get(n.input[1], [])
            if kernel is None and len(w) == 4:
                kernel = w[2:]
            if group > 1:
                f = "Conv depthwise"
            elif kernel == [1, 1]:
                f = "Conv 1x1"
            else:
                f = "Conv kxk"
        fam[n.name] = f
    return fam


def ort_profile(runs, warmup):
    """Per-node kernel ms per pass, node -> op, median model_run ms, version. The warm-up runs
    are in the same profile file: only node events inside the timed model_runs count."""
    import numpy as np
    import onnxruntime as ort

    x = np.fromfile(INPUT, dtype="<f4").reshape(1, 3, 224, 224)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_profiling = True
    tmp = tempfile.mkdtemp(prefix="ortprof")
    so.profile_file_prefix = os.path.join(tmp, "ort")
    so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
    sess = ort.InferenceSession(MODEL, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(warmup + runs):
        sess.run(None, {name: x})
    events = json.load(open(sess.end_profiling()))
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e["ts"])[warmup:]
    if not model_runs:
        raise SystemExit("onnxruntime's profile has no model_run events")
    start = model_runs[0]["ts"]
    per_node = collections.defaultdict(float)
    op_of = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        node = e["name"][: -len("_kernel_time")]
        per_node[node] += e["dur"] / 1e3 / len(model_runs)  # us -> ms per pass
        op_of[node] = e.get("args", {}).get("op_name", "?")
    run_ms = sorted(e["dur"] / 1e3 for e in model_runs)
    return dict(per_node), op_of, run_ms[len(run_ms) // 2], ort.__version__, so.optimized_model_filepath


def tract_profile(adaptd, runs, warmup, layout):
    out = subprocess.run(
        [adaptd, "bench", "--profile", "--json", "--input", INPUT, "--runs", str(runs),
         "--warmup", str(warmup), "--threads", "1", "--depthwise-layout", layout],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def tract_family(op, info):
    text = (op + " " + info).lower()
    if "depthwise" in text:  # DepthWiseConv (tract's kernel) and AdaptdDepthwise
        return "Conv depthwise"
    if "matmul" in op.lower() or "conv" in op.lower():
        return "Conv 1x1 / kxk / Gemm (matrix products)"
    return op


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adaptd", default=os.path.join(ROOT, "target", "release", "adaptd"))
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--json", help="write both profiles to this file")
    ap.add_argument("--depthwise-layout", default="adaptd", choices=["adaptd", "adaptd-depthwise", "channel-last", "tract"],
                    help="depthwise convs: adaptd's channel-last rewrite and kernel (the daemon's), "
                         "the rewrite on tract's kernels, or tract's own layout")
    a = ap.parse_args()

    t = tract_profile(a.adaptd, a.runs, a.warmup, a.depthwise_layout)
    per_node, op_of, ort_run_ms, ort_version, optimized = ort_profile(a.runs, a.warmup)
    fam = onnx_families(optimized)

    ort_fam = collections.defaultdict(lambda: [0, 0.0])
    for node, ms in per_node.items():
        f = op_of[node]
        if fam is not None and node in fam:
            f = fam[node]
        elif f in ("FusedConv", "Conv"):
            f = "Conv (all kinds)"
        ort_fam[f][0] += 1
        ort_fam[f][1] += ms
    ort_total = sum(v[1] for v in ort_fam.values())

    tr_fam = collections.defaultdict(lambda: [0, 0.0])
    for n in t["nodes"]:
        f = tract_family(n["op"], n["info"])
        tr_fam[f][0] += 1
        tr_fam[f][1] += n["ms"]

    cl, dw = t.get("channel_last_depthwise", [0, 0])
    print(f"tract {t['version']}: {t['total_ms']:.2f} ms per pass in nodes ({t['runs']} runs, 1 thread, "
          f"depthwise {cl}/{dw} channel-last)")
    print(f"onnxruntime {ort_version}: {ort_total:.2f} ms per pass in kernels, model_run median {ort_run_ms:.2f} ms")
    print(f"ratio (node time): {t['total_ms'] / ort_total:.2f}x\n")
    print("| tract op | nodes | ms/pass | share |")
    print("|---|---|---|---|")
    for o in t["by_op"]:
        print(f"| {o['op']} | {o['nodes']} | {o['ms']:.2f} | {o['share'] * 100:.1f}% |")
    print("\n| onnxruntime op (ONNX Conv split by kind) | nodes | ms/pass | share |")
    print("|---|---|---|---|")
    for f, (c, ms) in sorted(ort_fam.items(), key=lambda kv: -kv[1][1]):
        print(f"| {f} | {c} | {ms:.2f} | {ms / ort_total * 100:.1f}% |")
    print("\n| family | tract ms | onnxruntime ms | tract / ort |")
    print("|---|---|---|---|")
    dw_t = tr_fam.get("Conv depthwise", [0, 0.0])[1]
    dw_o = ort_fam.get("Conv depthwise", [0, 0.0])[1]
    mm_t = tr_fam.get("Conv 1x1 / kxk / Gemm (matrix products)", [0, 0.0])[1]
    mm_o = sum(ort_fam.get(k, [0, 0.0])[1] for k in ("Conv 1x1", "Conv kxk", "Gemm", "Conv (all kinds)"))
    rest_t = t["total_ms"] - dw_t - mm_t
    rest_o = ort_total - dw_o - mm_o
    for name, x, y in (("depthwise conv", dw_t, dw_o), ("matrix products (1x1, kxk conv, Gemm)", mm_t, mm_o),
                       ("everything else", rest_t, rest_o)):
        print(f"| {name} | {x:.2f} | {y:.2f} | {x / y if y else float('nan'):.2f}x |")
    print("\nslowest tract nodes:")
    for n in t["nodes"][:12]:
        print(f"  {n['ms']:7.3f} ms  {n['op']:<14} {n['name']}  [{n['info']}]")
    if a.json:
        json.dump({"tract": t, "ort": {"per_node_ms": per_node, "op": op_of, "run_ms": ort_run_ms}},
                  open(a.json, "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())
