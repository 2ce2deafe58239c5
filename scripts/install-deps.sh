#!/usr/bin/env bash
# Installs the Debian 12 packages vtpmd's build, tests, demo and benchmark need.
set -euo pipefail
packages=(
    libtpms-dev swtpm swtpm-tools tpm2-tools libtss2-tcti-swtpm0
    qemu-system-x86 qemu-utils linux-image-amd64 busybox-static cpio socat libsqlite3-dev libseccomp-dev gcc make postgresql
    libfuse3-dev gawk procps e2fsprogs xz-utils
)
# The libvirt tests use libvirt as Debian installs it for a user (with its recommended packages).
with_recommends=(libvirt-daemon-system libvirt-clients virtinst)
missing() {
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}
mapfile -t plain < <(missing "${packages[@]}")
mapfile -t recommended < <(missing "${with_recommends[@]}")
if [ ${#plain[@]} -eq 0 ] && [ ${#recommended[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
if [ ${#plain[@]} -gt 0 ]; then
    $SUDO apt-get install -y -qq --no-install-recommends "${plain[@]}"
fi
if [ ${#recommended[@]} -gt 0 ]; then
    $SUDO apt-get install -y -qq "${recommended[@]}"
fi
