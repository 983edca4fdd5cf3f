#!/usr/bin/env bash
# Executes notebooks/*.ipynb with a real Jupyter client on the evcxr Rust
# kernel, then checks that the checker itself catches failures.
#
#   .ci/notebooks.sh            run and check (CI)
#   .ci/notebooks.sh --write    also save the executed notebooks with outputs
#
# Installs what is missing, outside the clone: evcxr_jupyter (cargo), a venv
# with nbclient/nbformat/jupyter_client (PyPI) and the kernel spec inside it.
set -euo pipefail
cd "$(dirname "$0")/.."

write=()
[ "${1:-}" = "--write" ] && write=(--write)

started=$(date +%s)
# shellcheck source=.ci/evcxr-env.sh
. .ci/evcxr-env.sh ""

log "running notebooks"
"$venv/bin/python" .ci/run_notebooks.py "${write[@]}" notebooks/*.ipynb

log "checking the checker: each notebook in .ci/failing/ must be reported as failing"
# Each fails on purpose with a message containing "deliberate"; failing for
# another reason (say, a kernel that does not start) would prove nothing.
for nb in .ci/failing/*.ipynb; do
  if out=$("$venv/bin/python" .ci/run_notebooks.py "$nb" 2>&1); then
    printf '%s\n' "$out"
    echo "the notebook runner passed $nb, which must fail" >&2
    exit 1
  fi
  if ! grep -q deliberate <<<"$out"; then
    printf '%s\n' "$out"
    echo "the notebook runner failed $nb, but not for the deliberate error" >&2
    exit 1
  fi
  echo "$nb: failed as it must"
done
log "notebooks ok in $(( $(date +%s) - started ))s"
