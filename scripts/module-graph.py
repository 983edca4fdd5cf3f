"""Prints tlab's module graph (top-level modules under src/, who uses whom
through `crate::`; the binary's `cli` through `tlab::`), in layers from the top, and fails on any cycle: among
the top-level modules, and among the module files inside each of them
(`train::fit` and `train::callbacks` may not use each other; a module and
its own parent or children are one unit and may).
Usage: python3 scripts/module-graph.py"""

import os
import re
import sys

IDENT = r"[a-z_][a-z0-9_]*"


def module_of(path):
    """`src/train/fit.rs` -> ("train", "fit"); `src/train/mod.rs` -> ("train",)."""
    parts = os.path.relpath(path, "src").removesuffix(".rs").split(os.sep)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def code(path):
    text = open(path).read()
    cut = text.find("#[cfg(test)]\nmod tests")
    text = text if cut < 0 else text[:cut]
    # Doc comments may name any module; only code makes an edge.
    return "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("//"))


files = {}
for root, _, names in os.walk("src"):
    for f in names:
        if f.endswith(".rs"):
            path = os.path.join(root, f)
            m = module_of(path)
            if m and m[0] not in ("main", "lib"):
                files[m] = code(path)
                # The binary's own modules reach the library as `tlab::`.
                if m[0] == "cli":
                    files[m] = files[m].replace("tlab::", "crate::")
modules = set(files)


def resolve(base, names):
    """The longest module prefix of `base + names`."""
    path = tuple(base) + tuple(names)
    while path and path not in modules:
        path = path[:-1]
    return path


def references(m, text):
    parent = m[:-1]
    out = set()
    for p in re.findall(rf"crate::((?:{IDENT}::)*{IDENT})", text):
        out.add(resolve((), p.split("::")))
    for p in re.findall(rf"\bsuper::((?:{IDENT}::)*{IDENT})", text):
        out.add(resolve(parent, p.split("::")))
    for group in re.findall(r"\bsuper::\{([^}]*)\}", text):
        for item in group.split(","):
            first = re.match(rf"\s*({IDENT})", item)
            if first:
                out.add(resolve(parent, [first.group(1)]))
    for p in re.findall(rf"\bself::((?:{IDENT}::)*{IDENT})", text):
        out.add(resolve(m, p.split("::")))
    return {r for r in out if r}


def layered(uses, what):
    layers, placed = [], set()
    while len(placed) < len(uses):
        layer = sorted(x for x in uses if x not in placed and uses[x] <= placed | (uses[x] - set(uses)))
        if not layer:
            left = sorted(set(uses) - placed)
            print(f"cycle among {what}: " + ", ".join(left), file=sys.stderr)
            for x in left:
                print(f"  {x} -> {', '.join(sorted(uses[x] & set(left)))}", file=sys.stderr)
            sys.exit(1)
        layers.append(layer)
        placed.update(layer)
    return layers


# Top level: who uses whom, whatever file inside says so.
top = {}
for m, text in files.items():
    top.setdefault(m[0], set()).update(r[0] for r in references(m, text) if r[0] != m[0])
layers = layered(top, "top-level modules")

# Inside each top-level module: edges between sibling files (and their
# subtrees), not between a module and its ancestors or descendants.
related = lambda a, b: a[: len(b)] == b or b[: len(a)] == a
for name in sorted(top):
    inner = {m: set() for m in modules if m[0] == name}
    for m in inner:
        for r in references(m, files[m]):
            if r[0] == name and not related(m, r):
                inner[m].add(r)
    layered({"::".join(k): {"::".join(v) for v in vs} for k, vs in inner.items()}, f"the files of `{name}`")

for depth, layer in reversed(list(enumerate(layers))):
    print(f"{depth:2}: {'  '.join(layer)}")
