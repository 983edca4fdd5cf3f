# Sourced by .ci/notebooks.sh (CI) and scripts/notebook (a user's JupyterLab):
# installs what the evcxr Rust kernel needs when it is missing, all outside
# the clone, and exports the environment its kernels share.
#
# In:  $1 = extra PyPI packages for the venv (may be empty).
# Out: $venv, $cache; JUPYTER_PATH, EVCXR_CONFIG_DIR, EVCXR_TMPDIR exported.

log() { printf '\n== %s\n' "$*"; }
cache="${XDG_CACHE_HOME:-$HOME/.cache}/tlab"
venv="${TLAB_NB_VENV:-$cache/venv-nb}"
extra_pip="${1:-}"

if ! command -v evcxr_jupyter >/dev/null && [ ! -x "$HOME/.cargo/bin/evcxr_jupyter" ]; then
  log "installing evcxr_jupyter 0.22.0 (cargo install; ~20 min on 2 cores, once)"
  cargo install evcxr_jupyter@0.22.0 --locked
fi
export PATH="$HOME/.cargo/bin:$PATH"

pip_wanted="nbclient nbformat jupyter_client $extra_pip"
import_check='import nbclient, nbformat, jupyter_client'
case " $extra_pip " in *" jupyterlab "*) import_check="$import_check, jupyterlab" ;; esac
if ! "$venv/bin/python" -c "$import_check" 2>/dev/null; then
  log "installing into $venv: $pip_wanted (PyPI)"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet $pip_wanted
fi

# evcxr_jupyter --install writes <JUPYTER_PATH>/kernels/rust/kernel.json (or
# the user's ~/.local/share/jupyter without JUPYTER_PATH); the venv's own
# share/jupyter is on jupyter_client's search path, so nothing global changes.
export JUPYTER_PATH="$venv/share/jupyter"
evcxr_jupyter --install >/dev/null

# A private evcxr configuration (EVCXR_CONFIG_DIR replaces ~/.config/evcxr):
# - init.evcxr: cache compiled crates between kernels (MiB);
# - prelude.rs: a panic aborts the kernel's child process, so a panicking
#   cell is reported as an error instead of a message that is easy to miss.
export EVCXR_CONFIG_DIR="$cache/evcxr-config"
mkdir -p "$EVCXR_CONFIG_DIR"
printf ':cache 4096\n' >"$EVCXR_CONFIG_DIR/init.evcxr"
cat >"$EVCXR_CONFIG_DIR/prelude.rs" <<'RS'
std::panic::set_hook(Box::new(|info| {
    eprintln!("{info}");
    std::process::abort();
}));
RS
# One build folder for every kernel, kept between runs: kernels share the
# compiled tlab (a path dependency, which evcxr's :cache skips). Under the
# temp dir: the same folder under ~/.cache made evcxr's dlopen fail (0.22.0).
export EVCXR_TMPDIR="${TMPDIR:-/tmp}/tlab-evcxr-build"
mkdir -p "$EVCXR_TMPDIR"
