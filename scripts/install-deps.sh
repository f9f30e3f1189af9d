#!/usr/bin/env bash
# Install everything fleece needs to build, test and run its demo on Debian 12.
# Run as root. Idempotent: when every package is already installed it does not touch
# apt at all, so repeated runs are fast and work offline.
set -euo pipefail

PACKAGES=(
    build-essential g++ cmake ninja-build pkg-config git
    liburing-dev nlohmann-json3-dev libcli11-dev libfmt-dev
    libgtest-dev libgmock-dev libbenchmark-dev
    libgnutls28-dev gnutls-bin zlib1g-dev libzstd-dev
    libnbd-dev libnbd-bin python3-libnbd python3-pytest
    qemu-utils qemu-system-common nbdkit fio
    clang-14 libclang-rt-14-dev clang-format-14 procps
    tmux # scripts/record-progress.sh
)

# One dpkg-query call for all packages; unknown ones are simply absent from its output.
installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null |
    awk '$2 == "installed" { print $1 }' || true)
missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! grep -qxF "$pkg" <<<"$installed"; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-deps: all ${#PACKAGES[@]} packages already installed"
    exit 0
fi

echo "install-deps: installing ${#missing[@]} missing package(s): ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: must run as root to install packages" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${PACKAGES[@]}"
echo "install-deps: done"
