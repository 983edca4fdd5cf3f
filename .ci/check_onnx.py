"""Exports a run's model with `tlab export --format onnx` and checks it with
the real consumers: `onnx.checker` and ONNX Runtime over the whole validation
split, on exactly the inputs tlab used (`tlab predict --npy`): identical
top-1 and max |probability difference| <= 1e-4. Then runs the
ONNX Runtime example of docs/export.md on the export with preprocessing.

Usage: check_onnx.py TLAB_BINARY RUN_DIR VALID_DIR"""

import atexit
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import tlab_reference  # .ci/, beside this script

tlab, run, valid = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
work = Path(tempfile.mkdtemp(prefix="tlab-onnx-"))
# Exported models and tiny runs: gigabytes that every CI run on the same
# machine would otherwise leave in /tmp.
atexit.register(shutil.rmtree, work, ignore_errors=True)
images = sorted(str(p) for p in valid.rglob("*.png"))
assert len(images) >= 100, f"only {len(images)} validation images under {valid}"

model_path = work / "model.onnx"
subprocess.run([tlab, "export", str(run), "--format", "onnx", "--dynamic-batch", "-o", str(model_path)], check=True)
model = onnx.load(str(model_path))
onnx.checker.check_model(model, full_check=True)
meta = {p.key: p.value for p in model.metadata_props}
classes = json.loads(meta["tlab.classes"])

x, want = tlab_reference.predictions(tlab, run, images, work / "tlab")
options = ort.SessionOptions()
options.intra_op_num_threads = 2
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
logits, probs = session.run(["logits", "probabilities"], {"input": x})
diff = tlab_reference.agree(probs, want, "ONNX Runtime")
print(f"onnx: checker ok; ONNX Runtime {ort.__version__} agrees with tlab on {len(images)} images "
      f"(top-1 identical, max |prob diff| {diff:.1e}), {len(classes)} classes")

# The export with preprocessing takes the uint8 pixels themselves.
pre_path = work / "model-pre.onnx"
subprocess.run([tlab, "export", str(run), "--format", "onnx", "--dynamic-batch", "--with-preprocessing",
                "-o", str(pre_path)], check=True, stdout=subprocess.DEVNULL)
onnx.checker.check_model(onnx.load(str(pre_path)), full_check=True)
mean = np.array(json.loads(meta["tlab.mean"]), dtype=np.float32)[None, :, None, None]
std = np.array(json.loads(meta["tlab.std"]), dtype=np.float32)[None, :, None, None]
pixels = np.rint((x * std + mean) * 255.0).clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
pre = ort.InferenceSession(str(pre_path), options, providers=["CPUExecutionProvider"])
probs_pre = pre.run(["probabilities"], {"input": pixels})[0]
diff_pre = float(np.abs(probs_pre - want).max())
assert (probs_pre.argmax(1) == want.argmax(1)).all() and diff_pre <= 1e-4, diff_pre
print(f"onnx: --with-preprocessing on uint8 NHWC pixels agrees too (max |prob diff| {diff_pre:.1e})")

# docs/export.md's example, as a user pastes it, on that export and one image.
page = (Path(__file__).resolve().parent.parent / "docs" / "export.md").read_text()
example = re.search(r"<!-- onnx-example -->\s*```python\n(.*?)```", page, re.S).group(1)
(work / "image.png").write_bytes(Path(images[0]).read_bytes())
(work / "model.onnx").write_bytes(pre_path.read_bytes())
out = subprocess.run([sys.executable, "-c", example], cwd=work, check=True, capture_output=True, text=True).stdout
predicted = out.split()[0]
assert predicted in classes, out
print(f"onnx: the docs/export.md example runs: {out.strip()}")

# Inception v3 with the Keras tutorial's head (flatten, dense, softmax): its
# branches, average pools with counted padding, concatenations and
# transform_input; and a Vision Transformer (DeiT-S at 64 px, its position
# embedding resampled from 14 x 14 to 4 x 4): patches, the class token,
# attention as MatMul + Softmax, LayerNorm and GELU. Tiny runs (random init,
# one epoch), each exported and run by ONNX Runtime.
for arch, size, head, last in [("inception_v3", 80, 'pooling = "flatten"\nhidden = [16]', "Mixed_7c"),
                               ("deit_small_patch16_224", 64, 'pooling = "avg"', "blocks.11")]:
    d = work / arch
    d.mkdir()
    data = valid.resolve()
    (d / "r.toml").write_text(
        f'name = "{arch}"\n[data]\ntrain = "{data}"\nvalid = "{data}"\nimage_size = {size}\nmax_per_class = 3\n'
        f'[[step]]\nkind = "backbone"\narch = "{arch}"\n{head}\n'
        f'[[step]]\nkind = "freeze"\nup_to = "{last}"\n[[step]]\nkind = "fine_tune"\nepochs = 1\n')
    subprocess.run([tlab, "run", str(d / "r.toml"), "--out", str(d / "run")], check=True, stdout=subprocess.DEVNULL)
    path = d / "model.onnx"
    subprocess.run([tlab, "export", str(d / "run"), "--format", "onnx", "--dynamic-batch", "-o", str(path)],
                   check=True, stdout=subprocess.DEVNULL)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    x, want = tlab_reference.predictions(tlab, d / "run", images[:24], d / "tlab")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    diff = tlab_reference.agree(session.run(["probabilities"], {"input": x})[0], want, f"ONNX Runtime ({arch})")
    print(f"onnx: {arch} ({head.splitlines()[0]}) agrees with tlab on 24 images (max |prob diff| {diff:.1e})")
