"""Starts one evcxr kernel in FOLDER, runs the notebooks' `:dep` cell and a
line of tlab, and prints how long the first cell took. Used by
scripts/notebook to compile tlab into the kernels' shared build folder."""

import sys
import time

from jupyter_client.manager import start_new_kernel

DEP = ':dep tlab = { path = "..", default-features = false, features = ["notebook"] }'


def run(client, code, timeout):
    msg_id = client.execute(code)
    errors = []
    deadline = time.time() + timeout
    while True:
        msg = client.get_iopub_msg(timeout=max(1, deadline - time.time()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "error":
            errors.append(f"{content['ename']}: {content['evalue']}")
        elif kind == "stream" and content.get("name") == "stderr" and "error" in content["text"].lower():
            errors.append(content["text"].strip())
        elif kind == "status" and content["execution_state"] == "idle":
            return errors


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "notebooks"
    t0 = time.time()
    km, client = start_new_kernel(kernel_name="rust", cwd=folder, startup_timeout=120)
    try:
        errors = run(client, DEP, timeout=3600)
        errors += run(client, "tlab::recipe::STEP_KINDS.len()", timeout=600)
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)
    if errors:
        print("the kernel could not build tlab:\n" + "\n".join(errors), file=sys.stderr)
        sys.exit(1)
    print(f"tlab is built for the Rust kernel: first cell took {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
