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

log() { printf '\n== %s\n' "$*"; }
cache="${XDG_CACHE_HOME:-$HOME/.cache}/tlab"
venv="${TLAB_NB_VENV:-$cache/venv-nb}"
started=$(date +%s)

if ! command -v evcxr_jupyter >/dev/null; then
  log "installing evcxr_jupyter 0.22.0 (cargo install; ~20 min on 2 cores)"
  cargo install evcxr_jupyter@0.22.0 --locked
fi
export PATH="$HOME/.cargo/bin:$PATH"

if ! "$venv/bin/python" -c 'import nbclient, nbformat, jupyter_client' 2>/dev/null; then
  log "creating $venv (nbclient, nbformat, jupyter_client)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet nbclient nbformat jupyter_client
fi

# evcxr_jupyter --install writes <JUPYTER_PATH>/kernels/rust/kernel.json (or
# the user's ~/.local/share/jupyter without JUPYTER_PATH); the venv's own
# share/jupyter is on jupyter_client's search path, so nothing global changes.
export JUPYTER_PATH="$venv/share/jupyter"
evcxr_jupyter --install >/dev/null

# A private evcxr configuration (EVCXR_CONFIG_DIR replaces ~/.config/evcxr):
# - init.evcxr: cache compiled crates between kernels (MiB);
# - prelude.rs: a panic aborts the kernel's child process, so a panicking
#   cell is reported as an error instead of a message the runner might miss.
export EVCXR_CONFIG_DIR="$cache/evcxr-config"
mkdir -p "$EVCXR_CONFIG_DIR"
printf ':cache 4096\n' >"$EVCXR_CONFIG_DIR/init.evcxr"
cat >"$EVCXR_CONFIG_DIR/prelude.rs" <<'RS'
std::panic::set_hook(Box::new(|info| {
    eprintln!("{info}");
    std::process::abort();
}));
RS
# One build folder for every kernel, kept between runs: the notebooks share
# the compiled tlab (a path dependency, which evcxr's :cache skips). Under the
# temp dir: the same folder under ~/.cache made evcxr's dlopen fail (0.22.0).
export EVCXR_TMPDIR="${TMPDIR:-/tmp}/tlab-evcxr-build"
mkdir -p "$EVCXR_TMPDIR"

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
