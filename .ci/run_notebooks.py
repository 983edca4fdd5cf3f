#!/usr/bin/env python3
"""Executes Jupyter notebooks with a real client (nbclient) on the evcxr Rust
kernel and fails loudly on anything that looks like an error.

A notebook fails when
  * the kernel cannot start, dies, or a cell times out;
  * any cell has an `error` output (evcxr reports compile errors and a dead
    child process — e.g. a panic under the aborting hook — this way);
  * any cell writes to its stderr stream. evcxr reports a top-level `?` that
    returned an error only there (the error's Debug text, no error output, the
    cell "succeeds"), and a panic's message too; no cell of a passing notebook
    writes anything else there;
  * a cell that must fail does not, or fails with another message. Such a cell
    carries nbclient's `raises-exception` tag (so the notebook runs on after a
    panic too) and the message it must show in its metadata,
    `"tlab": {"expect_error": "text"}`: the text must appear in its error
    output or on its stderr (where a top-level `?` shows it).

Each notebook runs from its own folder, so `:dep tlab = { path = ".." }` and
relative data paths resolve as they do for a reader. With --write the executed
notebook (outputs included) replaces the file. Prints the wall time of every
cell; exit status 0 only if every notebook passed.
"""

import argparse
import os
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import output_from_msg
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

# evcxr forwards the child's stdout/stderr lines from a separate thread, so a
# line can reach iopub *after* the cell's "idle" status; nbclient stops
# listening at "idle" and would drop it (on a loaded machine this made a cell
# that printed an error pass). After each cell the runner keeps reading until
# iopub has been quiet this long (or LATE_OUTPUT_MAX passed).
LATE_OUTPUT_QUIET_S = 0.5
LATE_OUTPUT_MAX_S = 10.0


def error_text(cell):
    """Everything a cell showed as an error: error outputs and stderr."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            parts += [out.get("ename", ""), out.get("evalue", ""), *out.get("traceback", [])]
        elif out.get("output_type") == "stream" and out.get("name") == "stderr":
            parts.append(out.get("text", ""))
    return "\n".join(parts)


def problems_in(nb):
    """Every error output or error-looking stderr text, as readable lines."""
    found = []
    for index, cell in enumerate(nb.cells):
        expected = cell.get("metadata", {}).get("tlab", {}).get("expect_error")
        if expected is not None:
            shown = error_text(cell)
            if expected not in shown:
                found.append(f"cell {index}: must fail with {expected!r}, but showed: {shown.strip()[:2000]!r}")
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {index}: {out.get('ename')}: {out.get('evalue')}")
            elif out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = out.get("text", "")
                if text.strip():
                    found.append(f"cell {index}: stderr: {text.strip()[:2000]}")
    return found


def run(path, args):
    nb = nbformat.read(path, as_version=4)
    folder = os.path.dirname(os.path.abspath(path))
    timings = {}
    started = {}

    def on_start(cell, cell_index):
        started[cell_index] = time.monotonic()

    async def collect_late_output(cell, parent_id):
        deadline = time.monotonic() + LATE_OUTPUT_MAX_S
        while time.monotonic() < deadline:
            try:
                msg = await client.kc.iopub_channel.get_msg(timeout=LATE_OUTPUT_QUIET_S)
            except Exception:  # queue.Empty: quiet long enough
                return
            if msg["parent_header"].get("msg_id") != parent_id:
                continue
            if msg["msg_type"] in ("stream", "error", "display_data", "execute_result"):
                cell.outputs.append(output_from_msg(msg))

    async def on_done(cell, cell_index, execute_reply=None):
        if execute_reply is not None:
            await collect_late_output(cell, execute_reply["parent_header"].get("msg_id"))
        timings[cell_index] = time.monotonic() - started.get(cell_index, time.monotonic())
        first = cell.source.splitlines()[0] if cell.source else ""
        print(f"  cell {cell_index:>2}  {timings[cell_index]:7.1f}s  {first[:70]}", flush=True)

    client = NotebookClient(
        nb,
        kernel_name=args.kernel,
        timeout=args.cell_timeout,
        startup_timeout=args.startup_timeout,
        allow_errors=False,
        record_timing=False,
        resources={"metadata": {"path": folder}},
        on_cell_start=on_start,
        on_cell_executed=on_done,
    )
    t0 = time.monotonic()
    failure = None
    try:
        client.execute()
    except CellTimeoutError as e:
        failure = f"cell timed out after {args.cell_timeout}s: {str(e)[:500]}"
    except DeadKernelError as e:
        failure = f"kernel died: {e}"
    except CellExecutionError as e:
        failure = f"cell failed: {str(e)[-3000:]}"
    except Exception as e:  # kernel start-up and protocol problems
        failure = f"{type(e).__name__}: {e}"
    total = time.monotonic() - t0
    problems = problems_in(nb)
    if failure:
        problems.insert(0, failure)
    if args.write and not problems:
        nbformat.write(nb, path)
    return problems, total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+")
    parser.add_argument("--kernel", default="rust")
    parser.add_argument("--write", action="store_true", help="save executed notebooks with their outputs")
    # A cold first cell compiles candle and tlab; training cells run for minutes on 2 cores.
    parser.add_argument("--cell-timeout", type=int, default=1500)
    parser.add_argument("--startup-timeout", type=int, default=180)
    args = parser.parse_args()

    failed = []
    for path in args.notebooks:
        print(f"== {path}", flush=True)
        problems, total = run(path, args)
        status = "FAILED" if problems else "ok"
        print(f"== {path}: {status} in {total:.1f}s", flush=True)
        for p in problems:
            print(f"   {p}", flush=True)
        if problems:
            failed.append(path)
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
