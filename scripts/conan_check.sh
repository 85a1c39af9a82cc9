#!/usr/bin/env bash
# The Conan 2 recipe (conan/conanfile.py) checked as a Conan user would, offline: `conan create`
# exports this checkout's sources, packages them with oft's own CMake install, and builds and runs
# conan/test_package against the package, with Debian's Eigen (the recipe's default,
# with_system_eigen=True). Nothing is fetched from a Conan remote; Conan itself comes from PyPI,
# pinned, into a virtual environment made once.
#
#   scripts/conan_check.sh
#
# Environment: OFT_CONAN_VENV (default build-conan/venv in the checkout) for the Conan install;
# a temporary CONAN_HOME is made for each run and removed after it, so the user's own Conan
# profiles and cache are never touched.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONAN_VERSION=2.34.0
VENV="${OFT_CONAN_VENV:-$ROOT/build-conan/venv}"
die() { echo "conan_check: error: $*" >&2; exit 1; }

start=$SECONDS
command -v python3 >/dev/null || die "python3 not found (Debian: apt-get install python3-venv)"
command -v cmake >/dev/null || die "cmake not found (bash scripts/setup.sh installs it)"
[[ -f /usr/share/eigen3/cmake/Eigen3Config.cmake || -n "${Eigen3_DIR:-}" ]] ||
  die "Eigen 3.4 not found (Debian: apt-get install libeigen3-dev; or set Eigen3_DIR)"

if [[ "$("$VENV/bin/conan" --version 2>/dev/null || true)" != "Conan version $CONAN_VERSION" ]]; then
  echo "== conan_check: installing conan==$CONAN_VERSION from PyPI into $VENV"
  python3 -m venv "$VENV" || die "could not create the virtual environment $VENV"
  "$VENV/bin/python" -m pip install -q "conan==$CONAN_VERSION" ||
    die "pip could not install conan==$CONAN_VERSION into $VENV"
fi
CONAN="$VENV/bin/conan"

CONAN_HOME="$(mktemp -d "${TMPDIR:-/tmp}/oft-conan-home.XXXXXX")"
export CONAN_HOME
trap 'rm -rf "$CONAN_HOME"' EXIT

"$CONAN" profile detect --force >/dev/null 2>&1 || die "conan profile detect failed (no C++ compiler?)"
# Offline: no remote is consulted (with_system_eigen=True needs none).
"$CONAN" remote disable "*" >/dev/null 2>&1 || true

echo "== conan_check: conan create conan/ (oft $(sed -n 's/^#define OFT_VERSION_STRING "\(.*\)"$/\1/p' "$ROOT/include/oft/version.hpp"), system Eigen, offline)"
log="$CONAN_HOME/create.log"
if ! nice -n 19 "$CONAN" create "$ROOT/conan" --build=missing -s build_type=Release \
       -c tools.build:jobs=1 >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  die "conan create conan/ failed (last 40 lines above)"
fi
grep -q "oft_conan_test: oft .*: ok" "$log" ||
  { tail -n 40 "$log" >&2; die "the test package did not report ok (last 40 lines above)"; }
grep "oft_conan_test:" "$log"
echo "== conan_check: ok in $((SECONDS - start)) s"
