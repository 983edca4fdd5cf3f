"""Exports run models with `tlab export --format torchvision` and loads them
the way a PyTorch user does: the quickstart's MobileNetV2 into
`torchvision.models.mobilenet_v2(num_classes=10)` with strict=True, compared
with `tlab predict` over the whole validation split on exactly tlab's inputs
(identical top-1, max |probability difference| <= 1e-4); a ResNet-18, a
VGG-16 with a hidden head layer and a MobileNetV2 with fastai's BatchNorm head
(built by the printed snippets) likewise on a tiny run; then the PyTorch example of docs/export.md as a user pastes it.

Usage: check_torch.py TLAB_BINARY RUN_DIR VALID_DIR"""

import atexit
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torchvision

import tlab_reference  # .ci/, beside this script

torch.set_num_threads(2)
tlab, run, valid = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
work = Path(tempfile.mkdtemp(prefix="tlab-torch-"))
# Exported models and tiny runs: gigabytes that every CI run on the same
# machine would otherwise leave in /tmp.
atexit.register(shutil.rmtree, work, ignore_errors=True)
images = sorted(str(p) for p in valid.rglob("*.png"))
assert len(images) >= 100, f"only {len(images)} validation images under {valid}"


def check(run_dir, images, what):
    pth = work / f"{run_dir.name}.pth"
    out = subprocess.run([tlab, "export", str(run_dir), "--format", "torchvision", "-o", str(pth)],
                         check=True, capture_output=True, text=True).stdout
    # The lines tlab prints after "load it in PyTorch with:" are the loader.
    loader = out.split("load it in PyTorch with:\n", 1)[1]
    scope = {}
    exec(loader, scope)
    model = scope["model"]
    x, want = tlab_reference.predictions(tlab, run_dir, images, work / run_dir.name)
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    diff = tlab_reference.agree(probs, want, what)
    print(f"torch: {what} loads with strict=True and agrees with tlab on {len(images)} images "
          f"(top-1 identical, max |prob diff| {diff:.1e})")


check(run, images, "the quickstart's mobilenet_v2")

# Other heads and architectures, on a tiny run each (random init, one epoch).
data = valid.resolve()
for arch, head in [("resnet18", ""), ("vgg16", "hidden = [16]\n"),
                   ("mobilenet_v2", "hidden = [16]\nbatchnorm = true\n"), ("inception_v3", ""),
                   ("inception_v3", "hidden = [16]\n"), ("mobilenet_v3_small", ""), ("mobilenet_v3_large", ""),
                   ("efficientnet_b0", ""), ("efficientnet_v2_s", "hidden = [16]\n"),
                   ("convnext_tiny", "")]:
    d = work / f"{arch}-{len(head)}"
    d.mkdir()
    size = 80 if arch == "inception_v3" else 32  # Inception needs 75 px or more
    (d / "r.toml").write_text(
        f'name = "{arch}"\n[data]\ntrain = "{data}"\nvalid = "{data}"\nimage_size = {size}\nmax_per_class = 3\n'
        f'[[step]]\nkind = "backbone"\narch = "{arch}"\n{head}[[step]]\nkind = "freeze"\nup_to = 2\n'
        f'[[step]]\nkind = "fine_tune"\nepochs = 1\n')
    subprocess.run([tlab, "run", str(d / "r.toml"), "--out", str(d / "run")], check=True, stdout=subprocess.DEVNULL)
    label = head.strip().replace("\n", ", ") or "linear head"
    check(d / "run", images[:24], f"a {arch} ({label})")

# docs/export.md's example, as a user pastes it, on the quickstart's export.
page = (Path(__file__).resolve().parent.parent / "docs" / "export.md").read_text()
example = re.search(r"<!-- torch-example -->\s*```python\n(.*?)```", page, re.S).group(1)
subprocess.run([tlab, "export", str(run), "--format", "torchvision", "-o", str(work / "model.pth")],
               check=True, stdout=subprocess.DEVNULL)
(work / "image.png").write_bytes(Path(images[0]).read_bytes())
out = subprocess.run([sys.executable, "-c", example], cwd=work, check=True, capture_output=True, text=True).stdout
assert out.split()[0].isdigit(), out
print(f"torch: the docs/export.md example runs: {out.strip()}")
