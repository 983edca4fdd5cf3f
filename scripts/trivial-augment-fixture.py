#!/usr/bin/env python3
"""Writes tests/fixtures/trivial_augment.json: a fixed 12×10 RGB uint8 image
and what torchvision's TrivialAugmentWide ops (torchvision.transforms
._apply_op, the function TrivialAugmentWide calls) make of it at fixed
magnitudes, and AutoAugment's ImageNet policy with its magnitude table, for
src/augment/policy.rs's tests.

Run with a Python that has torch + torchvision:
  ~/.cache/tlab/venv-torch/bin/python scripts/trivial-augment-fixture.py
"""
import json
import os
import sys

import torch
import torchvision
from torchvision.transforms import InterpolationMode
from torchvision.transforms import AutoAugment, AutoAugmentPolicy
from torchvision.transforms.autoaugment import _apply_op

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "trivial_augment.json")


def main():
    g = torch.Generator().manual_seed(7)
    img = torch.randint(0, 256, (3, 10, 12), generator=g, dtype=torch.uint8)
    bins = torch.linspace(0.0, 0.99, 31)
    cases = []
    for op, magnitude in [
        ("Brightness", 0.5), ("Brightness", -0.7), ("Color", 0.9), ("Color", -0.4),
        ("Contrast", 0.6), ("Contrast", -0.5), ("Sharpness", 0.8), ("Sharpness", -0.9),
        ("Posterize", 3.0), ("Posterize", 6.0), ("Solarize", 128.0), ("Solarize", 40.0),
        ("AutoContrast", 0.0), ("Equalize", 0.0), ("TranslateX", 5.0), ("TranslateY", -3.0),
        ("Invert", 0.0),
    ]:
        out = _apply_op(img, op, magnitude, interpolation=InterpolationMode.NEAREST, fill=None)
        cases.append({"op": op, "magnitude": magnitude, "output": out.permute(1, 2, 0).flatten().tolist()})
    data = {"width": 12, "height": 10, "input": img.permute(1, 2, 0).flatten().tolist(), "cases": cases,
            "magnitude_bins": {"Brightness": bins.tolist(),
                               "Posterize": (8 - (torch.arange(31) / ((31 - 1) / 6)).round().int()).tolist()}}
    # AutoAugment's ImageNet policy and its magnitudes for this image's size.
    aa = AutoAugment(AutoAugmentPolicy.IMAGENET)
    space = aa._augmentation_space(10, (10, 12))
    data["auto_augment"] = {
        "policy": [[[op, p, m] for op, p, m in sub] for sub in aa.policies],
        "magnitudes": {op: {"values": [float(v) for v in m.reshape(-1).tolist()], "signed": signed}
                       for op, (m, signed) in space.items()},
    }
    with open(OUT, "w") as f:
        json.dump(data, f)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {os.path.normpath(OUT)} (torchvision {torchvision.__version__})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
