#!/usr/bin/env bash
# Builds and installs oft's Python package (python/, scikit-build-core + nanobind) into the
# PyPI virtual environment of the PEFT check and runs its pytest suites (python/tests, and
# tests/families: the numpy reference of the other families against PEFT): gradcheck
# of every op, parity with the real PEFT, a MiniLM training run, DDP with gloo, bad input, RSS.
# Run by scripts/test.sh after scripts/peft_check.sh (OFT_SKIP_PEFT_CHECK=1 skips both).
#
#   scripts/python_check.sh BUILD_DIR      (venv: ${OFT_PEFT_VENV:-BUILD_DIR/peft-venv})
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${1:?usage: scripts/python_check.sh BUILD_DIR}"
VENV="${OFT_PEFT_VENV:-$BUILD_DIR/peft-venv}"
PY="$VENV/bin/python"
if [[ ! -x $PY ]]; then
  echo "python_check.sh: no virtual environment at $VENV (scripts/peft_venv.sh makes it)" >&2
  exit 1
fi
start=$SECONDS
# The pinned build backend and test tools are in the venv (scripts/peft_venv.sh).
bash "$ROOT/scripts/peft_venv.sh" "$VENV"
echo "== oft: building and installing the Python package (pip install ./python)"
# No build isolation: the pinned backend above builds it, offline from PyPI after this point.
"$PY" -m pip install -q --no-build-isolation --force-reinstall --no-deps "$ROOT/python"
echo "== oft: Python package installed in $((SECONDS - start)) s; pytest python/tests tests/families"
# From the repository root, so that `import oft` finds the installed package, not python/oft.
cd "$ROOT"
HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error "$PY" -m pytest -q -p no:cacheprovider python/tests tests/families
echo "== oft: the README's Python example (examples/python/accelerate_peft.py)"
HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error "$PY" examples/python/accelerate_peft.py
echo "== oft: Python checks done in $((SECONDS - start)) s"
