#!/usr/bin/env python3
"""Writes data/fashion-mnist-mini/labels.csv: the shipped images as CSV rows
`path,label,split` for recipes/fashion-csv.toml. Training images keep the
`train` split; of each class's 30 validation images the first 15 (by name)
become `valid` and the other 15 `test`, so the recipe has a test split."""
import os

ROOT = os.path.join(os.path.dirname(__file__), "..", "data", "fashion-mnist-mini")


def main():
    rows = ["path,label,split"]
    for split in ("train", "valid"):
        for label in sorted(os.listdir(os.path.join(ROOT, split))):
            names = sorted(os.listdir(os.path.join(ROOT, split, label)))
            for i, name in enumerate(names):
                which = split if split == "train" else ("valid" if i < len(names) // 2 else "test")
                rows.append(f"{split}/{label}/{name},{label},{which}")
    with open(os.path.join(ROOT, "labels.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    print(f"wrote {len(rows) - 1} rows")


if __name__ == "__main__":
    main()
