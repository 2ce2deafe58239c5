#!/usr/bin/env bash
# Manual launcher: start a vTPM backend and boot the test guest with it, serial console on stdio.
#
# Usage: qemu/launch.sh [--tis] [--fresh] [--workdir DIR] [-- EXTRA_QEMU_ARGS...]
#
#   --tis            use -device tpm-tis instead of tpm-crb
#   --fresh          wipe the TPM state directory and the qcow2 disk first
#   --workdir DIR    where state, sockets, logs and the disk live (default: qemu/out/launch)
#   EXTRA_QEMU_ARGS  passed through, e.g. -- -loadvm s1   or   -- -S -qmp unix:/tmp/q.sock,server=on,wait=off
#
# Environment:
#   TPM_BACKEND      backend executable, called like swtpm (default: swtpm). For example
#                    TPM_BACKEND=.build/debug/vtpmd qemu/launch.sh
#   TPM_BACKEND_ARGS extra backend arguments (word-split), e.g. "--flags not-need-init"
#   GUEST_DIR        directory with vmlinuz + initrd.img (default: qemu/out; built when missing)
#   QEMU             qemu binary (default: qemu-system-x86_64)
#
# The console is -nographic (serial multiplexed with the QEMU monitor on stdio): Ctrl-A x quits,
# Ctrl-A c toggles the monitor (savevm s1 / loadvm s1 / info snapshots). A QMP socket is at
# WORKDIR/qmp.sock. The guest prints VTPM-GUEST-READY and gives a root shell with
# TPM2TOOLS_TCTI=device:/dev/tpmrm0; the qcow2 disk is mounted at /data.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
model=tpm-crb
fresh=0
workdir=$script_dir/out/launch
extra=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --tis) model=tpm-tis ;;
        --crb) model=tpm-crb ;;
        --fresh) fresh=1 ;;
        --workdir) workdir=$2; shift ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "launch.sh: unknown option $1 (try --help)" >&2; exit 64 ;;
    esac
    shift
done

backend=${TPM_BACKEND:-swtpm}
qemu=${QEMU:-qemu-system-x86_64}
guest_dir=${GUEST_DIR:-$script_dir/out}
if [[ ! -r $guest_dir/vmlinuz || ! -r $guest_dir/initrd.img ]]; then
    "$script_dir/build-guest.sh" "$guest_dir"
fi

mkdir -p "$workdir"
workdir=$(cd "$workdir" && pwd) # the backend daemonises and chdirs to /: absolute paths only
state=$workdir/tpmstate
sock=$workdir/ctrl.sock
log=$workdir/backend.log
pidfile=$workdir/backend.pid
disk=$workdir/disk.qcow2
if [[ $fresh == 1 ]]; then rm -rf "$state" "$disk"; fi
mkdir -p "$state"
[[ -e $disk ]] || qemu-img create -q -f qcow2 "$disk" 64M

# stop a backend left over from an earlier run of this workdir
if [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")" || true
    sleep 0.5
fi
rm -f "$pidfile"

read -r -a backend_extra <<< "${TPM_BACKEND_ARGS:-}"
"$backend" socket --tpm2 \
    --tpmstate "dir=$state" \
    --ctrl "type=unixio,path=$sock" \
    --log "file=$log,level=20" \
    --pid "file=$pidfile" \
    --daemon "${backend_extra[@]}"
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
[[ -S $sock ]] || { echo "launch.sh: $backend did not create $sock (see $log)" >&2; exit 1; }
backend_pid=$(cat "$pidfile" 2>/dev/null || true)
cleanup() {
    # QEMU sends CMD_SHUTDOWN on a clean quit; make sure the backend is gone either way
    if [[ -n $backend_pid ]] && kill -0 "$backend_pid" 2>/dev/null; then kill "$backend_pid" || true; fi
}
trap cleanup EXIT

cmd=("$qemu"
    -machine q35 -accel tcg -cpu max -m 512 -smp 1
    -nographic -no-user-config -nodefaults -serial mon:stdio
    -kernel "$guest_dir/vmlinuz" -initrd "$guest_dir/initrd.img"
    -append "console=ttyS0 quiet loglevel=3 panic=-1"
    -chardev "socket,id=chrtpm,path=$sock"
    -tpmdev emulator,id=tpm0,chardev=chrtpm
    -device "$model,tpmdev=tpm0"
    -drive "file=$disk,if=none,id=disk0,format=qcow2"
    -device virtio-blk-pci,drive=disk0
    -qmp "unix:$workdir/qmp.sock,server=on,wait=off"
    "${extra[@]}")
echo "launch.sh: backend $backend pid ${backend_pid:-?}, log $log" >&2
echo "launch.sh: ${cmd[*]}" >&2
"${cmd[@]}"
