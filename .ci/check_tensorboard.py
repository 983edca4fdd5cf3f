"""Reads a run directory's tb/ with TensorBoard's own EventAccumulator and
checks every per-epoch scalar against history.csv, plus the images and the
recipe text. Usage: check_tensorboard.py RUN_DIR"""

import csv
import math
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run = Path(sys.argv[1])
acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
acc.Reload()
tags = acc.Tags()
rows = list(csv.DictReader(open(run / "history.csv")))
assert rows, "history.csv has no epochs"
checked = 0
for column in ["train_loss", "valid_loss", "train_accuracy", "valid_accuracy", "lr"]:
    events = acc.Scalars(f"epoch/{column}")
    assert [e.step for e in events] == list(range(1, len(rows) + 1)), (column, [e.step for e in events])
    for e, row in zip(events, rows):
        want = float(row[column])
        # Stored as float32 by TensorBoard; history.csv has 6 significant digits.
        assert math.isclose(e.value, want, rel_tol=1e-4, abs_tol=1e-6), (column, e.step, e.value, want)
        checked += 1
batches = acc.Scalars("batch/train_loss")
assert len(batches) > len(rows), "per-batch loss missing"
# The per-batch rates equal batches.csv, the trace the run directory keeps.
with open(run / "batches.csv") as f:
    trace = list(csv.DictReader(f))
lrs = acc.Scalars("batch/lr")
assert len(lrs) == len(trace) == len(batches), (len(lrs), len(trace), len(batches))
for e, row in zip(lrs, trace):
    assert math.isclose(e.value, float(row["lr"]), rel_tol=1e-5), (e.step, e.value, row)
for image in ["curves", "confusion", "per_class", "mistakes"]:
    assert image in tags["images"], (image, tags["images"])
    img = acc.Images(image)[-1]
    assert img.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and img.width > 100, image
assert "recipe" in tags["tensors"], tags["tensors"]
text = acc.Tensors("recipe")[0].tensor_proto.string_val[0].decode()
assert "kind = " in text, text[:200]
print(f"tensorboard: {checked} epoch scalars equal history.csv ({len(rows)} epochs), "
      f"{len(batches)} batch losses and rates (= batches.csv), {len(tags['images'])} images, recipe text")
