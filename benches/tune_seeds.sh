#!/usr/bin/env bash
# `tlab tune` measured as issue 30 asks: the same recipe tuned at several
# seeds (the recipe's `seed` line changed in a copy, which also moves the
# inner split and the sampler), each with the same budget, then the tuned
# recipe's accuracy on valid (final/metrics.json) per seed, with the mean and
# the spread. Not a test: it takes seeds x budget plus the final runs.
#
#   benches/tune_seeds.sh RECIPE BUDGET SEED... (e.g. recipes/quickstart.toml 15m 42 1 2)
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=$1 budget=$2
shift 2
name=$(basename "$recipe" .toml)
out=target/tune-seeds/$name-$budget
mkdir -p "$out"
cargo build --release --quiet
for seed in "$@"; do
  copy="$out/$name-seed$seed.toml"
  dir=$(cd "$(dirname "$recipe")" && pwd)
  sed -e "s/^seed = .*/seed = $seed/" -e "s|\"\.\./|\"$dir/../|g" "$recipe" >"$copy"
  grep -q "^seed = $seed\$" "$copy" || { echo "$recipe has no top-level seed line" >&2; exit 1; }
  rm -rf "$out/seed$seed"
  ./target/release/tlab tune "$copy" --budget "$budget" --out "$out/seed$seed" >"$out/seed$seed.log" 2>&1
  trials=$(($(wc -l <"$out/seed$seed/tune.csv") - 1))
  acc=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['accuracy'])" "$out/seed$seed/final/metrics.json")
  echo "seed $seed: $trials trial-rungs, tuned recipe accuracy on valid $acc"
done | tee "$out/summary.txt"
python3 - "$out/summary.txt" <<'PY'
import re, statistics, sys
accs = [float(m) for m in re.findall(r"valid ([0-9.]+)", open(sys.argv[1]).read())]
if accs:
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"mean {statistics.mean(accs):.4f}  sd {sd:.4f}  over {len(accs)} seed(s)")
PY
