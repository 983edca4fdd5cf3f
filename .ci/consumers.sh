#!/usr/bin/env bash
# What a run leaves, checked by the programs users open it with: the README's
# main command runs the quickstart, then TensorBoard's own reader loads tb/,
# headless Chromium renders report.html, and ONNX Runtime runs the exported
# model, and PyTorch + torchvision load the torchvision export. Installs what
# is missing: a venv under ~/.cache/tlab with tensorboard, onnx, onnxruntime,
# numpy and pillow (PyPI); another with torch, torchvision (a large download
# with its CUDA libraries, kept cached); Debian's chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\n== %s\n' "$*"; }

venv="${XDG_CACHE_HOME:-$HOME/.cache}/tlab/venv-tools"
if ! "$venv/bin/python" -c 'import tensorboard, onnx, onnxruntime, numpy, PIL' 2>/dev/null; then
  log "installing tensorboard, onnx, onnxruntime, numpy, pillow into $venv (PyPI)"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet tensorboard onnx onnxruntime numpy pillow
fi
torch_venv="${XDG_CACHE_HOME:-$HOME/.cache}/tlab/venv-torch"
if ! "$torch_venv/bin/python" -c 'import torch, torchvision, numpy, PIL' 2>/dev/null; then
  log "installing torch, torchvision, numpy, pillow into $torch_venv (PyPI; large, cached)"
  [ -x "$torch_venv/bin/python" ] || python3 -m venv "$torch_venv"
  "$torch_venv/bin/pip" install --quiet torch torchvision numpy pillow
fi
if ! command -v chromium >/dev/null; then
  log "installing chromium (Debian)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

log "the README's main command"
before=$(ls -d runs/quickstart-* 2>/dev/null || true)
cargo run --release --quiet -- run recipes/quickstart.toml
run=$(ls -dt runs/quickstart-* | head -n 1)
[ -n "$run" ] && ! grep -qxF "$run" <<<"$before" || { echo "the quickstart left no new run directory" >&2; exit 1; }
for f in metrics.json history.csv report.md report.html curves.png confusion.png per_class.png mistakes.png augment.png model.safetensors; do
  [ -s "$run/$f" ] || { echo "$run/$f is missing" >&2; exit 1; }
done

log "TensorBoard's EventAccumulator on $run/tb"
"$venv/bin/python" .ci/check_tensorboard.py "$run"

log "report.html in headless Chromium"
.ci/check_report_html.sh "$run" "$run/report-screenshot.png"

log "tlab export --format onnx, checked by onnx.checker and ONNX Runtime"
"$venv/bin/python" .ci/check_onnx.py target/release/tlab "$run" data/fashion-mnist-mini/valid

log "tlab export --format torchvision, loaded by PyTorch + torchvision"
"$torch_venv/bin/python" .ci/check_torch.py target/release/tlab "$run" data/fashion-mnist-mini/valid
