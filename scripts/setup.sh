#!/usr/bin/env bash
# Install the Debian 12 packages needed to build/test oft (plus any named as arguments). Idempotent: if every
# package is already installed, apt is not touched at all (works offline).
# Set OFT_FORCE_APT=1 to run apt-get update/install anyway.
set -euo pipefail

PACKAGES=(cmake g++ make libeigen3-dev libgtest-dev libbenchmark-dev libopenblas-openmp-dev nlohmann-json3-dev libcli11-dev)
# Extra packages a caller needs (scripts/test.sh --sanitize: clang and its runtimes).
PACKAGES+=("$@")

missing=()
for pkg in "${PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 && "${OFT_FORCE_APT:-0}" != "1" ]]; then
  echo "setup.sh: all packages present (${PACKAGES[*]})"
  exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "setup.sh: need root or sudo to install: ${missing[*]:-${PACKAGES[*]}}" >&2
  exit 1
fi

echo "setup.sh: installing ${PACKAGES[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update
"${SUDO[@]}" apt-get install -y --no-install-recommends "${PACKAGES[@]}"
