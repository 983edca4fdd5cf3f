#!/usr/bin/env python3
"""Side-by-side benchmark: tlab against PyTorch on the same cases.

Each case runs the same model, batch, input size and trainable set in tlab
(`tlab bench …`, a release build) and in PyTorch (CPU, same thread count),
alternating A/B `--rounds` times; the script prints the median images/s of
each and the median ratio tlab / PyTorch. Timing is a measurement, never a
test assertion: machines are shared and noisy, quote medians and ratios.

Usage:
  cargo build --release
  python3 benches/side_by_side.py [--rounds 3] [--threads 2] [--quick]
PyTorch comes from PyPI into a venv (~/.cache/tlab/venv-bench) the first time;
set TORCH_PYTHON to an interpreter that already has torch + torchvision.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap

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
]

TORCH_CASE = textwrap.dedent('''
    import json, statistics, sys, time, torch, torchvision
    case = json.loads(sys.argv[1]); threads = int(sys.argv[2]); iters = int(sys.argv[3]); warmup = int(sys.argv[4])
    torch.set_num_threads(threads)
    m = getattr(torchvision.models, case["arch"])()
    if case["arch"] == "mobilenet_v2":
        backbone = m.features
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
        if case["arch"] != "mobilenet_v2":
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
    venv = os.path.expanduser("~/.cache/tlab/venv-bench")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", venv])
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", "torch", "torchvision"])
    return py


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="only the first two cases")
    args = ap.parse_args()
    if not os.path.exists(TLAB):
        sys.exit("build tlab first: cargo build --release")
    py = torch_python()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    rows = []
    for name, targs, tcase in (CASES[:2] if args.quick else CASES):
        ours, theirs = [], []
        for _ in range(args.rounds):  # alternate A/B so drift hits both
            out = subprocess.check_output([TLAB, "bench", *targs, "--iters", str(args.iters), "--warmup", str(args.warmup)], env=env)
            ours.append(json.loads(out)["images_per_sec"])
            out = subprocess.check_output([py, "-c", TORCH_CASE, json.dumps(tcase), str(args.threads), str(args.iters), str(args.warmup)])
            theirs.append(json.loads(out)["images_per_sec"])
        ratio = statistics.median(a / b for a, b in zip(ours, theirs))
        rows.append((name, statistics.median(ours), statistics.median(theirs), ratio))
        print(f"{name:<44} tlab {rows[-1][1]:8.1f} img/s   torch {rows[-1][2]:8.1f} img/s   ratio {ratio:.2f}", flush=True)
    print("\n| case | tlab img/s | PyTorch img/s | tlab / PyTorch |\n|---|---|---|---|")
    for name, a, b, r in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {r:.2f}× |")


if __name__ == "__main__":
    main()
