#!/usr/bin/env bash
# Measures the system calls vtpmd makes once its seccomp filter is installed, per mode: vtpmd runs under
# `strace -f` with --seccomp action=none (so that nothing is hidden by the filter), and every call after the
# point where it would install the filter (the "seccomp filter:" log line's write, i.e. after confine())
# is counted. Prints one line per mode: the calls, sorted; then the union, and what SeccompProfile
# allows beyond it. Needs strace, tpm2-tools, swtpm_ioctl; PG=1 adds a PostgreSQL registry (as root).
#   ./scripts/seccomp-syscalls.sh [path/to/vtpmd] [path/to/vtpm-state]
set -euo pipefail
cd "$(dirname "$0")/.."
VTPMD=${1:-$PWD/.build/debug/vtpmd}
VTPM_STATE=${2:-$PWD/.build/debug/vtpm-state}
PG=${PG:-0}
W=$(mktemp -d /tmp/seccomp-measure.XXXXXX)
chmod 0755 "$W"
trap 'pkill -f "$W" 2>/dev/null || true; [[ -n ${PGDATA_DIR:-} ]] && setpriv --reuid=postgres --regid=postgres --clear-groups /usr/lib/postgresql/*/bin/pg_ctl -D "$PGDATA_DIR" stop -m immediate >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
VM_A=6f1c1a52-3c1e-4a57-9d0e-4f3b2a1c0d9e
VM_B=0b1e7a34-8c2d-4e6f-a1b2-c3d4e5f60718

# calls NAME TRACE: the call names in TRACE after the write of the "seccomp filter:" log line.
calls() {
    awk '/write\(.*seccomp filter: action=/ { on = 1; next } on { print }' "$2" |
        sed -nE 's/^[0-9]+ +([a-z_0-9]+)\(.*/\1/p; s/^[0-9]+ +<\.\.\. ([a-z_0-9]+) resumed.*/\1/p' | sort -u | tr '\n' ' '
}

# run NAME ARGS...: vtpmd under strace in the background; waits for its control socket.
run() {
    local name=$1
    shift
    strace -f -qq -s 256 -o "$W/$name.trace" "$VTPMD" "$@" --seccomp action=none --log "file=$W/$name.log,level=20" &
    echo $! >"$W/$name.pid"
    for _ in $(seq 300); do [[ -S $W/$name.data.ctrl ]] && return 0; sleep 0.02; done
    echo "vtpmd ($name) did not start: $(cat "$W/$name.log")" >&2
    exit 1
}
finish() {
    local name=$1
    swtpm_ioctl --unix "$W/$name.data.ctrl" -s >/dev/null || true
    wait "$(cat "$W/$name.pid")" 2>/dev/null || true
    printf '%-22s %s\n' "$name" "$(calls "$name" "$W/$name.trace")"
}
# tpm NAME: TPM commands through tpm2-tools' swtpm TCTI (data socket NAME.data, control NAME.data.ctrl).
tpm() {
    local tcti="swtpm:path=$W/$1.data"
    TPM2TOOLS_TCTI=$tcti tpm2_startup -c
    TPM2TOOLS_TCTI=$tcti tpm2_getrandom 32 >/dev/null
    TPM2TOOLS_TCTI=$tcti tpm2_pcrextend 16:sha256=0000000000000000000000000000000000000000000000000000000000000000
    TPM2TOOLS_TCTI=$tcti tpm2_createprimary -C o -c "$W/$1.primary" >/dev/null
    TPM2TOOLS_TCTI=$tcti tpm2_nvdefine 0x1500020 -s 32 >/dev/null
    head -c 32 /dev/zero >"$W/$1.nvdata"
    TPM2TOOLS_TCTI=$tcti tpm2_nvwrite 0x1500020 -i "$W/$1.nvdata"
    TPM2TOOLS_TCTI=$tcti tpm2_shutdown
}
socket_args() { echo socket --tpm2 --tpmstate "dir=$W/$1.state" --ctrl "type=unixio,path=$W/$1.data.ctrl" --server "type=unixio,path=$W/$1.data"; }

# 1. socket, no clone-rekey: INIT, TPM commands, state blobs out and in (a snapshot and its restore).
mkdir -p "$W/socket.state"
# shellcheck disable=SC2046
run socket $(socket_args socket)
swtpm_ioctl --unix "$W/socket.data.ctrl" -i >/dev/null
tpm socket
for t in permanent volatile; do swtpm_ioctl --unix "$W/socket.data.ctrl" --save "$t" "$W/socket.$t" >/dev/null; done
swtpm_ioctl --unix "$W/socket.data.ctrl" --stop >/dev/null
swtpm_ioctl --unix "$W/socket.data.ctrl" --load permanent "$W/socket.permanent" >/dev/null
swtpm_ioctl --unix "$W/socket.data.ctrl" -i >/dev/null
finish socket

# 2. clone-rekey, SQLite registry, the CA in-process: A provisioned, B a copied state directory rekeyed at INIT,
#    then a snapshot (checkpointed blobs) and the TPM used.
"$VTPM_STATE" ca init --ca "$W/ca" >/dev/null
mkdir -p "$W/lib"
"$VTPM_STATE" create --state "$W/a.state" --vm-id $VM_A --ca "$W/ca" --registry "$W/lib/registry.sqlite" >/dev/null
identity() { echo --vm-id "$1" --registry "$2" --host-key "$W/lib/host.key"; }
cp -a "$W/a.state" "$W/clone-local.state"
# shellcheck disable=SC2046
run clone-local $(socket_args clone-local) $(identity $VM_B "$W/lib/registry.sqlite") --ca "$W/ca"
swtpm_ioctl --unix "$W/clone-local.data.ctrl" -i >/dev/null
tpm clone-local
for t in permanent volatile; do swtpm_ioctl --unix "$W/clone-local.data.ctrl" --save "$t" "$W/clone-local.$t" >/dev/null; done
finish clone-local

# 2b. the host CA created by vtpmd at its first certificate (a new TPM, --ca naming a missing directory),
#     stopped by SIGTERM.
mkdir -p "$W/new-ca.state"
strace -f -qq -s 256 -o "$W/new-ca.trace" "$VTPMD" $(socket_args new-ca) $(identity 1c0ffee0-0000-4000-8000-00000000000b "$W/lib/registry.sqlite") \
    --ca "$W/new-ca" --seccomp action=none --log "file=$W/new-ca.log,level=20" &
tracer=$!
for _ in $(seq 300); do [[ -S $W/new-ca.data.ctrl ]] && break; sleep 0.02; done
swtpm_ioctl --unix "$W/new-ca.data.ctrl" -i >/dev/null
tpm new-ca
pid=$(sed -n 's/.*vtpmd ready pid=\([0-9]*\).*/\1/p' "$W/new-ca.log" | head -1)
kill -TERM "$pid"
wait "$tracer" || true
[[ -f $W/new-ca/ca.pem ]] || { echo "vtpmd did not create the CA" >&2; exit 1; }
printf '%-22s %s\n' new-ca "$(calls new-ca "$W/new-ca.trace")"

# 3. the same with the separated CA signer.
"$VTPM_STATE" ca serve --ca "$W/ca" --registry "$W/lib/registry.sqlite" --socket "$W/signer.sock" --log "$W/signer.log" &
for _ in $(seq 300); do [[ -S $W/signer.sock ]] && break; sleep 0.02; done
cp -a "$W/a.state" "$W/clone-signer.state"
VM_C=1c0ffee0-0000-4000-8000-00000000000c
# shellcheck disable=SC2046
run clone-signer $(socket_args clone-signer) $(identity $VM_C "$W/lib/registry.sqlite") --ca-signer "$W/signer.sock"
swtpm_ioctl --unix "$W/clone-signer.data.ctrl" -i >/dev/null
tpm clone-signer
finish clone-signer

# 4. chardev: TPM commands on an inherited socket, control on a UNIX socket, --terminate.
mkdir -p "$W/chardev.state"
python3 - "$VTPMD" "$W" <<'PY'
import os, socket, subprocess, sys, time, struct
vtpmd, w = sys.argv[1], sys.argv[2]
a, b = socket.socketpair()
os.set_inheritable(b.fileno(), True)
p = subprocess.Popen(["strace", "-f", "-qq", "-s", "256", "-o", f"{w}/chardev.trace", vtpmd, "chardev", "--tpm2", "--fd", str(b.fileno()),
    "--tpmstate", f"dir={w}/chardev.state", "--ctrl", f"type=unixio,path={w}/chardev.ctrl",
    "--flags", "not-need-init,startup-clear", "--seccomp", "action=none", "--log", f"file={w}/chardev.log,level=20"],
    pass_fds=[b.fileno()])
b.close()
for _ in range(300):
    if os.path.exists(f"{w}/chardev.ctrl"): break
    time.sleep(0.02)
def cmd(code, body=b""):
    frame = struct.pack(">HII", 0x8001, 10 + len(body), code) + body
    a.sendall(frame); hdr = a.recv(10); n = struct.unpack(">HII", hdr)[1]
    rest = b""
    while len(rest) < n - 10: rest += a.recv(n - 10 - len(rest))
    return struct.unpack(">HII", hdr)[2]
for _ in range(20): assert cmd(0x17B, struct.pack(">H", 16)) == 0   # GetRandom
subprocess.run(["swtpm_ioctl", "--unix", f"{w}/chardev.ctrl", "-s"], check=True, stdout=subprocess.DEVNULL)
p.wait(timeout=20)
PY
printf '%-22s %s\n' chardev "$(calls chardev "$W/chardev.trace")"

# 5. PostgreSQL registry (PG=1, as root): a clone rekeyed with the registry on a local server, named by host,
#    over TLS, with a password file.
if [[ $PG == 1 ]]; then
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
    PGDATA_DIR=$W/pg
    install -d -o postgres -g postgres "$PGDATA_DIR"
    as_pg=(setpriv --reuid=postgres --regid=postgres --clear-groups)
    "${as_pg[@]}" "$PGBIN/initdb" -D "$PGDATA_DIR/data" -U postgres --auth=trust >/dev/null
    # TLS with a certificate for localhost; vtpmd checks it (verify-full) and reads a password file.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost -keyout "$PGDATA_DIR/data/server.key" -out "$PGDATA_DIR/data/server.crt" 2>/dev/null
    chown postgres:postgres "$PGDATA_DIR/data/server.key" "$PGDATA_DIR/data/server.crt"
    chmod 0600 "$PGDATA_DIR/data/server.key"
    port=$((20000 + RANDOM % 20000))
    "${as_pg[@]}" "$PGBIN/pg_ctl" -D "$PGDATA_DIR/data" -l "$PGDATA_DIR/log" -w \
        -o "-p $port -k $PGDATA_DIR -c listen_addresses=127.0.0.1 -c ssl=on" start >/dev/null
    "${as_pg[@]}" "$PGBIN/psql" -h "$PGDATA_DIR" -p $port -U postgres -qc "CREATE DATABASE vtpm" >/dev/null
    url="postgresql://postgres@localhost:$port/vtpm?sslmode=verify-full&sslrootcert=$PGDATA_DIR/data/server.crt"
    echo "localhost:$port:vtpm:postgres:unused" >"$W/pgpass"
    chmod 0600 "$W/pgpass"
    export PGPASSFILE=$W/pgpass
    cp -a "$W/a.state" "$W/clone-pg.state"
    VM_D=1c0ffee0-0000-4000-8000-00000000000d
    # shellcheck disable=SC2046
    run clone-pg $(socket_args clone-pg) $(identity $VM_D "$url") --ca "$W/ca"
    swtpm_ioctl --unix "$W/clone-pg.data.ctrl" -i >/dev/null
    tpm clone-pg
    for t in permanent volatile; do swtpm_ioctl --unix "$W/clone-pg.data.ctrl" --save "$t" "$W/clone-pg.$t" >/dev/null; done
    finish clone-pg
fi

union=$(for f in "$W"/*.trace; do calls x "$f"; done | tr ' ' '\n' | sed '/^$/d' | sort -u)
echo
echo "union ($(echo "$union" | wc -l)): $(echo "$union" | tr '\n' ' ')"
allowed=$(sed -n '/public static let allowed/,/^    \]/p' Sources/VTPMServer/SeccompProfile.swift | grep -o '"[a-z_0-9]*"' | tr -d '"' | sort -u)
echo "used but not allowed: $(comm -23 <(echo "$union") <(echo "$allowed") | tr '\n' ' ')"
echo "allowed, not seen here: $(comm -13 <(echo "$union") <(echo "$allowed") | tr '\n' ' ')"
