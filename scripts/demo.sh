#!/usr/bin/env bash
# Build (Release) and run the quickstart example: scripts/demo.sh [args...]
# Extra arguments are passed through to 00_quickstart.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# The environment may preset OPENBLAS_CORETYPE=Haswell, which halves OpenBLAS
# throughput on this machine; let OpenBLAS auto-detect the core instead.
unset OPENBLAS_CORETYPE
# OpenMP threads that spin while waiting stall every barrier as soon as anything else runs on
# these cores (measured: 64 ms instead of 14 ms per demo step with one busy core). Passive
# waiting costs little when the machine is quiet. A value the user set wins.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"

JOBS="${OFT_JOBS:-2}"

bash "$ROOT/scripts/setup.sh"

cmake -S . -B build-release \
  -DCMAKE_BUILD_TYPE=Release \
  -DOFT_BUILD_TESTS=OFF \
  -DOFT_BUILD_BENCH=OFF \
  -DOFT_BUILD_EXAMPLES=ON
cmake --build build-release --target 00_quickstart -j "$JOBS"

exec ./build-release/examples/00_quickstart "$@"
