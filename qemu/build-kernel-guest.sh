#!/usr/bin/env bash
# Build the guest that runs vtpmd itself (Tests/IntegrationTests/KernelGuestTests.swift): the test guest of
# build-guest.sh plus the release vtpmd (stripped: 75 MB, its static Swift runtime), swtpm_ioctl and swtpm_bios, bash, gawk and
# procps' ps (swtpm's test scripts), the modules fuse, cuse and tpm_vtpm_proxy (/dev/cuse, /dev/vtpmx), and
# qemu/guest/*.sh in /usr/lib/vtpm-guest. The kernel boots through its PVH entry (no decompression).
#
# Usage: qemu/build-kernel-guest.sh OUTDIR BINDIR [SWTPM_SRC]
#   BINDIR     holds the release binaries (make release: .build/release)
#   SWTPM_SRC  a swtpm v0.7.1 source tree: its tests/ go to /opt/swtpm/tests, for qemu/guest/swtpm-cuse-tests.sh
set -euo pipefail
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:?usage: build-kernel-guest.sh OUTDIR BINDIR [SWTPM_SRC]}
bin=${2:?usage: build-kernel-guest.sh OUTDIR BINDIR [SWTPM_SRC]}
swtpm_src=${3:-}
tools=()
for t in swtpm_ioctl swtpm_bios bash gawk ps socat; do
    p=$(command -v "$t") || { echo "build-kernel-guest: $t is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
    tools+=("$(readlink -f "$p")")
done
trees="$script_dir/guest:/usr/lib/vtpm-guest"
if [[ -n $swtpm_src ]]; then
    [[ -d $swtpm_src/tests ]] || { echo "build-kernel-guest: $swtpm_src has no tests/" >&2; exit 1; }
    trees+=" $swtpm_src/tests:/opt/swtpm/tests"
    # Debian's swtpm_setup and swtpm_cert, which the print-capabilities test asks too.
    for t in swtpm_setup swtpm_cert; do
        p=$(command -v "$t") || { echo "build-kernel-guest: $t is missing" >&2; exit 1; }
        tools+=("$(readlink -f "$p")")
    done
fi
GUEST_PVH=1 \
    GUEST_EXTRA_BIN="$bin/vtpmd ${tools[*]}" \
    GUEST_EXTRA_MODULES="fuse cuse tpm_vtpm_proxy" \
    GUEST_EXTRA_TREE="$trees" \
    "$script_dir/build-guest.sh" "$out"
