#!/usr/bin/env bash
# bench/run.sh - compare the loopback floor, swtpm and vtpmd over the TCP
# data channel.  Builds bench/out/tpmbench, then runs ROUNDS interleaved
# rounds and prints medians.  Output: stdout and bench/out/results.txt
# (per-run lines in bench/out/raw.txt, server logs in bench/out/*.log).
#
# Environment knobs (defaults in brackets):
#   VTPMD        vtpmd binary [/work/main/.build/release/vtpmd]; skipped if missing
#   VTPMD_ARGS   extra arguments appended to vtpmd's command line [none],
#                word-split, e.g. VTPMD_ARGS='--some-flag off'
#   SWTPM        swtpm binary [/usr/bin/swtpm]
#   SERVERS      which servers to run ["floor swtpm vtpmd vtpmd-nofsync"]; also
#                vtpmd-noseccomp: vtpmd with --seccomp action=none (the filter's own cost; vtpmd and
#                swtpm both filter by default),
#                vtpmd-config: vtpmd with swtpm's command line and clone-rekey from a host
#                configuration file (--config; vm-id-from the state path, host CA, registry)
#   OPS          ["getrandom pcrextend createprimary nvincrement"]
#   ROUNDS       interleaved rounds, median taken [3]
#   N_GETRANDOM [20000] N_PCREXTEND [20000] N_CREATEPRIMARY [300] N_NVINCREMENT [2000]
#   WARMUP       warm-up commands per run [tpmbench default: min(count/10,100)]
#   RSS_COUNT    mixed commands before sampling VmRSS [10000]
#   SPAWN_REPEAT spawns per server per round and state mode [10]
#   PIN          split: client on CPU CLIENT_CPU, servers on SERVER_CPU [default]
#                same:  client and servers all on CLIENT_CPU
#                none:  no pinning (scheduler decides; noisy on 2 vCPUs)
#   CLIENT_CPU [0]  SERVER_CPU [1]
#   MAX_STALL_PCT  a timed run during which some task waited for a CPU
#                more than this % of the time (/proc/pressure/cpu "some") is
#                repeated, up to MAX_RETRIES [2] times [25 with PIN=split,
#                off otherwise]; the stall % is logged per run in raw.txt.
#                Cross-CPU ping-pong alone shows ~10-15% here (runqueue wait
#                while an idle vCPU wakes up); another busy process, 30-60%.
#   WAIT_IDLE    before each round wait up to this many seconds for a 1-s
#                window with >= 90% CPU idle (other builds running) [0 = don't]
#   Clone-rekey section (after the rounds; needs vtpmd, savevm also swtpm):
#   REKEY        1 runs it, 0 skips it [1]
#   REKEY_COUNT  clones loaded into one destination vtpmd [30]
#   SAVEVM_COUNT savevm rounds (GET_STATEBLOB types 1, 2, 3) per server [100]
#   SETUP_REPEAT timed swtpm_setup --create-ek-cert runs [10]
#   SWTPM_SETUP  swtpm_setup binary [/usr/bin/swtpm_setup]; its row is skipped if missing
#   State tool section (after clone-rekey): vtpm-state create vs swtpm_setup --create-ek-cert,
#   interleaved, on the server CPU:
#   STATETOOL    1 runs it, 0 skips it [1]
#   STATETOOL_REPEAT  timed runs of each [10]
#   VTPM_STATE   vtpm-state binary [vtpm-state beside $VTPMD]; the section is skipped if missing
#   Cluster registry (issue 9): with PostgreSQL installed and run as root, a private PostgreSQL on
#   loopback (initdb in the run's temporary directory as the postgres user) serves as the registry of
#   a second savevm and rekey row beside SQLite's, and of the storm:
#   PG           1 uses PostgreSQL when it is there, 0 never [1]
#   STORM        1 runs the storm section, 0 skips it [1]: STORM_VMS vtpmd (blank TPMs, one registry)
#                take STORM_ROUNDS savevm + loadvm at once while one more VM runs GetRandom
#   STORM_VMS [200]  STORM_ROUNDS [2]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=$HERE/out
TB=$OUT/tpmbench
# With swift-vtpm's package installed, swtpm's own programs are the diverted *.distrib ones.
SWTPM_DEFAULT=/usr/bin/swtpm
[[ -x /usr/bin/swtpm.distrib ]] && SWTPM_DEFAULT=/usr/bin/swtpm.distrib
SWTPM=${SWTPM:-$SWTPM_DEFAULT}
VTPMD=${VTPMD:-/work/main/.build/release/vtpmd}
read -r -a VTPMD_EXTRA <<< "${VTPMD_ARGS:-}"
SERVERS=${SERVERS:-"floor swtpm vtpmd vtpmd-nofsync"}
OPS=${OPS:-"getrandom pcrextend createprimary nvincrement"}
ROUNDS=${ROUNDS:-3}
N_GETRANDOM=${N_GETRANDOM:-20000}
N_PCREXTEND=${N_PCREXTEND:-20000}
N_CREATEPRIMARY=${N_CREATEPRIMARY:-300}
N_NVINCREMENT=${N_NVINCREMENT:-2000}
RSS_COUNT=${RSS_COUNT:-10000}
SPAWN_REPEAT=${SPAWN_REPEAT:-10}
PIN=${PIN:-split}
CLIENT_CPU=${CLIENT_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
REKEY=${REKEY:-1}
REKEY_COUNT=${REKEY_COUNT:-30}
SAVEVM_COUNT=${SAVEVM_COUNT:-100}
SETUP_REPEAT=${SETUP_REPEAT:-10}
SWTPM_SETUP_DEFAULT=/usr/bin/swtpm_setup
[[ -x /usr/bin/swtpm_setup.distrib ]] && SWTPM_SETUP_DEFAULT=/usr/bin/swtpm_setup.distrib
SWTPM_SETUP=${SWTPM_SETUP:-$SWTPM_SETUP_DEFAULT}
STATETOOL=${STATETOOL:-1}
STATETOOL_REPEAT=${STATETOOL_REPEAT:-10}
PG=${PG:-1}
STORM=${STORM:-1}
STORM_VMS=${STORM_VMS:-200}
STORM_ROUNDS=${STORM_ROUNDS:-2}
VTPM_STATE=${VTPM_STATE:-$(dirname "$VTPMD")/vtpm-state}
# vm-ids of the clone-rekey section: source, destination, savevm
VM_SRC=0a0a0a0a-0000-4000-8000-0000000000a1
VM_DST=0b0b0b0b-0000-4000-8000-0000000000b2
VM_SAVE=0c0c0c0c-0000-4000-8000-0000000000c3

mkdir -p "$OUT"
RESULTS=$OUT/results.txt
RAW=$OUT/raw.txt
: > "$RAW"

die() { echo "run.sh: $*" >&2; exit 1; }

# ---------------------------------------------------------------- build
gcc -O2 -Wall -Wextra -pthread -o "$TB" "$HERE/tpmbench.c" || die "building tpmbench failed"

# A release binary older than the sources measures old code.
if [[ -x $VTPMD && -d $HERE/../Sources ]] && [[ -n $(find "$HERE/../Sources" -type f -newer "$VTPMD" -print -quit) ]]; then
    echo "WARNING: $VTPMD is older than $(cd "$HERE/.." && pwd)/Sources - run 'make release' first" >&2
fi

# ---------------------------------------------------------------- servers to run
ACTIVE=()
for s in $SERVERS; do
    case $s in
    floor) ACTIVE+=(floor) ;;
    swtpm)
        if [[ -x $SWTPM ]]; then ACTIVE+=(swtpm); else echo "swtpm not found at $SWTPM - skipping it" >&2; fi ;;
    vtpmd | vtpmd-nofsync | vtpmd-noseccomp | vtpmd-config)
        if [[ -x $VTPMD ]]; then ACTIVE+=("$s"); else echo "vtpmd not found at $VTPMD (not built yet?) - skipping it" >&2; fi ;;
    *) die "unknown server '$s'" ;;
    esac
done
((${#ACTIVE[@]} > 0)) || die "no server to benchmark"

if [[ $PIN == split ]]; then MAX_STALL_PCT=${MAX_STALL_PCT:-25}; else MAX_STALL_PCT=${MAX_STALL_PCT:-off}; fi
MAX_RETRIES=${MAX_RETRIES:-2}
[[ -r /proc/pressure/cpu ]] || MAX_STALL_PCT=off

case $PIN in
split) CL_PIN=(taskset -c "$CLIENT_CPU"); SV_PIN=(taskset -c "$SERVER_CPU"); SV_CPU=$SERVER_CPU ;;
same)  CL_PIN=(taskset -c "$CLIENT_CPU"); SV_PIN=(taskset -c "$CLIENT_CPU"); SV_CPU=$CLIENT_CPU ;;
none)  CL_PIN=(); SV_PIN=(); SV_CPU= ;;
*) die "PIN must be split, same or none" ;;
esac

# ---------------------------------------------------------------- process bookkeeping
TMPROOT=$(mktemp -d /tmp/tpmbench-run.XXXXXX)
PIDS=()
IDDIR=$TMPROOT/identity
mkdir -p "$IDDIR"
# tpmbench's spawn state directories go here too, so vtpmd-config's vm-id-from matches every state dir
export TMPDIR=$TMPROOT
if [[ " ${ACTIVE[*]} " == *" vtpmd-config "* ]]; then
    [[ -x $VTPM_STATE ]] || die "vtpmd-config needs vtpm-state (VTPM_STATE) to create the host CA"
    "$VTPM_STATE" ca init --ca "$IDDIR/ca" >/dev/null || die "vtpm-state ca init failed"
    printf 'vm-id-from = %s/{name}\nca = %s/ca\nregistry = %s/registry.sqlite\nhost-key = %s/host.key\n' \
        "$TMPROOT" "$IDDIR" "$IDDIR" "$IDDIR" > "$IDDIR/vtpmd.conf"
    chmod 644 "$IDDIR/vtpmd.conf"
fi

cleanup() {
    local pid
    if [[ -n ${PG_DIR:-} ]]; then
        setpriv --reuid postgres --regid postgres --init-groups -- "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate \
            -w stop >/dev/null 2>&1 || true
        rm -rf "$PG_DIR"
    fi
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
    rm -rf "$TMPROOT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_busy() { [[ -n $(ss -Htan "( sport = :$1 )" 2>/dev/null) ]]; }

# Even base port P with P and P+1 unused, below the ephemeral range.
pick_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + (RANDOM % 6000) * 2))
        if ! port_busy "$p" && ! port_busy $((p + 1)); then
            echo "$p"
            return 0
        fi
    done
    die "no free port pair found"
}

# A private PostgreSQL for the registry rows (sets PG_URL), when PG=1, we are root and it is installed.
PG_URL="" PG_DIR="" PG_BIN=""
start_postgres() {
    [[ $PG != 0 && $(id -u) -eq 0 ]] || return 0
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [[ -n $PG_BIN && -x $PG_BIN/postgres ]] || { echo "PostgreSQL not installed - SQLite rows only" >&2; return 0; }
    # (not under TMPROOT, which only root may enter)
    PG_DIR=$(mktemp -d /tmp/tpmbench-pg.XXXXXX)
    chown postgres:postgres "$PG_DIR"
    local as_pg=(setpriv --reuid postgres --regid postgres --init-groups --) port
    "${as_pg[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres >"$OUT/postgres.log" 2>&1 ||
        die "initdb failed (see $OUT/postgres.log)"
    port=$(pick_port)
    "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w \
        -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=$((STORM_VMS + 50))" start \
        </dev/null >>"$OUT/postgres.log" 2>&1 || { cat "$PG_DIR/server.log" >>"$OUT/postgres.log" 2>/dev/null
        die "PostgreSQL did not start (see $OUT/postgres.log)"; }
    "${as_pg[@]}" "$PG_BIN/psql" -h "$PG_DIR" -p "$port" -U postgres -qc "CREATE DATABASE vtpm" >/dev/null ||
        die "CREATE DATABASE failed"
    PG_URL="postgresql://postgres@127.0.0.1:$port/vtpm?sslmode=disable"
    echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
}

# server_cmd NAME PORT STATEDIR -> fills array CMD
server_cmd() {
    local name=$1 port=$2 dir=$3
    case $name in
    floor) CMD=("$TB" floor-server --port "$port") ;;
    swtpm) CMD=("$SWTPM" socket --tpm2 --tpmstate "dir=$dir" --server "type=tcp,port=$port"
                --ctrl "type=tcp,port=$((port + 1))" --flags not-need-init,startup-clear) ;;
    vtpmd) CMD=("$VTPMD" socket --tpm2 --tpmstate "dir=$dir" --server "type=tcp,port=$port"
                --ctrl "type=tcp,port=$((port + 1))" --flags not-need-init,startup-clear
                ${VTPMD_EXTRA[@]+"${VTPMD_EXTRA[@]}"}) ;;
    # clone-rekey on (issue 3): one host CA, registry and host key shared by all of
    # them (same host); the decision log goes to $OUT/NAME.events.log
    # (the -pg ones: the registry in PostgreSQL)
    # (the -signer ones: certificates from the separated CA signer, vtpm-state ca serve)
    vtpmd-id-src | vtpmd-id-dst | vtpmd-id | vtpmd-id-src-pg | vtpmd-id-dst-pg | vtpmd-id-pg | \
        vtpmd-id-src-signer | vtpmd-id-dst-signer)
        local vm=$VM_SAVE registry=$IDDIR/registry.sqlite ca=(--ca "$IDDIR/ca")
        [[ $name == *-pg ]] && registry=$PG_URL
        [[ $name == *-signer ]] && ca=(--ca-signer "$IDDIR/ca-signer.sock")
        [[ $name == vtpmd-id-src* ]] && vm=$VM_SRC
        [[ $name == vtpmd-id-dst* ]] && vm=$VM_DST
        CMD=("$VTPMD" socket --tpm2 --tpmstate "dir=$dir" --server "type=tcp,port=$port"
                --ctrl "type=tcp,port=$((port + 1))" --flags not-need-init,startup-clear
                --vm-id "$vm" "${ca[@]}" --registry "$registry" --host-key "$IDDIR/host.key"
                --log "file=$OUT/$name.events.log,level=2"
                ${VTPMD_EXTRA[@]+"${VTPMD_EXTRA[@]}"}) ;;
    # swtpm's command line, clone-rekey from the host configuration: the vm-id is the state directory's
    # name ($TMPROOT/NAME), a fresh state is provisioned (EKs, certificates)
    vtpmd-config) CMD=("$VTPMD" socket --tpm2 --tpmstate "dir=$dir" --server "type=tcp,port=$port"
                --ctrl "type=tcp,port=$((port + 1))" --flags not-need-init,startup-clear --config "$IDDIR/vtpmd.conf"
                ${VTPMD_EXTRA[@]+"${VTPMD_EXTRA[@]}"}) ;;
    # the same vtpmd with durable writes turned off (swtpm 0.7.1 never fsyncs)
    # the same vtpmd without its seccomp filter
    vtpmd-noseccomp) CMD=("$VTPMD" socket --tpm2 --tpmstate "dir=$dir" --server "type=tcp,port=$port"
                --ctrl "type=tcp,port=$((port + 1))" --flags not-need-init,startup-clear --seccomp action=none
                ${VTPMD_EXTRA[@]+"${VTPMD_EXTRA[@]}"}) ;;
    vtpmd-nofsync) CMD=("$VTPMD" socket --tpm2 --tpmstate "dir=$dir,fsync=off" --server "type=tcp,port=$port"
                --ctrl "type=tcp,port=$((port + 1))" --flags not-need-init,startup-clear
                ${VTPMD_EXTRA[@]+"${VTPMD_EXTRA[@]}"}) ;;
    esac
}

declare -A SPID SPORT SDIR

# start_server NAME: fresh state dir, fresh ports; waits until it listens.
start_server() {
    local name=$1 port dir pid
    port=$(pick_port)
    dir=$(mktemp -d "$TMPROOT/$name-state.XXXXXX")
    server_cmd "$name" "$port" "$dir"
    ${SV_PIN[@]+"${SV_PIN[@]}"} "${CMD[@]}" >>"$OUT/$name.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    SPID[$name]=$pid SPORT[$name]=$port SDIR[$name]=$dir
    # the data port, and for real servers the control port (P+1) too
    local want=1 ports="sport = :$port"
    [[ $name == floor ]] || { want=2; ports+=" or sport = :$((port + 1))"; }
    for _ in $(seq 1000); do
        if (($(ss -Hltn "( $ports )" 2>/dev/null | wc -l) >= want)); then return 0; fi
        kill -0 "$pid" 2>/dev/null || die "$name exited at start-up (see $OUT/$name.log): ${CMD[*]}"
        sleep 0.01
    done
    die "$name did not listen on port $port within 10 s"
}

stop_server() {
    local name=$1 pid=${SPID[$1]} p keep=()
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=(${keep[@]+"${keep[@]}"})
    rm -rf "${SDIR[$name]}"
}

client() { ${CL_PIN[@]+"${CL_PIN[@]}"} "$TB" "$@"; }

psi_some_us() { if [[ -r /proc/pressure/cpu ]]; then awk -F'total=' '/^some/ { print $2; exit }' /proc/pressure/cpu; else echo 0; fi; }

RETRIES_TOTAL=0
DISTURBED=0
# measure ARGS... : runs the client, sets LINE (output + stall_pct=...);
# repeats the run while the CPU-pressure stall exceeds MAX_STALL_PCT.
measure() {
    local tries=0 s0 s1 t0 t1 stall
    while :; do
        s0=$(psi_some_us); t0=$(date +%s%N)
        LINE=$(client "$@") || return 1
        s1=$(psi_some_us); t1=$(date +%s%N)
        stall=$(awk -v s="$((s1 - s0))" -v t="$(((t1 - t0) / 1000))" 'BEGIN { printf "%.1f", (t > 0 ? 100 * s / t : 0) }')
        LINE+=" stall_pct=$stall"
        [[ $MAX_STALL_PCT == off ]] && return 0
        awk -v a="$stall" -v b="$MAX_STALL_PCT" 'BEGIN { exit !(a <= b) }' && return 0
        if ((tries >= MAX_RETRIES)); then
            DISTURBED=$((DISTURBED + 1))
            echo "  still disturbed after $tries retries (stall ${stall}%), keeping: $LINE" >&2
            return 0
        fi
        tries=$((tries + 1)); RETRIES_TOTAL=$((RETRIES_TOTAL + 1))
        echo "  disturbed (CPU stall ${stall}%), repeating: $*" >&2
        sleep 2
    done
}

# field NAME LINE -> value of NAME=... in a key=value line
field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<< "$2"; }

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

count_for() {
    case $1 in
    getrandom) echo "$N_GETRANDOM" ;;
    pcrextend) echo "$N_PCREXTEND" ;;
    createprimary) echo "$N_CREATEPRIMARY" ;;
    nvincrement) echo "$N_NVINCREMENT" ;;
    *) die "unknown op $1" ;;
    esac
}

declare -A OPS_V P50_V P99_V RSS_V RSS0_V SPAWN_E_V SPAWN_F_V

record() { # record ROUND SERVER WHAT LINE
    echo "round=$1 server=$2 what=$3 $4" >> "$RAW"
}

# ---------------------------------------------------------------- header
# CPU idle share over one second before we start: the figures are only
# meaningful on an otherwise idle machine (2 vCPUs here).
cpu_idle_pct() {
    local a b
    read -r -a a < /proc/stat; sleep 1; read -r -a b < /proc/stat
    awk -v i0="${a[4]}" -v w0="${a[5]}" -v i1="${b[4]}" -v w1="${b[5]}" \
        -v t0="$(IFS=+; echo $((${a[*]:1})))" -v t1="$(IFS=+; echo $((${b[*]:1})))" \
        'BEGIN { printf "%.0f", 100 * ((i1 + w1) - (i0 + w0)) / (t1 - t0) }'
}
# wait_idle: sets IDLE; waits up to WAIT_IDLE s for an idle machine
wait_idle() {
    local deadline=$((SECONDS + ${WAIT_IDLE:-0}))
    IDLE=$(cpu_idle_pct)
    while ((IDLE < 90 && SECONDS < deadline)); do
        echo "  machine busy (${IDLE}% idle), waiting..." >&2
        sleep 4
        IDLE=$(cpu_idle_pct)
    done
}
wait_idle
ROUND_IDLE=()
{
    echo "tpmbench comparison  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(nproc) CPUs, $(uname -r), loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg), CPU idle in the last second: ${IDLE}%"
    if ((IDLE < 90)); then
        echo "WARNING: the machine is busy ($(head -1 /proc/pressure/cpu 2>/dev/null)) - numbers will be noisy; try WAIT_IDLE=600"
    fi
    echo "servers: ${ACTIVE[*]}   pinning: $PIN (client CPU ${CLIENT_CPU}, server CPU ${SV_CPU:-any})"
    echo "swtpm: $SWTPM   vtpmd: $VTPMD ${VTPMD_ARGS:-}"
    echo "rounds: $ROUNDS   counts: getrandom=$N_GETRANDOM pcrextend=$N_PCREXTEND createprimary=$N_CREATEPRIMARY nvincrement=$N_NVINCREMENT rss=$RSS_COUNT spawn=$SPAWN_REPEAT"
} | tee "$RESULTS"

# ---------------------------------------------------------------- rounds
n=${#ACTIVE[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    # rotate the server order every round
    ORDER=()
    for ((i = 0; i < n; i++)); do ORDER+=("${ACTIVE[$(((i + r - 1) % n))]}"); done
    ((r == 1)) || wait_idle
    ROUND_IDLE+=("${IDLE}%")
    echo "round $r/$ROUNDS (order: ${ORDER[*]}, CPU idle before: ${IDLE}%)" >&2

    # throughput/latency: all servers up, ops interleaved across servers
    for s in "${ORDER[@]}"; do start_server "$s"; done
    for op in $OPS; do
        cnt=$(count_for "$op")
        for s in "${ORDER[@]}"; do
            args=(cmd --port "${SPORT[$s]}" --op "$op" --count "$cnt")
            [[ -n ${WARMUP:-} ]] && args+=(--warmup "$WARMUP")
            measure "${args[@]}" || die "tpmbench $op against $s failed"
            line=$LINE
            record "$r" "$s" "$op" "$line"
            echo "  $s $line" >&2
            OPS_V[$s,$op]+=" $(field ops_per_sec "$line")"
            P50_V[$s,$op]+=" $(field p50_us "$line")"
            P99_V[$s,$op]+=" $(field p99_us "$line")"
        done
    done
    for s in "${ORDER[@]}"; do stop_server "$s"; done

    # RSS after RSS_COUNT mixed commands, each on a fresh server
    for s in "${ORDER[@]}"; do
        start_server "$s"
        rss0=$(awk '/^VmRSS:/ {print $2}' "/proc/${SPID[$s]}/status")
        line=$(client rss --port "${SPORT[$s]}" --count "$RSS_COUNT") || die "tpmbench rss against $s failed"
        rss1=$(awk '/^VmRSS:/ {print $2}' "/proc/${SPID[$s]}/status")
        hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/${SPID[$s]}/status")
        record "$r" "$s" rss "$line rss_start_kib=$rss0 rss_after_kib=$rss1 hwm_kib=$hwm"
        echo "  $s rss: start ${rss0} KiB, after ${rss1} KiB (HWM ${hwm})" >&2
        RSS0_V[$s]+=" $rss0"
        RSS_V[$s]+=" $rss1"
        stop_server "$s"
    done

    # spawn-to-first-response, existing state and fresh state
    for s in "${ORDER[@]}"; do
        port=$(pick_port)
        server_cmd "$s" "$port" @STATEDIR@
        sargs=(spawn --port "$port" --repeat "$SPAWN_REPEAT")
        [[ -n $SV_CPU ]] && sargs+=(--server-cpu "$SV_CPU")
        measure "${sargs[@]}" -- "${CMD[@]}" 2>>"$OUT/$s.log" || die "tpmbench spawn of $s failed"
        line=$LINE
        record "$r" "$s" spawn-existing "$line"
        SPAWN_E_V[$s]+=" $(field p50_ms "$line")"
        measure "${sargs[@]}" --fresh-state -- "${CMD[@]}" 2>>"$OUT/$s.log" || die "tpmbench spawn of $s failed"
        line=$LINE
        record "$r" "$s" spawn-fresh "$line"
        SPAWN_F_V[$s]+=" $(field p50_ms "$line")"
        echo "  $s spawn p50: existing ${SPAWN_E_V[$s]##* } ms, fresh ${SPAWN_F_V[$s]##* } ms" >&2
    done
done

# ---------------------------------------------------------------- report
med() { # med ARRAYNAME KEY
    local -n arr=$1
    if [[ -n ${arr[$2]+x} ]]; then median ${arr[$2]}; else echo "-"; fi
}
ratio() { # a/b, "-" if either missing
    if [[ $1 == "-" || $2 == "-" ]]; then echo "-"; else awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.3f", a / b }'; fi
}
fmt() { if [[ $1 == "-" ]]; then echo "-"; else printf "%.${2:-0}f" "$1"; fi; }

{
    echo
    echo "CPU idle in the second before each round: ${ROUND_IDLE[*]}"
    echo "measurements repeated because of CPU contention (stall > ${MAX_STALL_PCT}%): $RETRIES_TOTAL; still disturbed after retries: $DISTURBED"
    echo
    echo "Throughput (ops/s, median of $ROUNDS rounds; createprimary = CreatePrimary+FlushContext pairs/s)"
    printf '%-14s %11s %11s %11s %12s %12s %12s\n' op floor swtpm vtpmd vtpmd/swtpm vtpmd/floor swtpm/floor
    for op in $OPS; do
        f=$(med OPS_V "floor,$op"); w=$(med OPS_V "swtpm,$op"); v=$(med OPS_V "vtpmd,$op")
        printf '%-14s %11s %11s %11s %12s %12s %12s\n' "$op" "$(fmt "$f")" "$(fmt "$w")" "$(fmt "$v")" \
            "$(ratio "$v" "$w")" "$(ratio "$v" "$f")" "$(ratio "$w" "$f")"
    done
    if [[ " ${ACTIVE[*]} " == *" vtpmd-nofsync "* ]]; then
        echo
        echo "vtpmd with fsync=off (durable writes off; swtpm 0.7.1 never fsyncs)"
        printf '%-14s %11s %11s %16s %16s\n' op swtpm nofsync nofsync/swtpm nofsync/floor
        for op in $OPS; do
            f=$(med OPS_V "floor,$op"); w=$(med OPS_V "swtpm,$op"); v=$(med OPS_V "vtpmd-nofsync,$op")
            printf '%-14s %11s %11s %16s %16s\n' "$op" "$(fmt "$w")" "$(fmt "$v")" "$(ratio "$v" "$w")" "$(ratio "$v" "$f")"
        done
    fi
    if [[ " ${ACTIVE[*]} " == *" vtpmd-noseccomp "* ]]; then
        echo
        echo "vtpmd without its seccomp filter (--seccomp action=none; vtpmd and swtpm filter by default)"
        printf '%-14s %11s %11s %11s %16s %16s\n' op swtpm vtpmd noseccomp vtpmd/noseccomp noseccomp/swtpm
        for op in $OPS; do
            w=$(med OPS_V "swtpm,$op"); v=$(med OPS_V "vtpmd,$op"); n=$(med OPS_V "vtpmd-noseccomp,$op")
            printf '%-14s %11s %11s %11s %16s %16s\n' "$op" "$(fmt "$w")" "$(fmt "$v")" "$(fmt "$n")" \
                "$(ratio "$v" "$n")" "$(ratio "$n" "$w")"
        done
    fi
    echo
    echo "Latency per command (us, median over rounds of each run's p50 / p99; createprimary excludes the flush)"
    printf '%-14s %17s %17s %17s\n' op floor swtpm vtpmd
    for op in $OPS; do
        row=()
        for s in floor swtpm vtpmd; do
            a=$(med P50_V "$s,$op"); b=$(med P99_V "$s,$op")
            if [[ $a == "-" ]]; then row+=("-"); else row+=("$(fmt "$a" 1) / $(fmt "$b" 1)"); fi
        done
        printf '%-14s %17s %17s %17s\n' "$op" "${row[@]}"
    done
    echo
    echo "Process metrics (median of $ROUNDS rounds)"
    printf '%-44s %10s %10s %10s %12s %12s\n' metric floor swtpm vtpmd vtpmd/swtpm vtpmd/floor
    for m in "spawn-to-first-response, existing state (ms)|SPAWN_E_V|2" \
             "spawn-to-first-response, fresh state (ms)|SPAWN_F_V|2" \
             "VmRSS at start (KiB)|RSS0_V|0" \
             "VmRSS after $RSS_COUNT mixed cmds (KiB)|RSS_V|0"; do
        IFS='|' read -r label arrname prec <<< "$m"
        f=$(med "$arrname" floor); w=$(med "$arrname" swtpm); v=$(med "$arrname" vtpmd)
        printf '%-44s %10s %10s %10s %12s %12s\n' "$label" "$(fmt "$f" "$prec")" "$(fmt "$w" "$prec")" \
            "$(fmt "$v" "$prec")" "$(ratio "$v" "$w")" "$(ratio "$v" "$f")"
    done
    if [[ " ${ACTIVE[*]} " == *" vtpmd-config "* ]]; then
        echo
        echo "vtpmd-config: swtpm's command line + --config (vm-id-from the state path, host CA, registry, host key)"
        printf '%-44s %10s %10s %14s %14s\n' metric swtpm config config/swtpm config/vtpmd
        for m in "spawn-to-first-response, existing state (ms)|SPAWN_E_V" \
                 "spawn-to-first-response, fresh state (ms)|SPAWN_F_V"; do
            IFS='|' read -r label arrname <<< "$m"
            w=$(med "$arrname" swtpm); v=$(med "$arrname" vtpmd); c=$(med "$arrname" vtpmd-config)
            printf '%-44s %10s %10s %14s %14s\n' "$label" "$(fmt "$w" 2)" "$(fmt "$c" 2)" "$(ratio "$c" "$w")" \
                "$(ratio "$c" "$v")"
        done
        echo "(fresh state: vtpmd-config provisions the TPM - EKs, EK certificates, identity indices - which swtpm"
        echo " leaves to swtpm_setup; existing state: the decision at start, registry and host key included)"
    fi
} | tee -a "$RESULTS"

# ---------------------------------------------------------------- clone-rekey and savevm
# 1. savevm: GET_STATEBLOB types 1, 2, 3 after one TPM command, SAVEVM_COUNT rounds, swtpm
#    vs vtpmd with clone-rekey on (source claim + registry checkpoint) and, to attribute
#    the difference, vtpmd with it off.
# 2. rekey: a source vtpmd hands out its blobs once; a destination vtpmd with another
#    vm-id loads them REKEY_COUNT times (STOP + SET_STATEBLOB x2 + INIT(1)), every load a
#    clone (the claim names the source, never the destination), timed in tpmbench from the
#    first SET_STATEBLOB to the INIT reply; beside it swtpm_setup re-manufacturing a TPM
#    (new EKs and EK certificates), the alternative without vtpmd.
REKEY_LINE="" SETUP_MS=()
if [[ $REKEY != 0 ]]; then
    if [[ ! -x $VTPMD ]]; then
        echo "vtpmd not found at $VTPMD - skipping the clone-rekey section" | tee -a "$RESULTS"
    else
        echo "clone-rekey section" >&2
        start_postgres
        for s in vtpmd-id-src vtpmd-id-dst vtpmd-id vtpmd-id-src-pg vtpmd-id-dst-pg vtpmd-id-pg; do
            : > "$OUT/$s.events.log"
        done

        # savevm cost, each server fresh (first: the rekey runs below leave disk writeback behind)
        SAVE_SERVERS=(vtpmd-id vtpmd)
        [[ -n $PG_URL ]] && SAVE_SERVERS=(vtpmd-id vtpmd-id-pg vtpmd)
        [[ -x $SWTPM ]] && SAVE_SERVERS=(swtpm "${SAVE_SERVERS[@]}")
        declare -A SAVE_V
        for s in "${SAVE_SERVERS[@]}"; do
            start_server "$s"
            measure savevm --ctrl $((${SPORT[$s]} + 1)) --data "${SPORT[$s]}" --count "$SAVEVM_COUNT" ||
                die "tpmbench savevm against $s failed"
            SAVE_V[$s]=$LINE
            stop_server "$s"
            record 0 "$s" savevm "$LINE"
            echo "  $s $LINE" >&2
        done

        # rekey_run SUFFIX LABEL: a source and a destination vtpmd (vtpmd-id-src$SUFFIX, vtpmd-id-dst$SUFFIX),
        # REKEY_COUNT clones; sets LINE and checks that the destination logged every decision=clone.
        # The destination's start-up (decision=manufacture) is not counted (not through measure: a repeated
        # run would load more clones than counted).
        rekey_run() {
            local src=vtpmd-id-src$1 dst=vtpmd-id-dst$1 clones
            start_server "$src"
            start_server "$dst"
            LINE=$(client rekey --src-ctrl $((${SPORT[$src]} + 1)) --dst-ctrl $((${SPORT[$dst]} + 1)) \
                --dst-data "${SPORT[$dst]}" --count "$REKEY_COUNT") || die "tpmbench rekey ($2) failed"
            stop_server "$dst"
            stop_server "$src"
            record 0 "vtpmd$1" rekey "$LINE"
            echo "  vtpmd ($2) $LINE" >&2
            clones=$(grep -c 'clone-rekey decision decision=clone ' "$OUT/$dst.events.log" || true)
            ((clones == REKEY_COUNT)) ||
                die "$2: the destination logged $clones decision=clone lines, expected $REKEY_COUNT (see $OUT/$dst.events.log)"
        }
        rekey_run "" "SQLite registry"
        REKEY_LINE=$LINE
        CLONES=$REKEY_COUNT
        SERVER_MS=$(median $(sed -n 's/.*decision=clone duration_ms=\([0-9.]*\).*/\1/p' "$OUT/vtpmd-id-dst.events.log"))
        REKEY_PG_LINE=""
        if [[ -n $PG_URL ]]; then
            rekey_run -pg "PostgreSQL registry"
            REKEY_PG_LINE=$LINE
        fi

        # the same with the separated CA signer (one process, same user here: this measures the round trip
        # and the registry record of the EKs before the certificates are asked for)
        REKEY_SIGNER_LINE=""
        if [[ -x $VTPM_STATE ]]; then
            [[ -f $IDDIR/ca/ca.pem ]] || "$VTPM_STATE" ca init --ca "$IDDIR/ca" >/dev/null || die "ca init failed"
            for s in vtpmd-id-src-signer vtpmd-id-dst-signer; do : > "$OUT/$s.events.log"; done
            ${SV_PIN[@]+"${SV_PIN[@]}"} "$VTPM_STATE" ca serve --ca "$IDDIR/ca" --registry "$IDDIR/registry.sqlite" \
                --socket "$IDDIR/ca-signer.sock" >>"$OUT/ca-signer.log" 2>&1 &
            SIGNER_PID=$!
            PIDS+=("$SIGNER_PID")
            for _ in $(seq 500); do [[ -S $IDDIR/ca-signer.sock ]] && break; sleep 0.01; done
            rekey_run -signer "separated CA signer"
            REKEY_SIGNER_LINE=$LINE
            kill "$SIGNER_PID" 2>/dev/null || true
            ISSUED=$(grep -c 'issued EK certificate' "$OUT/ca-signer.log" || true)
            ((ISSUED >= 2 * REKEY_COUNT)) ||
                die "separated signer: $ISSUED certificates for $REKEY_COUNT clones (see $OUT/ca-signer.log)"
        fi

        # re-manufacturing with swtpm_setup (same server CPU as vtpmd)
        if [[ -x $SWTPM_SETUP ]]; then
            sdir=$TMPROOT/swtpm-setup-state
            mkdir -p "$sdir"
            : > "$OUT/swtpm_setup.log"
            for ((i = 1; i <= SETUP_REPEAT; i++)); do
                t0=$(date +%s%N)
                ${SV_PIN[@]+"${SV_PIN[@]}"} "$SWTPM_SETUP" --tpm2 --tpmstate "$sdir" --create-ek-cert --overwrite \
                    >>"$OUT/swtpm_setup.log" 2>&1 || die "swtpm_setup failed (see $OUT/swtpm_setup.log)"
                t1=$(date +%s%N)
                SETUP_MS+=("$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.1f", d / 1e6 }')")
            done
            record 0 swtpm_setup remanufacture "runs_ms=$(IFS=,; echo "${SETUP_MS[*]}")"
            echo "  swtpm_setup runs (ms): ${SETUP_MS[*]}" >&2
        else
            echo "swtpm_setup not found at $SWTPM_SETUP - skipping its row" >&2
        fi
    fi
fi

if [[ -n $REKEY_LINE ]]; then
    {
        echo
        echo "Clone-rekey (vtpmd --vm-id/--ca/--registry/--host-key; REKEY=0 skips this section)"
        rp50=$(field p50_ms "$REKEY_LINE")
        sp50=-
        ((${#SETUP_MS[@]} > 0)) && sp50=$(median "${SETUP_MS[@]}")
        printf '%-46s %9s %9s %9s %8s\n' "" p50 p95 max runs
        printf '%-46s %9s %9s %9s %8s   target p50 <= 100 ms: %s\n' "rekey (first SET_STATEBLOB -> INIT done), ms" \
            "$rp50" "$(field p95_ms "$REKEY_LINE")" "$(field max_ms "$REKEY_LINE")" "$REKEY_COUNT" \
            "$(awk -v a="$rp50" 'BEGIN { print (a <= 100 ? "met" : "MISSED") }')"
        printf '%-46s %9s\n' "  of which SET_STATEBLOB x2, ms" "$(field set_p50_ms "$REKEY_LINE")"
        printf '%-46s %9s\n' "  of which INIT(1), ms" "$(field init_p50_ms "$REKEY_LINE")"
        printf '%-46s %9s\n' "  vtpmd's own duration_ms (decision log)" "$SERVER_MS"
        if [[ -n ${REKEY_PG_LINE:-} ]]; then
            pp50=$(field p50_ms "$REKEY_PG_LINE")
            printf '%-46s %9s %9s %9s %8s   target p50 <= 100 ms: %s\n' "rekey, PostgreSQL registry (loopback), ms" \
                "$pp50" "$(field p95_ms "$REKEY_PG_LINE")" "$(field max_ms "$REKEY_PG_LINE")" "$REKEY_COUNT" \
                "$(awk -v a="$pp50" 'BEGIN { print (a <= 100 ? "met" : "MISSED") }')"
        fi
        if [[ -n ${REKEY_SIGNER_LINE:-} ]]; then
            gp50=$(field p50_ms "$REKEY_SIGNER_LINE")
            printf '%-46s %9s %9s %9s %8s   target p50 <= 100 ms: %s\n' "rekey, separated CA signer, ms" \
                "$gp50" "$(field p95_ms "$REKEY_SIGNER_LINE")" "$(field max_ms "$REKEY_SIGNER_LINE")" "$REKEY_COUNT" \
                "$(awk -v a="$gp50" 'BEGIN { print (a <= 100 ? "met" : "MISSED") }')"
        fi
        if [[ $sp50 != "-" ]]; then
            printf '%-46s %9s %9s %9s %8s   rekey/swtpm_setup: %s\n' "swtpm_setup --create-ek-cert --overwrite, ms" \
                "$sp50" - "$(printf '%s\n' "${SETUP_MS[@]}" | sort -g | tail -1)" "${#SETUP_MS[@]}" "$(ratio "$rp50" "$sp50")"
        fi
        echo "decision=clone lines in the destination's log: $CLONES of $REKEY_COUNT; blobs: permanent $(field perm_bytes "$REKEY_LINE") B, volatile $(field vol_bytes "$REKEY_LINE") B"
        echo
        echo "savevm: GET_STATEBLOB types 1+2+3 after one PCR_Extend (us, $SAVEVM_COUNT rounds per server)"
        printf '%-24s %9s %9s %9s %9s %9s %9s %12s\n' server p50 p95 type1 type2 type3 perm_B vs_swtpm
        w=-
        [[ -n ${SAVE_V[swtpm]+x} ]] && w=$(field p50_us "${SAVE_V[swtpm]}")
        for s in swtpm vtpmd-id vtpmd-id-pg vtpmd; do
            [[ -n ${SAVE_V[$s]+x} ]] || continue
            l=${SAVE_V[$s]}
            case $s in
            vtpmd-id) label="vtpmd, clone-rekey on" ;;
            vtpmd-id-pg) label="vtpmd, on, PostgreSQL" ;;
            vtpmd) label="vtpmd, clone-rekey off" ;;
            *) label=$s ;;
            esac
            printf '%-24s %9s %9s %9s %9s %9s %9s %12s\n' "$label" "$(field p50_us "$l")" "$(field p95_us "$l")" \
                "$(field perm_p50_us "$l")" "$(field vol_p50_us "$l")" "$(field save_p50_us "$l")" \
                "$(field perm_bytes "$l")" "$(ratio "$(field p50_us "$l")" "$w")"
        done
        if [[ $w != "-" && -n ${SAVE_V[vtpmd-id]+x} ]]; then
            r=$(ratio "$(field p50_us "${SAVE_V[vtpmd-id]}")" "$w")
            echo "savevm ratio vtpmd (clone-rekey on) / swtpm, p50: $r   target <= 1.2: $(awk -v a="$r" 'BEGIN { print (a <= 1.2 ? "met" : "MISSED") }')"
        fi
        if [[ $w != "-" && -n ${SAVE_V[vtpmd-id-pg]+x} ]]; then
            r=$(ratio "$(field p50_us "${SAVE_V[vtpmd-id-pg]}")" "$w")
            echo "savevm ratio vtpmd (PostgreSQL registry) / swtpm, p50: $r   target <= 1.2: $(awk -v a="$r" 'BEGIN { print (a <= 1.2 ? "met" : "MISSED") }')"
        fi
    } | tee -a "$RESULTS"
fi

# ---------------------------------------------------------------- registry storm
# STORM_VMS vtpmd (blank TPMs, clone-rekey on, one registry: SQLite, then PostgreSQL) take STORM_ROUNDS
# savevm + loadvm at the same moment while a bystander VM runs GetRandom; no pinning (200 processes).
if [[ $STORM != 0 && -x $VTPMD ]]; then
    echo "registry storm section ($STORM_VMS VMs)" >&2
    [[ -n $PG_URL || $PG == 0 ]] || start_postgres
    STORM_STORES=(sqlite)
    [[ -n $PG_URL ]] && STORM_STORES+=(postgres)
    declare -A STORM_LINE
    for store in "${STORM_STORES[@]}"; do
        registry=$TMPROOT/storm-registry.sqlite
        [[ $store == postgres ]] && registry=$PG_URL
        STORM_PIDS=() STORM_PORTS=()
        declare -A STORM_USED=()
        for ((i = 0; i <= STORM_VMS; i++)); do
            # (a port picked for an earlier VM may not be listening yet)
            port=$(pick_port)
            while [[ -n ${STORM_USED[$port]:-} ]]; do port=$(pick_port); done
            STORM_USED[$port]=1
            dir=$(mktemp -d "$TMPROOT/storm-$store-$i.XXXXXX")
            "$VTPMD" socket --tpm2 --tpmstate "dir=$dir" --server "type=tcp,port=$port" \
                --ctrl "type=tcp,port=$((port + 1))" --flags not-need-init,startup-clear \
                --vm-id "$(printf '5707%04x-0000-4000-8000-%012x' "$i" "$i")" --registry "$registry" \
                --host-key "$IDDIR/host.key" --log "file=$OUT/storm-$store.events.log,level=1" \
                >>"$OUT/storm-$store.log" 2>&1 &
            STORM_PIDS+=($!) PIDS+=($!) STORM_PORTS+=("$port")
        done
        for port in "${STORM_PORTS[@]}"; do
            for _ in $(seq 3000); do
                (($(ss -Hltn "( sport = :$port or sport = :$((port + 1)) )" 2>/dev/null | wc -l) >= 2)) && break
                sleep 0.01
            done
        done
        bystander=${STORM_PORTS[$STORM_VMS]}
        list=$(IFS=,; echo "${STORM_PORTS[*]:0:$STORM_VMS}")
        STORM_LINE[$store]=$("$TB" storm --ports "$list" --bystander "$bystander" --rounds "$STORM_ROUNDS") ||
            die "storm ($store) had errors: ${STORM_LINE[$store]:-} (see $OUT/storm-$store.events.log)"
        record 0 "storm-$store" storm "${STORM_LINE[$store]}"
        echo "  $store ${STORM_LINE[$store]}" >&2
        kill -TERM "${STORM_PIDS[@]}" 2>/dev/null || true
        for pid in "${STORM_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
        keep=()
        for p in "${PIDS[@]}"; do [[ " ${STORM_PIDS[*]} " == *" $p "* ]] || keep+=("$p"); done
        PIDS=(${keep[@]+"${keep[@]}"})
        rm -rf "$TMPROOT"/storm-"$store"-*
    done
    {
        echo
        echo "Registry storm: $STORM_VMS vtpmd on one registry, $STORM_ROUNDS x (savevm: GET_STATEBLOB x3; loadvm: STOP, SET_STATEBLOB, INIT) at once; bystander VM GetRandom every 2 ms (STORM=0 skips)"
        printf '%-12s %7s %9s %11s %11s %11s %11s %12s %12s %12s\n' registry errors seconds get_p50_ms get_p99_ms \
            init_p50_ms init_p99_ms by_p50_us by_p99_us by_max_us
        for store in "${STORM_STORES[@]}"; do
            l=${STORM_LINE[$store]}
            printf '%-12s %7s %9s %11s %11s %11s %11s %12s %12s %12s\n' "$store" "$(field errors "$l")" \
                "$(field seconds "$l")" "$(field get_p50_ms "$l")" "$(field get_p99_ms "$l")" "$(field init_p50_ms "$l")" \
                "$(field init_p99_ms "$l")" "$(field by_p50_us "$l")" "$(field by_p99_us "$l")" "$(field by_max_us "$l")"
        done
    } | tee -a "$RESULTS"
fi

# ---------------------------------------------------------------- state tool
# vtpm-state create (new TPM, EKs, certificates from the host CA, identity indices) against
# swtpm_setup --tpm2 --create-ek-cert --overwrite (swtpm_localca, Debian's active_pcr_banks = sha256),
# one run of each in turn, every run a new process, wall time from spawn to exit. vtpm-state is timed
# with its default banks (libtpms': all four) and with --pcr-banks sha256 (the same banks as swtpm_setup).
if [[ $STATETOOL != 0 ]]; then
    if [[ ! -x $VTPM_STATE ]]; then
        echo "vtpm-state not found at $VTPM_STATE (make release) - skipping the state tool section" | tee -a "$RESULTS"
    elif [[ ! -x $SWTPM_SETUP ]]; then
        echo "swtpm_setup not found at $SWTPM_SETUP - skipping the state tool section" | tee -a "$RESULTS"
    else
        echo "state tool section" >&2
        if [[ -n $(find "$HERE/../Sources" -type f -newer "$VTPM_STATE" -print -quit 2>/dev/null) ]]; then
            echo "WARNING: $VTPM_STATE is older than the sources - run 'make release' first" >&2
        fi
        STDIR=$TMPROOT/statetool
        mkdir -p "$STDIR/vtpm" "$STDIR/vtpm-sha256" "$STDIR/swtpm"
        : > "$OUT/statetool.log"
        "$VTPM_STATE" ca init --ca "$STDIR/ca" >>"$OUT/statetool.log" 2>&1 || die "vtpm-state ca init failed"
        # timed NAME CMD... : runs CMD on the server CPU, appends its wall time (ms) to ST_MS[NAME]
        declare -A ST_MS
        timed() {
            local name=$1 t0 t1
            shift
            t0=$(date +%s%N)
            ${SV_PIN[@]+"${SV_PIN[@]}"} "$@" >>"$OUT/statetool.log" 2>&1 || die "$name failed (see $OUT/statetool.log): $*"
            t1=$(date +%s%N)
            ST_MS[$name]+=" $(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.1f", d / 1e6 }')"
        }
        # The swtpm_setup stand-in (vtpm-state under swtpm_setup's name, as the Debian package installs it) on
        # libvirt's first-start call, configured by a host configuration file, against swtpm_setup on the same call.
        mkdir -p "$STDIR/bin" "$STDIR/libvirt/$VM_SRC/tpm2" "$STDIR/libvirt-swtpm/$VM_SRC/tpm2"
        ln -sf "$VTPM_STATE" "$STDIR/bin/swtpm_setup"
        printf 'vm-id-from = %s/libvirt/{uuid}/tpm2\nca = %s/ca\nregistry = %s/registry.sqlite\n' \
            "$STDIR" "$STDIR" "$STDIR" >"$STDIR/vtpmd.conf"
        libvirt_call() { # DIR: libvirt 9.0's swtpm_setup arguments, --overwrite in place of --not-overwrite
            echo --tpm2 --tpm-state "$1" --vmid "guest:$VM_SRC" --logfile "$STDIR/setup.log" --createek \
                --create-ek-cert --create-platform-cert --lock-nvram --overwrite
        }
        for ((i = 1; i <= STATETOOL_REPEAT; i++)); do
            timed standin env VTPMD_CONFIG="$STDIR/vtpmd.conf" "$STDIR/bin/swtpm_setup" \
                $(libvirt_call "$STDIR/libvirt/$VM_SRC/tpm2")
            timed swtpm-libvirt "$SWTPM_SETUP" $(libvirt_call "$STDIR/libvirt-swtpm/$VM_SRC/tpm2")
            timed vtpm "$VTPM_STATE" create --state "$STDIR/vtpm" --vm-id "$VM_SRC" --ca "$STDIR/ca" --overwrite
            timed vtpm-sha256 "$VTPM_STATE" create --state "$STDIR/vtpm-sha256" --vm-id "$VM_DST" --ca "$STDIR/ca" \
                --pcr-banks sha256 --overwrite
            timed swtpm "$SWTPM_SETUP" --tpm2 --tpmstate "$STDIR/swtpm" --create-ek-cert --overwrite
        done
        "$VTPM_STATE" verify --state "$STDIR/vtpm" --ca "$STDIR/ca" >>"$OUT/statetool.log" 2>&1 ||
            die "the state vtpm-state created does not verify (see $OUT/statetool.log)"
        "$VTPM_STATE" verify --state "$STDIR/libvirt/$VM_SRC/tpm2" --ca "$STDIR/ca" >>"$OUT/statetool.log" 2>&1 ||
            die "the state the swtpm_setup stand-in created does not verify (see $OUT/statetool.log)"
        for s in vtpm vtpm-sha256 swtpm standin swtpm-libvirt; do
            record 0 "statetool-$s" create "runs_ms=$(tr ' ' , <<< "${ST_MS[$s]# }")"
        done
        {
            echo
            echo "State tool: vtpm-state create vs swtpm_setup (wall ms per run incl. process start, $STATETOOL_REPEAT runs each, interleaved; STATETOOL=0 skips)"
            printf '%-58s %9s %9s %9s\n' "" p50 min max
            w=$(median ${ST_MS[swtpm]})
            for s in vtpm vtpm-sha256 swtpm; do
                case $s in
                vtpm) label="vtpm-state create --ca (libtpms' PCR banks)" ;;
                vtpm-sha256) label="vtpm-state create --ca --pcr-banks sha256" ;;
                swtpm) label="swtpm_setup --tpm2 --create-ek-cert --overwrite" ;;
                esac
                v=$(median ${ST_MS[$s]})
                extra=""
                [[ $s == swtpm ]] || extra="   /swtpm_setup: $(ratio "$v" "$w")   target <= 0.5: $(awk -v a="$(ratio "$v" "$w")" 'BEGIN { print (a <= 0.5 ? "met" : "MISSED") }')"
                printf '%-58s %9s %9s %9s%s\n' "$label" "$v" "$(printf '%s\n' ${ST_MS[$s]} | sort -g | head -1)" \
                    "$(printf '%s\n' ${ST_MS[$s]} | sort -g | tail -1)" "$extra"
            done
            echo "command: vtpm-state create --state DIR --vm-id UUID --ca DIR --overwrite [--pcr-banks sha256]; binary $VTPM_STATE"
            echo
            echo "Provisioning on libvirt's path: swtpm_setup stand-in vs swtpm_setup, libvirt 9.0's first-start call (wall ms)"
            printf '%-58s %9s %9s %9s\n' "" p50 min max
            w=$(median ${ST_MS[swtpm-libvirt]})
            for s in standin swtpm-libvirt; do
                case $s in
                standin) label="vtpm-state as swtpm_setup (host configuration)" ;;
                swtpm-libvirt) label="swtpm_setup 0.7.1 (swtpm_localca)" ;;
                esac
                v=$(median ${ST_MS[$s]})
                extra=""
                [[ $s == swtpm-libvirt ]] || extra="   /swtpm_setup: $(ratio "$v" "$w")"
                printf '%-58s %9s %9s %9s%s\n' "$label" "$v" "$(printf '%s\n' ${ST_MS[$s]} | sort -g | head -1)" \
                    "$(printf '%s\n' ${ST_MS[$s]} | sort -g | tail -1)" "$extra"
            done
            echo "command: swtpm_setup $(libvirt_call DIR)"
        } | tee -a "$RESULTS"
    fi
fi

{
    echo
    echo "per-run lines: $RAW"
} | tee -a "$RESULTS"
