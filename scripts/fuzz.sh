#!/usr/bin/env bash
# Bounded libFuzzer runs of the safetensors reader, the PEFT adapter loader and the single-file
# dialect readers (LyCORIS diag-OFT and BOFT, kohya, OneTrainer, and the detection by keys), under
# ASan+UBSan.
#
#   scripts/fuzz.sh [SECONDS]      the fuzzing takes SECONDS of wall-clock time in all (default
#                                  60), however many targets there are: every target runs for
#                                  SECONDS, all side by side, so they share the cores (on fewer
#                                  cores than targets each gets about SECONDS * cores / targets
#                                  of CPU). A new target adds no time, only its build; `fuzz.sh 60`
#                                  (.ci/run) is 60 s of fuzzing, as it was with two targets.
#                                  Built in build-fuzz/ (OFT_FUZZ_BUILD overrides; OFT_JOBS: -j)
#
# Needs clang and libFuzzer (Debian: clang, libclang-rt-14-dev; installed when missing, as root).
# Seeds: tests/io/fixtures/*.safetensors and the PEFT-made adapters of tests/peft/fixtures (each as
# adapter_config.json + 0xFF + adapter_model.safetensors, the adapter target's input format), and
# the LyCORIS-, kohya- and OneTrainer-style files of tests/dialects/fixtures (not the *_expected outputs, nor
# the MiniLM one, longer than -max_len) with the hand-made ones of tests/fuzz/seeds/lycoris_adapter
# (make_seeds.py: the refusals a byte mutation rarely reaches). A crash, leak, timeout (10 s per
# input) or sanitizer report fails the run, and the input that did it is left in
# build-fuzz/artifacts/ (add it to tests/fuzz/regressions/<target>/ with the fix). The corpora
# grow in build-fuzz/corpus-*/ across runs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOTAL_SECONDS="${1:-60}"
BUILD="${OFT_FUZZ_BUILD:-build-fuzz}"
TARGETS=(safetensors peft_adapter lycoris_adapter)

if ! command -v clang++ >/dev/null || ! echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long){return 0;}' |
      clang++ -x c++ -fsanitize=fuzzer - -o /dev/null 2>/dev/null; then
  echo "fuzz.sh: installing clang and libFuzzer (clang, libclang-rt-14-dev)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends clang libclang-rt-14-dev
fi

cmake -S . -B "$BUILD" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DOFT_BUILD_FUZZERS=ON -DOFT_BUILD_TESTS=OFF -DOFT_BUILD_BENCH=OFF -DOFT_BUILD_EXAMPLES=OFF \
  -DOFT_BUILD_TOOLS=OFF -DOFT_ENABLE_CUDA=OFF -DOFT_USE_BLAS=OFF >/dev/null
cmake --build "$BUILD" -j "${OFT_JOBS:-2}" --target "${TARGETS[@]/#/fuzz_}"

for target in "${TARGETS[@]}"; do mkdir -p "$BUILD/corpus-$target"; done
mkdir -p "$BUILD/artifacts"
cp -f tests/io/fixtures/*.safetensors tests/peft/fixtures/adapters/*/adapter_model.safetensors \
  "$BUILD/corpus-safetensors/" 2>/dev/null || true
for dir in tests/peft/fixtures/adapters/*/ tests/families/fixtures/adapters/*/; do
  name=$(basename "$dir")
  { cat "$dir/adapter_config.json"; printf '\xff'; cat "$dir/adapter_model.safetensors"; } \
    >"$BUILD/corpus-peft_adapter/seed_$name"
done
for file in tests/dialects/fixtures/*.safetensors tests/fuzz/seeds/lycoris_adapter/*.safetensors; do
  case "$file" in *_expected.safetensors | *minilm*) continue ;; esac
  cp -f "$file" "$BUILD/corpus-lycoris_adapter/"
done

status=0
# Inputs that once failed (tests/fuzz/regressions/<target>/) run first, one by one, every time.
for target in "${TARGETS[@]}"; do
  regressions=(tests/fuzz/regressions/$target/*)
  [ -e "${regressions[0]}" ] || continue
  echo "== fuzz: fuzz_$target on ${#regressions[@]} regression inputs"
  if ! "$BUILD/tests/fuzz/fuzz_$target" "${regressions[@]}" >"$BUILD/regressions_$target.log" 2>&1; then
    echo "fuzz.sh: fuzz_$target FAILED on a regression input" >&2
    tail -40 "$BUILD/regressions_$target.log" >&2
    status=1
  fi
done
# A fixed seed (OFT_FUZZ_SEED, default 1) so that CI explores the same way each run; set it to 0
# for libFuzzer's random seed when hunting. The targets run side by side (each libFuzzer process
# is single-threaded), each for the whole budget, so the stage takes TOTAL_SECONDS once, not once
# per target; with more targets than cores the kernel shares the cores among them.
fuzz_target() {
  "$BUILD/tests/fuzz/fuzz_$1" "$BUILD/corpus-$1" -max_total_time="$TOTAL_SECONDS" \
    -seed="${OFT_FUZZ_SEED:-1}" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$BUILD/artifacts/fuzz_$1-" 2>"$BUILD/fuzz_$1.log"
}
declare -A fuzz_pids
echo "== fuzz: ${#TARGETS[@]} targets side by side for ${TOTAL_SECONDS} s on $(nproc) cores"
for target in "${TARGETS[@]}"; do
  echo "== fuzz: fuzz_$target for ${TOTAL_SECONDS} s"
  fuzz_target "$target" &
  fuzz_pids[$target]=$!
done
for target in "${TARGETS[@]}"; do
  if ! wait "${fuzz_pids[$target]}"; then
    echo "fuzz.sh: fuzz_$target FAILED; input and report:" \
      "$BUILD/artifacts/, $BUILD/fuzz_$target.log" >&2
    tail -40 "$BUILD/fuzz_$target.log" >&2
    status=1
  else
    echo "== fuzz: fuzz_$target passed"
    grep -E "stat::number_of_executed_units|cov:" "$BUILD/fuzz_$target.log" | tail -2
  fi
done
exit $status
