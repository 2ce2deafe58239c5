#!/usr/bin/env bash
# `make fuzz`: every parser that takes outside bytes under libFuzzer (Fuzz/vtpm-fuzz, built with
# -sanitize=fuzzer into .build-fuzz), each target for FUZZ_SECONDS, its corpus seeded from real files that
# vtpmd and vtpm-state write. Then the kept regression inputs (Fuzz/regressions/TARGET/) are replayed by the
# plain build. Prints executions per target; exits 1 when a target crashed (its input is in
# .build-fuzz/findings/) or a regression input fails.
#   FUZZ_SECONDS [60]   FUZZ_TARGETS [all]   FUZZ_JOBS [1]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-60}
ALL="control tpm-frame tpm-response blob-container source-claim state-file migration-blob linear-file identity host-config certificate signer-message libtpms-state"
TARGETS=${FUZZ_TARGETS:-$ALL}
OUT=$PWD/.build-fuzz
export VTPM_FUZZ=1

echo "building vtpm-fuzz with libFuzzer (release, -sanitize=fuzzer)" >&2
swift build -c release -Xswiftc -DFUZZING -Xswiftc -sanitize=fuzzer -Xswiftc -use-ld=lld \
    --scratch-path "$OUT" --product vtpm-fuzz >&2
FUZZER=$OUT/release/vtpm-fuzz
echo "building the replay build and the tools that write the seeds" >&2
swift build --scratch-path "$OUT-replay" --product vtpm-fuzz >&2
REPLAY=$OUT-replay/debug/vtpm-fuzz
swift build --product vtpmd >&2
swift build --product vtpm-state >&2
BIN=$(swift build --show-bin-path)

# ---------------------------------------------------------------- seeds
SEEDS=$(mktemp -d /tmp/vtpm-fuzz-seeds.XXXXXX)
trap 'pkill -f "$SEEDS" 2>/dev/null || true; rm -rf "$SEEDS"' EXIT
corpus() { mkdir -p "$OUT/corpus/$1"; echo "$OUT/corpus/$1"; }
seed() { # seed TARGET FILE
    local dir
    dir=$(corpus "$1")
    cp "$2" "$dir/seed-$(sha256sum "$2" | cut -c1-16)"
}
VM_A=6f1c1a52-3c1e-4a57-9d0e-4f3b2a1c0d9e
VM_B=0b1e7a34-8c2d-4e6f-a1b2-c3d4e5f60718
# The key Targets.key uses: the bytes 0...31, as a hex key file.
python3 -c 'print(bytes(range(32)).hex())' >"$SEEDS/key.hex"
"$BIN/vtpm-state" ca init --ca "$SEEDS/ca" >/dev/null
"$BIN/vtpm-state" create --state "$SEEDS/plain" --vm-id $VM_A --ca "$SEEDS/ca" --registry "$SEEDS/registry.sqlite" >/dev/null
# An encrypted state directory: vtpmd with --key, started and shut down.
mkdir -p "$SEEDS/encrypted"
"$BIN/vtpmd" socket --tpm2 --tpmstate "dir=$SEEDS/encrypted" --ctrl "type=unixio,path=$SEEDS/ctrl0" \
    --server "type=unixio,path=$SEEDS/data0" --key "file=$SEEDS/key.hex,format=hex,mode=aes-256-cbc" \
    --flags not-need-init,startup-clear &
for _ in $(seq 300); do [[ -S $SEEDS/ctrl0 ]] && break; sleep 0.02; done
swtpm_ioctl --unix "$SEEDS/ctrl0" -s >/dev/null || true
sleep 0.2
for f in "$SEEDS"/plain/* "$SEEDS"/encrypted/*; do
    [[ -f $f ]] || continue
    seed state-file "$f"
    seed blob-container "$f"
done
# Blobs as GET_STATEBLOB hands them out (with the source claim), from a running vtpmd.
"$BIN/vtpmd" socket --tpm2 --tpmstate "dir=$SEEDS/plain" --ctrl "type=unixio,path=$SEEDS/ctrl" \
    --server "type=unixio,path=$SEEDS/data" --vm-id $VM_A --ca "$SEEDS/ca" --registry "$SEEDS/registry.sqlite" \
    --host-key "$SEEDS/host.key" --flags not-need-init,startup-clear &
for _ in $(seq 300); do [[ -S $SEEDS/ctrl ]] && break; sleep 0.02; done
for t in permanent volatile; do
    swtpm_ioctl --unix "$SEEDS/ctrl" --save $t "$SEEDS/blob.$t" >/dev/null
    seed source-claim "$SEEDS/blob.$t"
    seed blob-container "$SEEDS/blob.$t"
    # migration-blob: first byte 0 (no flags, no keys), then the blob
    { printf '\000'; cat "$SEEDS/blob.$t"; } >"$SEEDS/mig.$t"
    seed migration-blob "$SEEDS/mig.$t"
done
swtpm_ioctl --unix "$SEEDS/ctrl" -s >/dev/null || true
# A linear state file (swtpm's file:// backend).
"$BIN/vtpmd" socket --tpm2 --tpmstate "backend-uri=file://$SEEDS/linear.img" --ctrl "type=unixio,path=$SEEDS/ctrl2" \
    --server "type=unixio,path=$SEEDS/data2" --flags not-need-init,startup-clear &
for _ in $(seq 300); do [[ -S $SEEDS/ctrl2 ]] && break; sleep 0.02; done
swtpm_ioctl --unix "$SEEDS/ctrl2" -s >/dev/null || true
sleep 0.2
[[ -f $SEEDS/linear.img ]] && seed linear-file "$SEEDS/linear.img"
# Certificates: the CA's, and the EK certificates in the state's NV (DER from the inspector's PEM if present).
openssl x509 -in "$SEEDS/ca/ca.pem" -outform der -out "$SEEDS/ca.der" && seed certificate "$SEEDS/ca.der"
openssl x509 -in "$SEEDS/ca/ca.pem" -pubkey -noout | openssl pkey -pubin -outform der -out "$SEEDS/ca.spki" &&
    seed certificate "$SEEDS/ca.spki"
seed host-config packaging/vtpmd.conf
# The identity: the instance marker vtpm-state wrote, and a bare identity record (no vm-id, generation 1).
for f in "$SEEDS"/plain/*vtpm-instance*; do [[ -f $f ]] && seed identity "$f"; done
printf 'VTPD\000\001\000\000\000\000\000\000\000\000\001\000\000\000\000\000\000\000\000\001\000\002ab' >"$SEEDS/i1" &&
    seed identity "$SEEDS/i1"
# Control streams (first byte: the read size - 1): INIT, then GET_STATEBLOB + SET_BUFFERSIZE pipelined, then GET_INFO
# and a small SET_STATEBLOB and HASH_DATA.
printf '\377\000\000\000\002\000\000\000\001' >"$SEEDS/c1" && seed control "$SEEDS/c1"
printf '\003\000\000\000\014\000\000\000\001\000\000\000\001\000\000\000\000\000\000\000\021\000\000\020\000' >"$SEEDS/c2" &&
    seed control "$SEEDS/c2"
printf '\377\000\000\000\022\000\000\000\000\000\000\000\001\000\000\000\000\000\000\000\000' >"$SEEDS/c3" && seed control "$SEEDS/c3"
printf '\010\000\000\000\015\000\000\000\000\000\000\000\001\000\000\000\003abc\000\000\000\007\000\000\000\002xy' >"$SEEDS/c4" &&
    seed control "$SEEDS/c4"
# Data streams (first byte: read size - 1, bit 0 also allows TPM_SEND_COMMAND): GetRandom, plain and framed.
printf '\377\200\001\000\000\000\014\000\000\001\173\000\010' >"$SEEDS/f1" && seed tpm-frame "$SEEDS/f1"
printf '\004\000\000\000\010\003\000\000\000\014\200\001\000\000\000\014\000\000\001\173\000\010' >"$SEEDS/f2" &&
    seed tpm-frame "$SEEDS/f2"
# libtpms' own blobs, from a TPM libtpms manufactures in the replay build.
"$REPLAY" --seeds libtpms-state "$(corpus libtpms-state)" >&2
# TPM responses: a GetRandom answer; the signer's messages: a CA-certificate request.
printf '\200\001\000\000\000\024\000\000\000\000\000\010abcdefgh' >"$SEEDS/r1" && seed tpm-response "$SEEDS/r1"
printf '\001\002' >"$SEEDS/s1" && seed signer-message "$SEEDS/s1"

# ---------------------------------------------------------------- fuzzing
mkdir -p "$OUT/findings" "$OUT/logs"
printf '%-16s %12s %10s %8s %8s  %s\n' target executions "exec/s" corpus crashes result
FAILED=0
for t in $TARGETS; do
    dir=$(corpus "$t")
    log=$OUT/logs/$t.log
    set +e
    VTPM_FUZZ_TARGET=$t "$FUZZER" -max_total_time="$SECONDS_EACH" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$OUT/findings/$t-" "$dir" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    crashes=$(find "$OUT/findings" -name "$t-*" | wc -l)
    result=ok
    if ((rc != 0)); then result="FAILED (rc $rc, see $log)"; FAILED=1; fi
    printf '%-16s %12s %10s %8s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$(find "$dir" -type f | wc -l)" "$crashes" "$result"
done

# ---------------------------------------------------------------- regressions
for dir in Fuzz/regressions/*/; do
    [[ -d $dir ]] || continue
    t=$(basename "$dir")
    "$REPLAY" "$t" "$dir" || { echo "regression inputs of $t fail" >&2; FAILED=1; }
done
exit $FAILED
