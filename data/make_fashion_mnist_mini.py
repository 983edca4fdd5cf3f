#!/usr/bin/env python3
"""Builds data/fashion-mnist-mini from Debian's dataset-fashion-mnist (MIT).

A class-balanced subset as PNG files in the folder-per-class layout:
  fashion-mnist-mini/train/<class>/train-NNNNN.png   (first N_TRAIN of each class in the training set)
  fashion-mnist-mini/valid/<class>/t10k-NNNNN.png    (first N_VALID of each class in the test set)
NNNNN is the image's index in the source IDX file, so every file is traceable.

Standard library only (gzip + zlib PNG writer), deterministic output.
Usage: python3 data/make_fashion_mnist_mini.py [SOURCE_DIR] [OUT_DIR]
"""
import gzip
import os
import struct
import sys
import zlib

CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
N_TRAIN, N_VALID = 100, 30


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise SystemExit(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]


def png_grey(width, height, pixels):
    raw = b"".join(b"\x00" + pixels[y * width:(y + 1) * width] for y in range(height))
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def export(src, prefix, split, per_class, out):
    (n, h, w), images = read_idx(os.path.join(src, f"{prefix}-images-idx3-ubyte.gz"))
    (nl,), labels = read_idx(os.path.join(src, f"{prefix}-labels-idx1-ubyte.gz"))
    assert n == nl, "images and labels disagree"
    counts = [0] * len(CLASSES)
    for i in range(n):
        c = labels[i]
        if counts[c] >= per_class:
            continue
        counts[c] += 1
        d = os.path.join(out, split, CLASSES[c])
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{prefix}-{i:05d}.png"), "wb") as f:
            f.write(png_grey(w, h, images[i * h * w:(i + 1) * h * w]))
        if all(k >= per_class for k in counts):
            break
    print(f"{split}: {sum(counts)} images, {per_class} per class")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    src = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "fashion-mnist-mini")
    export(src, "train", "train", N_TRAIN, out)
    export(src, "t10k", "valid", N_VALID, out)


if __name__ == "__main__":
    main()
