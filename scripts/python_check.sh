#!/usr/bin/env bash
# oft's Python package in CI: builds the binary wheel once and checks it as a user would
# (scripts/wheel_check.sh: sdist, the wheel from it with the module at every instruction-set level,
# auditwheel, a fresh venv with no compiler on PATH, python/tests once per level this CPU runs,
# tests/families and the README's Python example), then installs the same wheel into the PEFT
# check's virtual environment, so that the developers' venv runs what CI tested (no second compile).
# Run by scripts/test.sh after scripts/peft_check.sh (OFT_SKIP_PEFT_CHECK=1 skips both).
#
#   scripts/python_check.sh BUILD_DIR      (venv: ${OFT_PEFT_VENV:-BUILD_DIR/peft-venv};
#                                           the wheel and its fresh venv: BUILD_DIR/wheel)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${1:?usage: scripts/python_check.sh BUILD_DIR}"
BUILD_DIR="$(cd "$BUILD_DIR" && pwd)"
VENV="${OFT_PEFT_VENV:-$BUILD_DIR/peft-venv}"
PY="$VENV/bin/python"
if [[ ! -x $PY ]]; then
  echo "python_check.sh: no virtual environment at $VENV (scripts/peft_venv.sh makes it)" >&2
  exit 1
fi
start=$SECONDS
# The pinned test requirements are in the venv (scripts/peft_venv.sh); the wheel check's fresh
# venv reads them from there (OFT_WHEEL_TEST_VENV) instead of installing torch a second time.
bash "$ROOT/scripts/peft_venv.sh" "$VENV"
# The three levels compile side by side with the C++ build's parallelism (scripts/test.sh's OFT_JOBS).
# OFT_TOOL: the tool this build made, so that python/tests/test_dialect_io.py also checks that
# the wheel's module writes the same files and JSON as `oft` (it skips those checks without one).
OFT_TOOL="$BUILD_DIR/tools/oft" OFT_WHEEL_TEST_VENV="$VENV" \
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-${OFT_JOBS:-2}}" \
  bash "$ROOT/scripts/wheel_check.sh" "$BUILD_DIR/wheel"
wheel=("$BUILD_DIR"/wheel/wheelhouse/oft-*.whl)
"$PY" -m pip install -q --force-reinstall --no-deps "${wheel[0]}"
(cd "$BUILD_DIR" && "$PY" - <<'PYTHON'
import oft
info = oft.build_info()
print(f"== oft: {oft.__version__} installed in {oft.__path__[0]}: level {info['level']} of "
      f"{', '.join(info['levels_built'])}")
PYTHON
)
echo "== oft: Python checks done in $((SECONDS - start)) s"
