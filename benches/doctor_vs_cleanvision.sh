#!/usr/bin/env bash
# The data doctor beside its anchor: CleanVision 0.3.7 (PyPI) and
# `tlab data --json` on the same folder, counts per issue type side by side.
# With no argument it runs on a copy of the shipped Fashion-MNIST subset with
# three training images planted in valid (one resized, one re-encoded as
# JPEG, one resized and re-encoded) and one corrupt file.
#   benches/doctor_vs_cleanvision.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=~/.cache/tlab/venv-cleanvision
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet cleanvision==0.3.7
fi
cargo build --release --quiet
dir=${1:-}
if [ -z "$dir" ]; then
  dir=$(mktemp -d)/fashion-planted
  cp -r data/fashion-mnist-mini "$dir"
  "$venv/bin/python" - "$dir" <<'PY'
import sys
from pathlib import Path
from PIL import Image
d = Path(sys.argv[1])
src = sorted((d / "train" / "bag").glob("*.png"))
Image.open(src[0]).resize((56, 56), Image.BILINEAR).save(d / "valid/bag/planted-resized.png")
Image.open(src[1]).convert("RGB").save(d / "valid/bag/planted-reencoded.jpg", quality=90)
Image.open(src[2]).resize((42, 42), Image.BICUBIC).convert("RGB").save(d / "valid/bag/planted-both.jpg", quality=85)
(d / "valid/bag/planted-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
print("planted 3 copies and 1 corrupt file in", d / "valid/bag")
PY
fi
out=$(mktemp -d)
"$venv/bin/python" - "$dir" "$out/cleanvision.json" <<'PY'
import json, sys
from pathlib import Path
from PIL import Image
from cleanvision import Imagelab
# CleanVision 0.3.7 stops with a traceback on a file PIL cannot open, so it
# gets the readable ones only (tlab reports the others as unreadable).
def readable(p):
    try:
        Image.open(p).verify()
        return True
    except Exception:
        return False
files = sorted(str(p) for p in Path(sys.argv[1]).rglob("*") if p.is_file() and readable(p))
lab = Imagelab(filepaths=files)
lab.find_issues(verbose=False)
s = lab.issue_summary.set_index("issue_type")["num_images"].to_dict()
sets = {k: [sorted(g) for g in lab.info[k]["sets"]] for k in ("exact_duplicates", "near_duplicates")}
json.dump({"counts": {k: int(v) for k, v in s.items()}, "sets": sets}, open(sys.argv[2], "w"))
PY
for bits in 0 4; do
  target/release/tlab data "$dir" --json --near-bits $bits --out "$out/tlab-$bits" > "$out/tlab-$bits.json"
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
cv = json.load(open(f"{out}/cleanvision.json"))
t = {b: json.load(open(f"{out}/tlab-{b}.json")) for b in (0, 4)}
def counts(d):
    c = dict(d["issue_counts"])
    c["unreadable"] = len(d["unreadable"])
    return c
print(f"{'issue':<18} {'CleanVision':>11} {'tlab':>6} {'tlab --near-bits 4':>19}")
for k in ["exact_duplicates", "near_duplicates", "dark", "light", "low_information", "blurry",
          "odd_aspect_ratio", "odd_size", "grayscale", "tiny", "unreadable"]:
    print(f"{k:<18} {cv['counts'].get(k, '-')!s:>11} {counts(t[0]).get(k, '-')!s:>6} {counts(t[4]).get(k, '-')!s:>19}")
for b in (0, 4):
    planted = [s for s in t[b]["duplicates"] if any("planted" in p for p in s["paths"])]
    print(f"tlab --near-bits {b}: {len(planted)} duplicate set(s) with a planted copy, "
          f"{sum(s['across_splits'] for s in planted)} across splits; unreadable: "
          + ", ".join(p.split('/')[-1] for p, _ in t[b]["unreadable"]))
planted_cv = [g for k in ("exact_duplicates", "near_duplicates") for g in cv["sets"][k] if any("planted" in p for p in g)]
print(f"CleanVision: {len(planted_cv)} duplicate set(s) with a planted copy")
PY
