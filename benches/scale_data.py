#!/usr/bin/env python3
"""Writes a synthetic folder data set for the scale benchmark (benches/scale.sh).

    python3 benches/scale_data.py OUT [--classes 20] [--per-class 1500] [--seed 0]

OUT/train/<class>/*.jpg and OUT/valid/<class>/*.jpg (a fifth of each class),
JPEGs of 256-640 px a side with random aspect ratios. Each class is a texture
a frozen ImageNet backbone separates easily: stripes at the class's own angle
and frequency, in the class's own colour, each image with its own phase,
contrast, brightness and noise. Needs numpy and Pillow (the benchmark runs it
with the PyTorch venv's Python, which has both).
"""

import argparse
import colorsys
import math
import os

import numpy as np
from PIL import Image


def texture(cls: int, classes: int, rng: np.random.Generator) -> Image.Image:
    w, h = (int(v) for v in rng.integers(256, 641, size=2))
    angle = math.pi * cls / classes
    freq = (4 + 3 * (cls % 4)) / 256 * 2 * math.pi  # cycles per 256 px
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    along = x * math.cos(angle) + y * math.sin(angle)
    wave = np.sin(along * freq + rng.uniform(0, 2 * math.pi))
    level = 0.5 + rng.uniform(0.25, 0.45) * wave + rng.normal(0, 0.08, size=(h, w))
    level = np.clip(level * rng.uniform(0.8, 1.1), 0, 1)
    r, g, b = colorsys.hsv_to_rgb(cls / classes, 0.6, 1.0)
    rgb = np.stack([level * r, level * g, level * b], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--per-class", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    for c in range(args.classes):
        name = f"class{c:02d}"
        n_valid = args.per_class // 5
        for i in range(args.per_class):
            split = "valid" if i < n_valid else "train"
            folder = os.path.join(args.out, split, name)
            os.makedirs(folder, exist_ok=True)
            texture(c, args.classes, rng).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
    print(f"{args.classes} classes x {args.per_class} images in {args.out}")


if __name__ == "__main__":
    main()
