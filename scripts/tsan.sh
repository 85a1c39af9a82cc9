#!/usr/bin/env bash
# ThreadSanitizer (clang) on the test programs whose types promise something about threads:
# tests/serving/test_adapter_bank.cpp (applies beside add/replace/remove). Built without OpenMP:
# libomp is not TSan-instrumented and would report its own barriers; the bank's locking, which is
# what these tests check, is between the std::threads the tests start.
#
#   scripts/tsan.sh          -> build-tsan/, each program run with halt_on_error
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh clang libclang-rt-14-dev
mkdir -p build-tsan
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1}"
for source in tests/serving/test_adapter_bank.cpp; do
  program="build-tsan/$(basename "$source" .cpp)"
  echo "== oft: ThreadSanitizer build of $source"
  clang++ -std=c++17 -O1 -g1 -fsanitize=thread -Wall -Wextra -Werror -march=native \
    -Iinclude -isystem /usr/include/eigen3 "$source" -lgtest -lgtest_main -lpthread -o "$program"
  "$program" --gtest_brief=1
done
echo "== oft: ThreadSanitizer checks passed"
