"""Prints tlab's module graph (top-level modules under src/, who uses whom
through `crate::`), in layers from the top, and fails on any cycle.
Usage: python3 scripts/module-graph.py"""

import os
import re
import sys

uses = {}
for root, _, files in os.walk("src"):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(root, f)
        top = os.path.relpath(path, "src").split(os.sep)[0].removesuffix(".rs")
        if top in ("main", "lib"):
            continue
        text = open(path).read()
        cut = text.find("#[cfg(test)]\nmod tests")
        text = text if cut < 0 else text[:cut]
        uses.setdefault(top, set()).update(m for m in re.findall(r"crate::([a-z_]+)", text) if m != top)

layers, placed = [], set()
while len(placed) < len(uses):
    layer = sorted(m for m in uses if m not in placed and uses[m] <= placed | (uses[m] - set(uses)))
    if not layer:
        left = sorted(set(uses) - placed)
        print("cycle among: " + ", ".join(left), file=sys.stderr)
        for m in left:
            print(f"  {m} -> {', '.join(sorted(uses[m] & set(left)))}", file=sys.stderr)
        sys.exit(1)
    layers.append(layer)
    placed.update(layer)
for depth, layer in reversed(list(enumerate(layers))):
    print(f"{depth:2}: {'  '.join(layer)}")
