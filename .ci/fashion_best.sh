#!/usr/bin/env bash
# The training-tools recipe (docs/training-tools.md), run as a user runs it, beside the
# quickstart: every tool it names runs end to end in a release build
# (lr_find, freeze_epochs with discriminative rates, one-cycle, RandAugment,
# mixup, EMA, TTA), and over three seeds it is not behind the quickstart.
#
# Why three seeds and a mean, not one seed: the GEMM and the kernels take a
# different SIMD path on each machine kind (AVX-512 or AVX2), so the same seed
# gives different bits, and a different winner, on different CPUs. At seed 42
# an AVX-512 Xeon had both recipes at exactly 0.8700, where the AVX2 EPYC had
# fashion-best 3.3 points ahead. Over seeds 1-6 on the EPYC (the table in
# docs/training-tools.md) fashion-best led by 2.7 points on the mean, the per-seed lead
# spreading with a standard deviation of 1.1 points; the mean of three paired
# seeds then has a standard error of about 0.65 points, so a mean lead below
# zero is four standard errors under the measured one: a regression, not noise.
set -euo pipefail
cd "$(dirname "$0")/.."

seeds=(42 1 2)
out=target/ci-fashion-best
rm -rf "$out"
mkdir -p "$out/recipes"

# A recipe at another seed, as a user makes one: a copy with its seed line
# changed. The copy lives elsewhere, so its relative paths are made absolute.
seeded() { # NAME SEED -> path of the copy
  local copy="$out/recipes/$1-seed$2.toml"
  sed -e "s/^seed = .*/seed = $2/" -e "s|\"\.\./|\"$PWD/|g" "recipes/$1.toml" >"$copy"
  grep -q "^seed = $2\$" "$copy" || { echo "recipes/$1.toml has no top-level seed line to change" >&2; exit 1; }
  echo "$copy"
}

for seed in "${seeds[@]}"; do
  if [ "$seed" = 42 ]; then
    # The recipes' own seed: the command lines the README gives.
    quick=$(ls -dt runs/quickstart-* 2>/dev/null | head -n 1 || true)
    if [ -z "$quick" ]; then
      cargo run --release --quiet -- run recipes/quickstart.toml --out "$out/quickstart-seed42" >/dev/null
      quick="$out/quickstart-seed42"
    else
      mkdir -p "$out/quickstart-seed42" && cp "$quick/metrics.json" "$out/quickstart-seed42/"
    fi
    cargo run --release --quiet -- run recipes/fashion-best.toml --out "$out/fashion-best-seed42" >/dev/null
  else
    q=$(seeded quickstart "$seed")
    b=$(seeded fashion-best "$seed")
    cargo run --release --quiet -- run "$q" --out "$out/quickstart-seed$seed" >/dev/null
    cargo run --release --quiet -- run "$b" --out "$out/fashion-best-seed$seed" >/dev/null
  fi
done

for f in lr_find.png lr_find.csv batches.csv augment.png metrics.json model.safetensors; do
  [ -s "$out/fashion-best-seed42/$f" ] || { echo "$out/fashion-best-seed42/$f is missing" >&2; exit 1; }
done

python3 - "$out" "${seeds[@]}" <<'PY'
import json, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
acc = lambda name, s: json.load(open(f"{out}/{name}-seed{s}/metrics.json"))["accuracy"]
quick = [acc("quickstart", s) for s in seeds]
best = [acc("fashion-best", s) for s in seeds]
for s, q, b in zip(seeds, quick, best):
    print(f"seed {s:>2}: quickstart {q:.4f}, fashion-best {b:.4f} ({100 * (b - q):+.1f} points)")
lead = 100 * (statistics.mean(best) - statistics.mean(quick))
print(f"mean over seeds {', '.join(seeds)}: quickstart {statistics.mean(quick):.4f}, "
      f"fashion-best {statistics.mean(best):.4f} ({lead:+.2f} points)")
if lead < 0:
    sys.exit(f"{out}: fashion-best's mean accuracy over seeds {', '.join(seeds)} is {-lead:.2f} points behind the "
             "quickstart's; docs/training-tools.md's table has it 2.7 points ahead on the mean "
             "(per-seed spread 1.1 points), so a mean below the quickstart's is a regression")
PY
