#!/usr/bin/env python3
"""Writes tests/fixtures/schedules.json: per-step learning rates (and momentum
or beta1) from PyTorch's own schedulers, for the recipes tlab's schedule test
replays (src/train/schedule.rs).

Run with a Python that has torch:  ~/.cache/tlab/venv-torch/bin/python scripts/schedule-fixture.py
"""
import json
import os
import sys

import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "schedules.json")


def trace(opt, sched, steps, batches, fractional_epoch=False, momentum=None):
    lrs, moms = [], []
    for i in range(steps):
        g = opt.param_groups[0]
        lrs.append(g["lr"])
        if momentum == "momentum":
            moms.append(g["momentum"])
        elif momentum == "beta1":
            moms.append(g["betas"][0])
        opt.step()
        if fractional_epoch:
            sched.step((i + 1) / batches)
        else:
            sched.step()
    return lrs, moms


def params():
    return [torch.nn.Parameter(torch.zeros(1))]


def main():
    cases = []
    # One-cycle with SGD: momentum cycles between 0.85 and 0.95.
    epochs, batches = 3, 7
    opt = torch.optim.SGD(params(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.01, total_steps=epochs * batches, pct_start=0.25, div_factor=25.0,
        final_div_factor=1e5, base_momentum=0.85, max_momentum=0.95)
    lr, mom = trace(opt, sched, epochs * batches, batches, momentum="momentum")
    cases.append({"recipe": 'epochs = 3\noptimizer = "sgd"\nlr = 0.01\nschedule = "one_cycle"',
                  "batches": batches, "lr": lr, "momentum": mom})
    # One-cycle with AdamW, PyTorch's own defaults spelt out; beta1 cycles.
    epochs, batches = 4, 5
    opt = torch.optim.AdamW(params(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=epochs * batches, pct_start=0.3, div_factor=10.0,
        final_div_factor=1e4, base_momentum=0.8, max_momentum=0.9)
    lr, mom = trace(opt, sched, epochs * batches, batches, momentum="beta1")
    cases.append({"recipe": 'epochs = 4\noptimizer = "adamw"\nlr = 3e-3\nschedule = "one_cycle"\npct_start = 0.3\n'
                            'div_factor = 10\nfinal_div_factor = 1e4\nbase_momentum = 0.8\nmax_momentum = 0.9',
                  "batches": batches, "lr": lr, "momentum": mom})
    # Cosine with warm restarts, stepped with the fractional epoch as PyTorch documents.
    epochs, batches = 7, 5
    opt = torch.optim.SGD(params(), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=2, eta_min=1e-4)
    lr, _ = trace(opt, sched, epochs * batches, batches, fractional_epoch=True)
    cases.append({"recipe": 'epochs = 7\noptimizer = "sgd"\nlr = 0.1\nschedule = "cosine_restarts"\n'
                            'restart_epochs = 1\nrestart_mult = 2\nmin_lr = 1e-4',
                  "batches": batches, "lr": lr})
    # Plain cosine over every batch.
    epochs, batches = 3, 4
    opt = torch.optim.Adam(params(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * batches, eta_min=1e-5)
    lr, _ = trace(opt, sched, epochs * batches, batches)
    cases.append({"recipe": 'epochs = 3\nlr = 1e-3\nschedule = "cosine"\nmin_lr = 1e-5',
                  "batches": batches, "lr": lr})
    with open(OUT, "w") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} schedules to {os.path.normpath(OUT)} (torch {torch.__version__})", file=sys.stderr)


if __name__ == "__main__":
    main()
