#!/usr/bin/env bash
# The vcpkg port (ports/oft/) checked as far as this machine allows. vcpkg itself is neither on
# PyPI nor in Debian 12, and nothing else can be downloaded here, so no vcpkg executable runs:
#   1. vcpkg.json: parsed as JSON and checked by hand against the manifest fields vcpkg documents
#      (known top-level keys, the port-name pattern, a version equal to include/oft/version.hpp,
#      eigen3 and the host ports whose functions the portfile calls);
#   2. portfile.cmake: run by cmake -P with vcpkg's helper functions replaced by the plain CMake
#      steps they wrap (scripts/vcpkg_port_simulate.cmake), against Debian's Eigen, into a
#      staging directory, then some of vcpkg's post-build checks on what it installed;
#   3. a user's project (conan/test_package/CMakeLists.txt, with the port's usage lines:
#      find_package(oft) and oft::oft) configured against the staged install, built and run.
# Not checked: vcpkg's own toolchain, triplets and Ninja, its eigen3 port, its schema validator and
# its full post-build lint, the port in a registry.
#
#   scripts/vcpkg_port_check.sh            (scratch in build-vcpkg-check/, OFT_VCPKG_CHECK_DIR to move it)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${OFT_VCPKG_CHECK_DIR:-$ROOT/build-vcpkg-check}"
die() { echo "vcpkg_port_check: error: $*" >&2; exit 1; }
start=$SECONDS

echo "== vcpkg_port_check: 1. ports/oft/vcpkg.json"
python3 - "$ROOT" <<'PY' || die "ports/oft/vcpkg.json is not valid (above)"
import json, re, sys
root = sys.argv[1]
path = f"{root}/ports/oft/vcpkg.json"
try:
    m = json.load(open(path))
except ValueError as e:
    sys.exit(f"{path}: not JSON: {e}")
known = {"$schema", "$comment", "name", "version", "version-string", "version-semver",
         "version-date", "port-version", "maintainers", "description", "homepage",
         "documentation", "license", "supports", "dependencies", "default-features", "features",
         "builtin-baseline", "overrides", "vcpkg-configuration"}
errors = [f"unknown top-level key {k!r}" for k in m if k not in known]
if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", m.get("name", "")):
    errors.append(f"name {m.get('name')!r} is not a vcpkg port name ([a-z0-9]+(-[a-z0-9]+)*)")
if m.get("name") != "oft":
    errors.append("name must be 'oft' (the directory's name)")
header = open(f"{root}/include/oft/version.hpp").read()
hv = re.search(r'^#define OFT_VERSION_STRING "([0-9.]+)"$', header, re.M).group(1)
if m.get("version") != hv:
    errors.append(f"version {m.get('version')!r} != include/oft/version.hpp's {hv!r}")
if not isinstance(m.get("description"), (str, list)):
    errors.append("description must be a string or a list of strings")
if "license" in m and m["license"] is not None and not isinstance(m["license"], str):
    errors.append("license must be an SPDX expression or null")
deps = {}
for d in m.get("dependencies", []):
    if isinstance(d, str):
        deps[d] = {}
    elif isinstance(d, dict) and isinstance(d.get("name"), str):
        deps[d["name"]] = d
    else:
        errors.append(f"dependency {d!r} is neither a name nor an object with a name")
if "eigen3" not in deps:
    errors.append("eigen3 must be a dependency")
for host in ("vcpkg-cmake", "vcpkg-cmake-config"):
    if deps.get(host, {}).get("host") is not True:
        errors.append(f"{host} must be a host dependency (the portfile calls its functions)")
if errors:
    sys.exit("\n".join(f"{path}: {e}" for e in errors))
print(f"   name {m['name']}, version {m['version']} (= version.hpp), dependencies {sorted(deps)}")
PY

echo "== vcpkg_port_check: 2. ports/oft/portfile.cmake with vcpkg's functions simulated"
nice -n 19 cmake -DPORT_DIR="$ROOT/ports/oft" -DWORK_DIR="$WORK/vcpkg" \
  -P "$ROOT/scripts/vcpkg_port_simulate.cmake" || die "the portfile failed (above)"
staged="$WORK/vcpkg/packages/oft_x64-linux"

echo "== vcpkg_port_check: 3. a user's project against the staged port"
version="$(sed -n 's/^#define OFT_VERSION_STRING "\(.*\)"$/\1/p' "$ROOT/include/oft/version.hpp")"
rm -rf "$WORK/consumer"
nice -n 19 cmake -S "$ROOT/conan/test_package" -B "$WORK/consumer" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$staged" -DOFT_EXPECTED_VERSION="$version" >"$WORK/consumer.log" 2>&1 ||
  { cat "$WORK/consumer.log" >&2; die "configuring the consumer against the port failed"; }
grep -q "found oft $version in $staged/share/oft" "$WORK/consumer.log" ||
  { cat "$WORK/consumer.log" >&2; die "the consumer did not find oft $version in the staged port"; }
nice -n 19 cmake --build "$WORK/consumer" -j 1 >>"$WORK/consumer.log" 2>&1 ||
  { cat "$WORK/consumer.log" >&2; die "building the consumer against the port failed"; }
"$WORK/consumer/oft_conan_test" || die "the consumer built against the port failed"
echo "== vcpkg_port_check: ok in $((SECONDS - start)) s (simulated vcpkg: see the header of this script)"
