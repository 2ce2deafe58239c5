#!/usr/bin/env bash
# Installs the Debian 12 packages vtpmd's build, tests, demo and benchmark need.
set -euo pipefail
packages=(
    libtpms-dev swtpm swtpm-tools tpm2-tools libtss2-tcti-swtpm0
    qemu-system-x86 qemu-utils linux-image-amd64 busybox-static cpio socat libsqlite3-dev gcc make
    libvirt-daemon-system libvirt-clients virtinst
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
