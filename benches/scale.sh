#!/usr/bin/env bash
# The scale benchmark (issue 27): the quickstart recipe, retargeted to 224 px,
# on a synthetic folder data set larger than tlab's memory budget, so the
# images stream from disk and the frozen features go to the disk cache.
#
#   benches/scale.sh [PER_CLASS] [BUDGET_MB]      (defaults: 1500, 1024)
#
# 20 classes x PER_CLASS JPEGs (benches/scale_data.py, a fifth of them in
# valid) are written once under $SCALE_DIR (default /tmp/tlab-scale-PER).
# It prints, and writes to $SCALE_DIR/scale.json:
# - the streaming run's wall time, peak RSS against budget + model + 300 MB,
#   CPU use (200 % is both cores busy), accuracy, and the decode and
#   training throughputs from its profile;
# - head-training epochs (first fine_tune) from the disk feature cache
#   against the same epochs with the cache in memory, on the shipped
#   quickstart (which fits), medians of 3 runs each.
# Needs numpy and Pillow for the generator: TORCH_PYTHON (the PyTorch venv
# of benches/side_by_side.py has both), else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PER=${1:-1500}
BUDGET=${2:-1024}
PY=${TORCH_PYTHON:-python3}
DIR=${SCALE_DIR:-/tmp/tlab-scale-$PER}
cargo build --release --quiet
TLAB=$PWD/target/release/tlab
if [ ! -d "$DIR/data/train" ]; then
  "$PY" benches/scale_data.py "$DIR/data" --per-class "$PER"
fi
WEIGHTS=$PWD/assets/weights/mobilenet_v2.safetensors
sed -e "s|^train = .*|train = \"data/train\"|" -e "s|^valid = .*|valid = \"data/valid\"|" \
    -e "s|^image_size = .*|image_size = 224|" -e "s|^weights = .*|weights = \"$WEIGHTS\"|" \
    -e "s|^name = .*|name = \"scale\"|" recipes/quickstart.toml > "$DIR/scale.toml"
rm -rf "$DIR/features" "$DIR/run-stream"
TLAB_MEMORY_BUDGET_MB=$BUDGET TLAB_PROFILE=1 TLAB_FEATURE_CACHE_DIR="$DIR/features" \
  /usr/bin/time -v -o "$DIR/time.txt" "$TLAB" run "$DIR/scale.toml" --out "$DIR/run-stream" > "$DIR/stream.log" 2>&1

# Head epochs from the disk cache against memory, on the quickstart.
for mode in memory disk; do
  for i in 1 2 3; do
    rm -rf "$DIR/head-$mode-$i" "$DIR/features-head"
    cache=auto
    [ "$mode" = disk ] && cache=disk
    TLAB_FEATURE_CACHE=$cache TLAB_FEATURE_CACHE_DIR="$DIR/features-head" \
      "$TLAB" run recipes/quickstart.toml --out "$DIR/head-$mode-$i" > /dev/null
  done
done

python3 - "$DIR" "$BUDGET" <<'EOF'
import csv, json, re, statistics, sys
from pathlib import Path
d, budget = Path(sys.argv[1]), int(sys.argv[2])
time = (d / "time.txt").read_text()
rss_mb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", time).group(1)) / 1024
cpu = re.search(r"Percent of CPU this job got: (\d+)%", time).group(1)
wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", time).group(1)
log = (d / "stream.log").read_text()
listed = re.search(r"listed (\d+) train \+ (\d+) valid", log)
acc = json.loads((d / "run-stream" / "metrics.json").read_text())["accuracy"]
prof = {p["phase"]: p for p in json.loads((d / "run-stream" / "profile.json").read_text())["phases"]}
model_mb = (Path("assets/weights/mobilenet_v2.safetensors").stat().st_size) / 2**20
train, valid = int(listed.group(1)), int(listed.group(2))
history = list(csv.DictReader(open(d / "run-stream" / "history.csv")))
tail = [r for r in history if r["step"] != history[0]["step"]]
# The second fine_tune decodes and augments live through the unfrozen tail.
decode = prof.get("decode images", {})
def head_epoch(mode):
    runs = []
    for i in (1, 2, 3):
        rows = list(csv.DictReader(open(d / f"head-{mode}-{i}" / "history.csv")))
        first = [float(r["seconds"]) for r in rows if r["step"] == rows[0]["step"]]
        runs.append(statistics.median(first))
    return statistics.median(runs)
mem, disk = head_epoch("memory"), head_epoch("disk")
out = {
    "images": {"train": train, "valid": valid},
    "budget_mb": budget,
    "peak_rss_mb": round(rss_mb),
    "rss_limit_mb": round(budget + model_mb + 300),
    "cpu_percent": int(cpu),
    "wall": wall,
    "accuracy": acc,
    "decode_seconds_summed_over_threads": round(decode.get("seconds", 0.0), 1),
    "decoded_images": decode.get("calls", 0),
    "decode_images_per_second_per_thread": round(decode.get("calls", 0) / max(decode.get("seconds", 1e-9), 1e-9), 1),
    "second_phase_epoch_seconds": [float(r["seconds"]) for r in tail],
    "second_phase_train_images_per_second": [round(train / float(r["seconds"]), 1) for r in tail],
    "head_epoch_seconds_memory": mem,
    "head_epoch_seconds_disk_cache": disk,
    "disk_over_memory_speed": round(mem / disk, 2),
}
(d / "scale.json").write_text(json.dumps(out, indent=2))
print(json.dumps(out, indent=2))
EOF
