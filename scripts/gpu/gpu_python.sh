#!/usr/bin/env bash
# Run THERE (the lent GPU machine), from the repo root: builds oft's Python module with the CUDA
# path against that machine's Python and torch, and runs python/tests/test_cuda.py (CUDA tensors
# against oft's CPU path and the real PEFT). HERE first (nvcc 13 on both machines):
#
#   build liboft_python_cuda.a (python/CMakeLists.txt, OFT_PYTHON_CUDA=ON, target
#   oft_python_cuda) into .gpu_deps/python/, copy nanobind's package to .gpu_deps/python/nanobind
#   and pytest with its pure-Python dependencies to .gpu_deps/python/site
#
# then one device call with carry [".gpu_deps"] and `bash scripts/gpu/gpu_python.sh`. Only core.cpp
# and nanobind are compiled there (the .cu side is the carried static library).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-python-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
say() { echo "[gpu_python +${SECONDS}s] $*"; }
say "$("$PY" -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0))' 2>&1)"
include=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
if [[ ! -f $include/Python.h ]]; then
  say "no Python.h in $include: the module cannot be built here"; exit 3
fi
deps=$ROOT/.gpu_deps
cmake -S python -B build-py-gpu -DCMAKE_BUILD_TYPE=Release -DOFT_PYTHON_CUDA=ON -DOFT_PYTHON_ISA_LEVELS=native \
  -DOFT_PYTHON_CUDA_LIBRARY="$deps/python/liboft_python_cuda.a" \
  -DPython_EXECUTABLE="$(command -v "$PY")" -Dnanobind_DIR="$deps/python/nanobind/cmake" \
  -DEigen3_DIR="$deps/prefix/share/eigen3/cmake" > "$OUT/python_build.log" 2>&1 \
  && cmake --build build-py-gpu -j "$(nproc)" >> "$OUT/python_build.log" 2>&1
rc=$?
say "build rc=$rc"
if [[ $rc -ne 0 ]]; then tail -30 "$OUT/python_build.log"; exit 4; fi
rm -rf build-py-gpu/pkg && mkdir -p build-py-gpu/pkg && cp -r python/oft build-py-gpu/pkg/ \
  && cp build-py-gpu/_*.so build-py-gpu/pkg/oft/
# One process per test file, so that a crash in one keeps the others' reports; the C++ frames of
# a crash come from gdb where the machine has it.
for file in test_cuda.py test_torch.py test_core.py; do
  say "pytest $file"
  runner=("$PY")
  command -v gdb > /dev/null && runner=(gdb -q -batch -ex run -ex bt --args "$PY")
  PYTHONPATH="$ROOT/build-py-gpu/pkg:$deps/python/site" "${runner[@]}" -X faulthandler -m pytest -q \
    -p no:cacheprovider -rfE --tb=short --rootdir "$ROOT/build-py-gpu" "python/tests/$file" \
    > "$OUT/pytest_${file%.py}.log" 2>&1
  tail -15 "$OUT/pytest_${file%.py}.log"
done
say "done"
