"""What the consumer checks share: tlab's own inputs and probabilities for a
set of images (`tlab predict --npy`), and the comparison every consumer must
pass against them (identical top-1, max |probability difference| <= 1e-4)."""

import subprocess

import numpy as np


def predictions(tlab, run, images, prefix):
    """(inputs, probabilities) exactly as tlab computed them for `images`."""
    subprocess.run([tlab, "predict", "--model", str(run), "--top", "1", "--npy", str(prefix), *images],
                   check=True, stdout=subprocess.DEVNULL)
    return np.load(f"{prefix}-inputs.npy"), np.load(f"{prefix}-probs.npy")


def agree(probs, want, what):
    """The max |prob diff| of a consumer's `probs` against tlab's `want`; fails on any top-1 difference."""
    diff = float(np.abs(probs - want).max())
    same = int((probs.argmax(1) == want.argmax(1)).sum())
    assert same == len(want), f"{what}: top-1 differs on {len(want) - same} of {len(want)} images"
    assert diff <= 1e-4, f"{what}: max |prob diff| {diff:.2e} > 1e-4"
    return diff
