#!/usr/bin/env python3
"""Static int8 quantization of the shipped backbone, calibrated on real photos (issue #7).

Writes model directories that `adaptd bench --model DIR` and `adaptd eval --model DIR` load
like the shipped one (model.toml + labels + .onnx; same preprocessing, same outputs):

  OUT/int8-all/        every Conv as QLinearConv (1x1, 3x3 stem and the 16 depthwise convs)
  OUT/int8-pointwise/  only the dense convs (group = 1) as QLinearConv; the depthwise convs
                       stay float between DequantizeLinear/QuantizeLinear

Format: onnxruntime's QOperator format (QuantizeLinear, QLinearConv, DequantizeLinear: standard
ONNX ops that tract-onnx implements; no com.microsoft ops), weights int8 per output channel
(per conv with --per-tensor),
activations uint8 per tensor, each ReLU6 (Clip) folded into its conv's output range. Only Conv
and Clip are quantized: the 1280->1000 classifier Gemm feeds only the logits, which adaptd does
not use for learning.

Calibration: MinMax (default) or Percentile over CALIB inputs made from the colour photos that
ship inside scikit-image and scikit-learn (nothing is downloaded): each photo at several random
crops, scales and flips, preprocessed exactly as models/efficientnet-lite0/model.toml says
(centre crop 0.875, bicubic to 224, (x - 127) / 128, RGB, NCHW). The benchmark datasets of
`adaptd eval` are NOT used for calibration, so the accuracy change measured on them is clean.

    target/venv-eval/bin/pip install -r scripts/requirements.txt onnx==1.17.0
    target/venv-eval/bin/python scripts/quantize_backbone.py target/int8
"""
import argparse
import collections
import hashlib
import os
import shutil
import sys

import numpy as np
import onnx
from PIL import Image
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
MODEL_DIR = os.path.join(ROOT, "models", "efficientnet-lite0")
MODEL = os.path.join(MODEL_DIR, "efficientnet-lite0.onnx")


def photos():
    """The photos bundled with scikit-image and scikit-learn, colour then grey (no download)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    out = []
    for name in ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "retina",
                 "immunohistochemistry", "hubble_deep_field", "colorwheel", "logo", "cat"]:
        f = getattr(data, name, None)
        if f is None:
            continue
        try:
            a = np.asarray(f())
        except Exception as e:  # some bundled images need an optional download: skip them
            print(f"skipping skimage {name}: {e}", file=sys.stderr)
            continue
        if a.ndim == 3 and a.shape[2] >= 3:
            out.append(Image.fromarray(a[:, :, :3].astype(np.uint8)))
    for a in load_sample_images().images:
        out.append(Image.fromarray(a))
    for name in ["camera", "coins", "moon", "page", "text", "grass", "gravel", "brick"]:
        f = getattr(data, name, None)
        if f is not None:
            try:
                out.append(Image.fromarray(np.asarray(f())).convert("RGB"))
            except Exception as e:
                print(f"skipping skimage {name}: {e}", file=sys.stderr)
    return out


def preprocess(img):
    """models/efficientnet-lite0/model.toml: centre crop 0.875, bicubic 224, (x-127)/128."""
    w, h = img.size
    side = round(min(w, h) * 0.875)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((224, 224), Image.BICUBIC)
    x = (np.asarray(img, dtype=np.float32) - 127.0) / 128.0
    return x.transpose(2, 0, 1)[None].copy()


def calibration_inputs(n, seed):
    rng = np.random.default_rng(seed)
    base = photos()
    inputs = []
    for i in range(n):
        img = base[i % len(base)]
        w, h = img.size
        if i >= len(base):  # the first pass is the whole photo, then random views of it
            s = rng.uniform(0.35, 1.0)
            cw, ch = max(32, int(w * s)), max(32, int(h * s))
            x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            img = img.crop((x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        inputs.append(preprocess(img))
    return inputs, len(base)


class Reader(CalibrationDataReader):
    def __init__(self, inputs):
        self.it = iter(inputs)

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {"input": x}


def write_dir(out, name, onnx_path):
    d = os.path.join(out, name)
    digest = hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()
    for f in ["labels.txt", "LICENSE", "LICENSE-APACHE-2.0.txt", "LICENSE.labels"]:
        src = os.path.join(MODEL_DIR, f)
        if os.path.exists(src):
            shutil.copy(src, d)
    toml = open(os.path.join(MODEL_DIR, "model.toml")).read().splitlines()
    lines = []
    for line in toml:
        if line.startswith("name = "):
            line = f'name = "efficientnet-lite0-{name}"'
        elif line.startswith("file = "):
            line = f'file = "{os.path.basename(onnx_path)}"'
        elif line.startswith("sha256 = "):
            line = f'sha256 = "{digest}"'
        lines.append(line)
    open(os.path.join(d, "model.toml"), "w").write(
        f"# {name}: written by scripts/quantize_backbone.py from the shipped model.\n"
        + "\n".join(lines) + "\n")
    return digest


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--calib", type=int, default=200, help="calibration inputs")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--method", choices=["minmax", "percentile", "entropy"], default="minmax")
    ap.add_argument("--variants", default="int8-all,int8-pointwise")
    ap.add_argument("--per-tensor", action="store_true",
                    help="one weight scale per conv instead of one per output channel")
    ap.add_argument("--activations", choices=["uint8", "int8"], default="uint8",
                    help="activation type (int8 is quantized symmetric around 0)")
    args = ap.parse_args()

    inputs, nphotos = calibration_inputs(args.calib, args.seed)
    print(f"calibration: {len(inputs)} inputs from {nphotos} bundled photos (seed {args.seed})")
    model = onnx.load(MODEL)
    depthwise = [n.name for n in model.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[args.method]
    for variant in args.variants.split(","):
        d = os.path.join(args.out, variant)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"efficientnet-lite0-{variant}.onnx")
        exclude = depthwise if variant == "int8-pointwise" else []
        quantize_static(
            MODEL, path, Reader(inputs),
            quant_format=QuantFormat.QOperator,
            # Clip (the ReLU6 after every conv but the block outputs) must be listed: the
            # quantizer then quantizes each conv's output over the Clip's range [0, 6] and drops
            # the Clip. With only "Conv", every conv output is quantized over its whole
            # pre-activation range (tens of units) and the embedding's cosine to fp32 falls to
            # 0.80-0.87 (docs/performance.md).
            op_types_to_quantize=["Conv", "Clip"],
            per_channel=not args.per_tensor,
            activation_type=QuantType.QInt8 if args.activations == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=method,
            extra_options={"ActivationSymmetric": args.activations == "int8",
                           "WeightSymmetric": True},
        )
        # onnxruntime's quantizer leaves value_info with a symbolic batch "N" next to the
        # fixed input shape; tract then cannot unify 1 with N: drop the intermediate shapes.
        q = onnx.load(path)
        del q.graph.value_info[:]
        onnx.save(q, path)
        digest = write_dir(args.out, variant, path)
        ops = dict(collections.Counter(n.op_type for n in q.graph.node))
        print(f"{variant}: {path} ({os.path.getsize(path):,} bytes, sha256 {digest[:12]}…) ops {ops}")


if __name__ == "__main__":
    main()
