#!/usr/bin/env bash
# swtpm 0.7.1's own test scripts against `vtpmd cuse`, run inside the kernel guest (the host has no /dev/cuse).
# SWTPM_SRC is an extraction of swtpm's git tag v0.7.1 (scripts/swtpm-compat.sh says how). The guest runs
# qemu/guest/swtpm-cuse-tests.sh and prints one line per script and interface variant; this prints them and exits
# 0 when none failed. Takes about 2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${SWTPM_SRC:?set SWTPM_SRC to an extraction of swtpm v0.7.1}
out=.build/kernel-swtpm
./qemu/build-kernel-guest.sh "$out" "$PWD/.build/release" "$src"
log=$out/console.log
rm -f "$log"
qemu-system-x86_64 -machine q35 -accel tcg -cpu max -smp 1 -m 1024 -display none -no-user-config \
    -nodefaults -serial "file:$log" -kernel "$out/vmlinuz" -initrd "$out/initrd.img" -no-reboot \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 vtpm.notpm vtpm.run=swtpm-cuse-tests" </dev/null &
qemu=$!
trap 'kill $qemu 2>/dev/null || true' EXIT
for _ in $(seq 1200); do
    grep -q SWTPM-CUSE-DONE "$log" 2>/dev/null && break
    kill -0 $qemu 2>/dev/null || break
    sleep 1
done
grep -E '^(SWTPM-CUSE|    )' "$log" | tr -d '\r'
tr -d '\r' <"$log" | grep -q 'SWTPM-CUSE-DONE pass=[0-9]* fail=0 skip=0$'
