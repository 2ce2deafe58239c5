#!/bin/sh
# The guest side of the power-loss test (Tests/IntegrationTests/KernelGuestTests.swift, qemu/README.md).
# Started by the guest's init with `vtpm.run=powerloss` on the kernel command line; `vtpm.fsync=on|off` chooses
# vtpmd's durability. On the virtio disk mounted on /data it runs vtpmd (chardev --vtpm-proxy, state in
# /data/tpm), reads the NV index the loop writes, prints `PL-LOADED <value>`, then writes 1, 2, 3, ... beyond
# it with tpm2_nvwrite, printing `PL-ACK <n>` after each write vtpmd acknowledged. The host kills QEMU at a
# random moment and boots the same disk again: the value read back must not be below the last ACK it saw.
fsync=on
for word in $(cat /proc/cmdline); do
    case $word in vtpm.fsync=*) fsync=${word#vtpm.fsync=} ;; esac
done
fail() {
    echo "PL-FAIL $*"
    cat /run/vtpmd.out /run/vtpmd.log 2>/dev/null | tail -20
    exit 1
}
grep -q ' /data ' /proc/mounts || fail "no disk on /data"
mkdir -p /data/tpm
vtpmd chardev --vtpm-proxy --tpm2 --tpmstate "dir=/data/tpm,fsync=$fsync" --log file=/run/vtpmd.log,level=2 \
    >/run/vtpmd.out 2>&1 &
i=0
while [ ! -c /dev/tpmrm0 ] && [ $i -lt 200 ]; do usleep 50000; i=$((i + 1)); done
[ -c /dev/tpmrm0 ] || fail "vtpmd made no /dev/tpmrm0"
export TPM2TOOLS_TCTI=device:/dev/tpmrm0
index=0x1500020
if [ ! -e /data/provisioned ]; then
    tpm2_nvdefine $index -C o -s 8 -a "ownerread|ownerwrite" >/dev/null || fail "nvdefine"
    printf '%08d' 0 | tpm2_nvwrite $index -C o -i - || fail "first nvwrite"
    sync
    touch /data/provisioned
    sync
fi
value=$(tpm2_nvread $index -C o -s 8 2>/run/nvread.err) || fail "the state does not load: $(cat /run/nvread.err)"
echo "PL-LOADED $value"
n=$(echo "$value" | sed 's/^0*//')
n=${n:-0}
while true; do
    n=$((n + 1))
    printf '%08d' $n | tpm2_nvwrite $index -C o -i - >/dev/null 2>&1 || fail "nvwrite $n"
    echo "PL-ACK $n"
done
