#!/usr/bin/env bash
# tools/run_notebook.sh — execute notebooks/colab_t4.ipynb top to bottom, as CI does, in
# its small mode (FUSEBOX_NOTEBOOK_SMALL=1): the CPU, the binaries already built in
# target/release, the tiny models of tests/fixtures, a SQuAD-format file from
# ../shared/assets instead of SQuAD; the GPU cells print why they skip. A cell that
# raises fails the run, naming the cell. So the notebook cannot rot unnoticed.
#
#   cargo build --release && bash tools/run_notebook.sh [NOTEBOOK] [EXECUTED.ipynb]
#
# The executed copy (every cell's output) goes to target/notebook/ unless named. The
# runner needs python3 with pip: nbclient, nbformat and ipykernel (pinned below, with
# their dependencies; no torch) are installed once into the CI cache folder
# ($FUSEBOX_CI_CACHE, else ~/.cache/fusebox-ci) with `pip --target`, never into the
# system. Env: FUSEBOX_NOTEBOOK_SMALL (default 1; 0 runs the real T4 notebook),
# FUSEBOX_NOTEBOOK_CELL_TIMEOUT (seconds per cell, default 600), FUSEBOX_ASSETS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NB="${1:-$ROOT/notebooks/colab_t4.ipynb}"
EXECUTED="${2:-$ROOT/target/notebook/$(basename "$NB" .ipynb).executed.ipynb}"
PKGS=(nbclient==0.11.0 nbformat==5.11.1 ipykernel==7.4.0)
CACHE="${FUSEBOX_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fusebox-ci}"
# The folder name is the cache key: change it with PKGS.
PYDIR="$CACHE/notebook-nbclient0.11.0-nbformat5.11.1-ipykernel7.4.0"

die() { echo "run_notebook.sh: $*" >&2; exit 1; }
[ -f "$NB" ] || die "no notebook at $NB"
if [ "${FUSEBOX_NOTEBOOK_SMALL:-1}" = 1 ]; then
    for b in bench train eval; do
        [ -x "$ROOT/target/release/$b" ] ||
            die "target/release/$b not built: small mode runs the built binaries (cargo build --release)"
    done
fi
if [ ! -e "$PYDIR/.complete" ]; then
    python3 -m pip --version >/dev/null 2>&1 ||
        die "python3 -m pip is not available (apt-get install python3-pip)"
    echo "run_notebook.sh: installing ${PKGS[*]} into $PYDIR"
    rm -rf "$PYDIR.tmp"
    mkdir -p "$CACHE"
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check \
        --no-warn-conflicts --target "$PYDIR.tmp" "${PKGS[@]}"
    rm -rf "$PYDIR"
    mv "$PYDIR.tmp" "$PYDIR"
    touch "$PYDIR/.complete"
fi

mkdir -p "$(dirname "$EXECUTED")"
export PYTHONPATH="$PYDIR${PYTHONPATH:+:$PYTHONPATH}"
export FUSEBOX_NOTEBOOK_SMALL="${FUSEBOX_NOTEBOOK_SMALL:-1}"
export FUSEBOX_REPO="$ROOT"
export FUSEBOX_NOTEBOOK_WORK="${FUSEBOX_NOTEBOOK_WORK:-$ROOT/target/notebook/work}"
# Jupyter's connection files in a private folder, not the user's.
JUPYTER_RUNTIME_DIR="$(mktemp -d)"
export JUPYTER_RUNTIME_DIR
trap 'rm -rf "$JUPYTER_RUNTIME_DIR"' EXIT

python3 - "$NB" "$EXECUTED" "$ROOT" "${FUSEBOX_NOTEBOOK_CELL_TIMEOUT:-600}" <<'EOF'
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

path, executed, root, timeout = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
nb = nbformat.read(path, as_version=4)
client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                        resources={"metadata": {"path": root}})
t0 = time.time()
failed = None
try:
    client.execute()
except CellExecutionError as e:
    failed = e
finally:
    nbformat.write(nb, executed)
code = [c for c in nb.cells if c.cell_type == "code"]
for i, c in enumerate(code):
    print(f"--- code cell {i + 1}/{len(code)} ---")
    for o in c.get("outputs", []):
        if o.get("output_type") == "stream":
            print(o.get("text", ""), end="")
        elif o.get("output_type") == "error":
            print("\n".join(o.get("traceback", [])))
        elif "text/html" in o.get("data", {}):
            print(f"[HTML output, {len(o['data']['text/html'])} characters]")
ran = sum(1 for c in code if c.get("execution_count"))
print(f"\nrun_notebook.sh: {ran}/{len(code)} code cells ran in {time.time() - t0:.0f} s; "
      f"executed copy: {executed}")
if failed is not None:
    sys.exit(f"run_notebook.sh: {path} failed:\n{failed}")
if ran != len(code):
    sys.exit(f"run_notebook.sh: only {ran} of {len(code)} code cells ran")
EOF
