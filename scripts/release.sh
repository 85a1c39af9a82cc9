#!/usr/bin/env bash
# Makes oft's release artifacts from the committed HEAD into dist/ and checks each one as a user
# would. Everything is built from `git archive HEAD`, never from the working tree.
#
#   scripts/release.sh [--allow-dirty] [--no-wheel] [--dist DIR]
#
# Artifacts (VERSION from include/oft/version.hpp at HEAD):
#   dist/oft-VERSION.tar.gz         source archive (git archive of HEAD, top folder oft-VERSION/)
#   dist/oft-VERSION-cmake.tar.gz   the CMake package: headers + lib/cmake/oft (oft::oft, and the
#                                   optional oft::io and oft::blas), installed from that archive
#   dist/python/                    the Python sdist and the manylinux wheel, by the archive's own
#                                   scripts/wheel_check.sh (skipped, and said so, when HEAD has none
#                                   or with --no-wheel)
#   dist/SHA256SUMS
# Checks: the version agrees everywhere (header, CMake's package version, CHANGELOG.md's newest
# release, ports/oft/vcpkg.json, the wheel's name); the unpacked source archive configures and its
# test_version passes; a user's project (conan/test_package/CMakeLists.txt) unpacked against the
# extracted CMake package with find_package(oft VERSION EXACT REQUIRED) builds and runs; the wheel
# installs into a fresh venv with no compiler (wheel_check.sh with OFT_WHEEL_SKIP_TESTS=1).
#
# Refuses a tree with uncommitted changes or untracked files unless --allow-dirty (the artifacts
# are HEAD's either way; the refusal is so that what is released is what the tree shows).
# Builds are niced and serial (CMAKE_BUILD_PARALLEL_LEVEL, default 1).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "release.sh: error: $*" >&2; exit 1; }
start=$SECONDS
say() { echo "== release: $* ($((SECONDS - start)) s)"; }

allow_dirty=0
wheel=1
DIST="$ROOT/dist"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --allow-dirty) allow_dirty=1 ;;
    --no-wheel) wheel=0 ;;
    --dist) [[ $# -ge 2 ]] || die "--dist needs a directory"; DIST="$2"; shift ;;
    --dist=*) DIST="${1#--dist=}" ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-1}"
for tool in git cmake tar sha256sum python3; do
  command -v "$tool" >/dev/null || die "$tool not found (bash scripts/setup.sh installs the tools)"
done
git -C "$ROOT" rev-parse --verify -q HEAD >/dev/null || die "$ROOT is not a git checkout with a commit"

# 0. A clean tree, unless told otherwise.
dirty="$(git -C "$ROOT" status --porcelain)"
if [[ -n $dirty ]]; then
  n="$(wc -l <<<"$dirty")"
  if [[ $allow_dirty == 0 ]]; then
    die "the tree has $n uncommitted or untracked paths (first: $(head -1 <<<"$dirty" | cut -c4-)); commit them or pass --allow-dirty"
  fi
  say "warning: $n uncommitted or untracked paths left out (--allow-dirty): the artifacts are HEAD's"
fi
commit="$(git -C "$ROOT" rev-parse --short HEAD)"

# 1. The version, from HEAD's header, and the other places that state it.
header="$(git -C "$ROOT" show HEAD:include/oft/version.hpp)" || die "HEAD has no include/oft/version.hpp"
VERSION="$(sed -n 's/^#define OFT_VERSION_STRING "\([0-9]*\.[0-9]*\.[0-9]*\)"$/\1/p' <<<"$header")"
[[ -n $VERSION ]] || die "no '#define OFT_VERSION_STRING \"X.Y.Z\"' line in HEAD's include/oft/version.hpp"
changelog="$(git -C "$ROOT" show HEAD:CHANGELOG.md 2>/dev/null)" || die "HEAD has no CHANGELOG.md"
top="$(grep -m1 -E '^## \[[0-9]+\.[0-9]+\.[0-9]+\] - [0-9]{4}-[0-9]{2}-[0-9]{2}' <<<"$changelog" |
       sed 's/^## \[\([^]]*\)\].*/\1/')" || true
[[ $top == "$VERSION" ]] || die "CHANGELOG.md's newest release is '${top:-none}', include/oft/version.hpp says $VERSION"
if vcpkg_json="$(git -C "$ROOT" show HEAD:ports/oft/vcpkg.json 2>/dev/null)"; then
  port_version="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])' <<<"$vcpkg_json")"
  [[ $port_version == "$VERSION" ]] || die "ports/oft/vcpkg.json says $port_version, include/oft/version.hpp says $VERSION"
fi
say "oft $VERSION from HEAD $commit (header, CHANGELOG.md and the vcpkg manifest agree)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/oft-release.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
rm -rf "$DIST"
mkdir -p "$DIST"

# 2. The source archive.
src_tgz="$DIST/oft-$VERSION.tar.gz"
git -C "$ROOT" archive --format=tar.gz --prefix="oft-$VERSION/" -o "$src_tgz" HEAD
say "source archive $(basename "$src_tgz") ($(du -k "$src_tgz" | cut -f1) KiB)"

# 3. A user unpacks it: it configures, and its own test_version passes.
mkdir -p "$WORK/src"
tar -xzf "$src_tgz" -C "$WORK/src"
SRC="$WORK/src/oft-$VERSION"
[[ -f $SRC/include/oft/version.hpp && -f $SRC/CMakeLists.txt ]] ||
  die "the source archive has no oft-$VERSION/include/oft/version.hpp or CMakeLists.txt"
nice -n 19 cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DOFT_BUILD_TESTS=ON \
  -DOFT_BUILD_HYGIENE=OFF -DOFT_BUILD_BENCH=OFF -DOFT_BUILD_EXAMPLES=OFF -DOFT_BUILD_TOOLS=OFF \
  -DOFT_ENABLE_CUDA=OFF -DOFT_USE_IO=ON -DOFT_USE_BLAS=ON >"$WORK/configure.log" 2>&1 ||
  { tail -30 "$WORK/configure.log" >&2; die "the unpacked source archive did not configure (needs Eigen, GoogleTest, nlohmann_json, OpenBLAS: scripts/setup.sh)"; }
grep -q "oft $VERSION:" "$WORK/configure.log" || die "CMake's project version is not $VERSION"
nice -n 19 cmake --build "$WORK/build" --target test_version >"$WORK/build.log" 2>&1 ||
  { tail -30 "$WORK/build.log" >&2; die "test_version did not build from the source archive"; }
"$WORK/build/tests/test_version" --gtest_brief=1 >"$WORK/test_version.log" 2>&1 ||
  { cat "$WORK/test_version.log" >&2; die "test_version failed in the source archive"; }
say "source archive: configures as oft $VERSION, test_version passes (header, PROJECT_VERSION, CHANGELOG)"

# 4. The CMake package: installed from the archive into a staging prefix, tarred.
pkg="oft-$VERSION-cmake"
nice -n 19 cmake --install "$WORK/build" --prefix "$WORK/stage/$pkg" >"$WORK/install.log" 2>&1 ||
  { tail -30 "$WORK/install.log" >&2; die "cmake --install failed"; }
pkg_tgz="$DIST/$pkg.tar.gz"
tar -czf "$pkg_tgz" -C "$WORK/stage" "$pkg"
cfgver="$(find "$WORK/stage/$pkg" -name oftConfigVersion.cmake)"
[[ -n $cfgver ]] || die "the CMake package has no oftConfigVersion.cmake"
grep -q "set(PACKAGE_VERSION \"$VERSION\")" "$cfgver" || die "oftConfigVersion.cmake does not say $VERSION"
say "CMake package $(basename "$pkg_tgz") ($(du -k "$pkg_tgz" | cut -f1) KiB, $(tar -tzf "$pkg_tgz" | grep -c '\.hpp$') headers)"

# 5. A user extracts the CMake package and builds a project against it.
mkdir -p "$WORK/user"
tar -xzf "$pkg_tgz" -C "$WORK/user"
consumer_src="$SRC/conan/test_package"
[[ -f $consumer_src/CMakeLists.txt ]] || die "the source archive has no conan/test_package/CMakeLists.txt (the consumer)"
nice -n 19 cmake -S "$consumer_src" -B "$WORK/consumer" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$WORK/user/$pkg" -DOFT_EXPECTED_VERSION="$VERSION" >"$WORK/consumer.log" 2>&1 ||
  { tail -30 "$WORK/consumer.log" >&2; die "find_package(oft $VERSION EXACT REQUIRED) against the extracted CMake package failed"; }
grep -q "found oft $VERSION in $WORK/user/$pkg/" "$WORK/consumer.log" ||
  { tail -30 "$WORK/consumer.log" >&2; die "the consumer found oft somewhere other than the extracted package"; }
nice -n 19 cmake --build "$WORK/consumer" >>"$WORK/consumer.log" 2>&1 ||
  { tail -30 "$WORK/consumer.log" >&2; die "the consumer did not build against the CMake package"; }
"$WORK/consumer/oft_conan_test" || die "the consumer built against the CMake package failed"
say "CMake package: find_package(oft $VERSION EXACT REQUIRED) found it, a program built and ran"

# 6. The wheel, by the archive's own wheel script.
if [[ $wheel == 0 ]]; then
  say "wheel SKIPPED (--no-wheel): no Python artifacts in this release"
elif [[ ! -f $SRC/scripts/wheel_check.sh ]]; then
  say "wheel SKIPPED: HEAD has no scripts/wheel_check.sh, so no Python artifacts in this release"
else
  say "wheel: scripts/wheel_check.sh from the archive (sdist, wheel, auditwheel, fresh venv without a compiler; minutes)"
  OFT_WHEEL_SKIP_TESTS=1 nice -n 19 bash "$SRC/scripts/wheel_check.sh" "$WORK/wheel" ||
    die "scripts/wheel_check.sh failed (above)"
  mkdir -p "$DIST/python"
  shopt -s nullglob
  wheels=("$WORK/wheel/wheelhouse"/oft-*.whl)
  sdists=("$WORK/wheel/dist"/oft-*.tar.gz)
  shopt -u nullglob
  [[ ${#wheels[@]} -eq 1 && ${#sdists[@]} -eq 1 ]] ||
    die "wheel_check.sh left ${#wheels[@]} repaired wheels and ${#sdists[@]} sdists (expected one each)"
  for f in "${wheels[0]}" "${sdists[0]}"; do
    case "$(basename "$f")" in
      "oft-$VERSION-"*.whl|"oft-$VERSION.tar.gz") cp "$f" "$DIST/python/" ;;
      *) die "$(basename "$f") does not carry the version $VERSION" ;;
    esac
  done
  # The metadata inside each, as pip reads it, not only the file names.
  python3 - "$VERSION" "$DIST/python"/*.whl "$DIST/python"/*.tar.gz <<'PY' || die "a Python artifact's metadata does not say Version: $VERSION (above)"
import sys, tarfile, zipfile
version, wheel, sdist = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    meta = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
    lines = z.read(meta[0]).decode().splitlines() if len(meta) == 1 else []
with tarfile.open(sdist) as t:
    info = [m for m in t.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")]
    lines2 = t.extractfile(info[0]).read().decode().splitlines() if len(info) == 1 else []
for name, ls in ((wheel, lines), (sdist, lines2)):
    found = [l for l in ls if l.startswith("Version: ")]
    if found != ["Version: " + version]:
        sys.exit(f"{name}: {found or 'no Version field'}, expected Version: {version}")
PY
  say "wheel: $(cd "$DIST/python" && ls | tr '\n' ' ')(metadata Version: $VERSION)"
fi

(cd "$DIST" && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum > SHA256SUMS)
say "done: oft $VERSION ($commit) in $DIST"
sed 's/^/   /' "$DIST/SHA256SUMS"
