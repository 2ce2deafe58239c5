#!/bin/sh
# The guest side of KernelGuestTests.cuseAndProxyDevices: vtpmd's CUSE device (swtpm cuse) and vTPM proxy
# (swtpm chardev --vtpm-proxy) driven by Debian's swtpm_ioctl and tpm2-tools' device TCTI. Each step prints
# `CHECK <name> ok` or `CHECK <name> FAIL <what happened>`; the host asserts on those lines, and on `DEVICES-DONE`.
data=/data/devices
rm -rf $data
mkdir -p $data
ok() { echo "CHECK $1 ok"; }
failed=0
bad() {
    name=$1
    shift
    failed=$((failed + 1))
    echo "CHECK $name FAIL $*" | tr '\n' ' '
    echo
}
# run NAME EXPECTED COMMAND...: the command succeeds and its output contains EXPECTED (empty: anything)
run() {
    name=$1 expected=$2
    shift 2
    if out=$("$@" 2>&1) && { [ -z "$expected" ] || echo "$out" | grep -qF -- "$expected"; }; then ok "$name"; else bad "$name" "$out"; fi
}
# refuse NAME EXPECTED COMMAND...: the command fails and its output contains EXPECTED
refuse() {
    name=$1 expected=$2
    shift 2
    if out=$("$@" 2>&1); then bad "$name" "succeeded: $out"
    elif echo "$out" | grep -qF -- "$expected"; then ok "$name"
    else bad "$name" "$out"; fi
}
dev=/dev/vtpm0
ioctl() { swtpm_ioctl "$@" $dev; }

# ---- the CUSE device, as swtpm cuse: daemonizes, the device exists when the command returns
run cuse-start "" vtpmd cuse -n vtpm0 --tpm2 --tpmstate dir=$data/cuse --log file=$data/cuse.log,level=2 \
    --pid file=/run/cuse.pid
[ -c $dev ] && ok cuse-device || bad cuse-device "no $dev"
pid=$(cat /run/cuse.pid 2>/dev/null)
[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && ok cuse-pidfile || bad cuse-pidfile "pid '$pid'"
grep -q '^Seccomp:[[:space:]]*2' /proc/$pid/status && ok cuse-seccomp || bad cuse-seccomp "$(grep Seccomp /proc/$pid/status)"
run capabilities "ptm capability is 0x6fff" ioctl -c
refuse established-before-init "TPM result from PTM_GET_TPMESTABLISHED: 0xa" ioctl -e
run buffersize-set "TPM buffersize: 4000" ioctl -b 4000
run init "" ioctl -i
refuse buffersize-while-running "TPM result from PTM_SET_BUFFERSIZE: 0xa" ioctl -b 4096
run buffersize-query "TPM buffersize: 4000" ioctl -b 0
run config "ptm configuration flags: 0x0" ioctl -g
run info '"TPMSpecification":{"family":"2.0"' ioctl --info 1
export TPM2TOOLS_TCTI=device:$dev
run startup "" tpm2_startup -c
run getrandom "" tpm2_getrandom 16 --hex
run pcrextend "" tpm2_pcrextend 16:sha256=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
pcr16=$(tpm2_pcrread sha256:16 2>&1)
echo "$pcr16" | grep -q "16: 0x" && ok pcrread || bad pcrread "$pcr16"
run nvdefine "" tpm2_nvdefine 0x1500016 -C o -s 18 -a "ownerread|ownerwrite"
run nvwrite "" sh -c "printf nv-data-0123456789 | tpm2_nvwrite 0x1500016 -C o -i -"
run established "tpmEstablished is 0" ioctl -e
run hash "" ioctl -h vtpm-cuse-hash-data
run established-after-hash "tpmEstablished is 1" ioctl -e
# PCR 17 starts all ones (a locality-4 PCR); the hash sequence resets and extends it.
pcr17=$(tpm2_pcrread sha256:17 2>&1)
if echo "$pcr17" | grep -q "17: 0x" && ! echo "$pcr17" | grep -qi '0xF\{64\}'; then ok pcr17-hashed; else bad pcr17-hashed "$pcr17"; fi
refuse reset-established-locality-0 "TPM result from PTM_RESET_TPMESTABLISHED: 0x3d" ioctl -r 0
run reset-established-locality-3 "" ioctl -r 3
run established-after-reset "tpmEstablished is 0" ioctl -e
run locality-3 "" ioctl -l 3
run pcrread-locality-3 "sha256" tpm2_pcrread sha256:16
run locality-0 "" ioctl -l 0
run cancel "" ioctl -C
run store-volatile "" ioctl -v
# state blobs out: by ioctls only, and by ioctl + read() (swtpm_ioctl's SWTPM_IOCTL_BUFFERSIZE)
run save-permanent "" ioctl --save permanent $data/perm.bin
run save-volatile-read "" env SWTPM_IOCTL_BUFFERSIZE=100 swtpm_ioctl --save volatile $data/vol.bin $dev
run save-volatile-ioctl "" ioctl --save volatile $data/vol2.bin
for f in vol vol2; do
    size=$(wc -c < $data/$f.bin)
    [ "$size" -gt 3072 ] && ok "$f-blob-multipart" || bad "$f-blob-multipart" "$size bytes"
done
run stop "" ioctl --stop
refuse stopped-rejects-hash "TPM result from PTM_HASH_START: 0xa" ioctl -h x
# back in: by ioctls only, and by ioctl + write()
run load-permanent "" ioctl --load permanent $data/perm.bin
run load-volatile-write "" env SWTPM_IOCTL_BUFFERSIZE=4096 swtpm_ioctl --load volatile $data/vol.bin $dev
run init-from-blobs "" ioctl -i
[ "$(tpm2_pcrread sha256:16 2>&1)" = "$pcr16" ] && ok pcr16-restored || bad pcr16-restored "$(tpm2_pcrread sha256:16 2>&1)"
run nvread-restored "nv-data-0123456789" tpm2_nvread 0x1500016 -C o -s 18
refuse load-while-running "TPM result from PTM_SET_STATEBLOB: 0xa" ioctl --load permanent $data/perm.bin
run shutdown "" ioctl -s
i=0
while [ -e $dev ] && [ $i -lt 40 ]; do usleep 50000; i=$((i + 1)); done
[ ! -e $dev ] && ok device-removed || bad device-removed "$dev still there"
# The device goes first, then the pid file (a new daemon waiting for the pid file to go finds the name free).
i=0
while [ -e /run/cuse.pid ] && [ $i -lt 40 ]; do usleep 50000; i=$((i + 1)); done
[ ! -e /run/cuse.pid ] && ok pidfile-removed || bad pidfile-removed "/run/cuse.pid still there"

# ---- clone-rekey over CUSE: A's blobs loaded into VM B's device are rebased on B's identity
ident="--ca $data/ca --registry $data/registry.sqlite --host-key $data/host.key"
run clone-source-start "" vtpmd cuse -n vtpm-a --tpm2 --tpmstate dir=$data/a --vm-id 11111111-1111-4111-8111-111111111111 \
    $ident --flags not-need-init,startup-clear --log file=$data/a.log,level=2
export TPM2TOOLS_TCTI=device:/dev/vtpm-a
ek_a=$(tpm2_createek -c /run/ek-a.ctx -G rsa -u /run/ek-a.pub >/dev/null 2>&1 && od -An -tx1 /run/ek-a.pub | tr -d ' \n')
run clone-source-nv "" tpm2_nvdefine 0x1500017 -C o -s 8 -a "ownerread|ownerwrite"
run clone-source-nvwrite "" sh -c "printf kept-nv! | tpm2_nvwrite 0x1500017 -C o -i -"
run clone-save-permanent "" swtpm_ioctl --save permanent $data/a-perm.bin /dev/vtpm-a
run clone-save-volatile "" swtpm_ioctl --save volatile $data/a-vol.bin /dev/vtpm-a
run clone-source-shutdown "" swtpm_ioctl -s /dev/vtpm-a
run clone-target-start "" vtpmd cuse -n vtpm-b --tpm2 --tpmstate dir=$data/b --vm-id 22222222-2222-4222-8222-222222222222 \
    $ident --log file=$data/b.log,level=2
run clone-load-permanent "" swtpm_ioctl --load permanent $data/a-perm.bin /dev/vtpm-b
run clone-load-volatile "" swtpm_ioctl --load volatile $data/a-vol.bin /dev/vtpm-b
run clone-init "" swtpm_ioctl -i /dev/vtpm-b
export TPM2TOOLS_TCTI=device:/dev/vtpm-b
ek_b=$(tpm2_createek -c /run/ek-b.ctx -G rsa -u /run/ek-b.pub >/dev/null 2>&1 && od -An -tx1 /run/ek-b.pub | tr -d ' \n')
[ -n "$ek_a" ] && [ -n "$ek_b" ] && [ "$ek_a" != "$ek_b" ] && ok clone-ek-rebased || bad clone-ek-rebased "A $ek_a B $ek_b"
run clone-storage-kept "kept-nv!" tpm2_nvread 0x1500017 -C o -s 8
grep -q 'clone-rekey decision.*decision=clone' $data/b.log && ok clone-rekey-logged || bad clone-rekey-logged "$(tail -5 $data/b.log)"
run clone-target-shutdown "" swtpm_ioctl -s /dev/vtpm-b

# ---- the vTPM proxy (swtpm chardev --vtpm-proxy), for a container: /dev/tpmN and /dev/tpmrmN
mkdir -p $data/proxy
: >/run/proxy.out
vtpmd chardev --vtpm-proxy --tpm2 --tpmstate dir=$data/proxy --ctrl type=unixio,path=/run/proxy.ctrl \
    --log file=$data/proxy.log,level=3 --pid file=/run/proxy.pid >/run/proxy.out 2>&1 &
i=0
while ! grep -q 'New TPM device' /run/proxy.out && [ $i -lt 100 ]; do usleep 50000; i=$((i + 1)); done
tpm=$(grep -o '/dev/tpm[0-9]*' /run/proxy.out | head -1)
[ -n "$tpm" ] && ok proxy-announced || bad proxy-announced "$(cat /run/proxy.out)"
rm=/dev/tpmrm${tpm#/dev/tpm}
i=0
while [ ! -c "$rm" ] && [ $i -lt 100 ]; do usleep 50000; i=$((i + 1)); done
export TPM2TOOLS_TCTI=device:$rm
run proxy-getrandom "" tpm2_getrandom 16 --hex
run proxy-pcrextend "" tpm2_pcrextend 16:sha256=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
run proxy-pcrread "0x" tpm2_pcrread sha256:16
run proxy-createprimary "" tpm2_createprimary -C o -c /run/proxy-primary.ctx
run proxy-tpm-device "" env TPM2TOOLS_TCTI=device:$tpm tpm2_getrandom 4 --hex
grep -q 'in-band locality 0' $data/proxy.log && ok proxy-set-locality || bad proxy-set-locality "$(tail -5 $data/proxy.log)"
run proxy-ctrl-shutdown "00 00 00 00" sh -c "printf '\\000\\000\\000\\003' | socat -t2 - UNIX-CONNECT:/run/proxy.ctrl | od -An -tx1"
i=0
while [ -c "$rm" ] && [ $i -lt 60 ]; do usleep 50000; i=$((i + 1)); done
[ ! -e "$rm" ] && ok proxy-device-removed || bad proxy-device-removed "$rm still there"
if [ $failed -gt 0 ]; then
    for f in $data/*.log /run/proxy.out; do
        echo "LOG $f"
        tail -15 "$f"
    done
fi
sync
echo "DEVICES-DONE failed=$failed"
