#!/usr/bin/env bash
#
# swtpm-compat-run.sh -- run individual swtpm 0.7.1 test scripts against an arbitrary
#           "swtpm"-compatible binary (e.g. our vtpmd), using Debian's
#           swtpm_ioctl / swtpm_bios / swtpm_setup / swtpm_cert.
#
# Usage:
#   ./run.sh [--trace] [--timeout SECS] SWTPM_BINARY TEST...
#   ./run.sh /usr/bin/swtpm test_tpm2_getcap tpm2_hashing      # "test_" prefix optional
#   ./run.sh /usr/bin/swtpm all                                 # the 23 default scripts
#
#   --trace         wrap SWTPM_BINARY in tools/argvlog (ELF) and record every
#                   command line the scripts pass to it in logs/<test>.argv
#   --timeout SECS  per-script timeout (default 600); timeout => FAIL(timeout)
#
# Output: one line per script: PASS / FAIL(rc) / SKIP(77), plus which
# interface variants actually ran and which were skipped inside the script.
# Full output of each script: logs/<test>.log.  Exit code: 0 iff no FAIL.
#
# Environment overrides: SWTPM_IOCTL SWTPM_BIOS SWTPM_SETUP SWTPM_CERT
#   (defaults: the Debian binaries in /usr/bin).
#   ARGVLOG_NO_CHARDEV=1 (with --trace only): make the wrapper answer
#   "chardev ..." like a build without chardev support (to preview skips).
#
# SWTPM_BINARY must be an ELF executable (not a script, not a symlink --
# symlinks are resolved here): test_tpm2_file_permissions runs
# `file $SWTPM_EXE | grep ELF` and skips (77) otherwise; it must also be
# executable by user "nobody".
#
# The scripts are NOT copied anywhere; they are run in place from
# swtpm-0.7.1/tests (extracted from the upstream git tag v0.7.1).

set -u

HERE="$(cd "$(dirname "$0")" && pwd)"
# A local extraction of swtpm's git tag v0.7.1 (never committed here), and where logs go.
SRCDIR="${SWTPM_SRC:-${HERE}/swtpm-0.7.1}"
TESTDIR="${SRCDIR}/tests"
LOGDIR="${SWTPM_COMPAT_LOGS:-${HERE}/logs}"
ARGVLOG="${HERE}/tools/argvlog"
[ -d "$TESTDIR" ] || { echo "no swtpm test suite at $TESTDIR: set SWTPM_SRC to an extraction of swtpm v0.7.1" >&2; exit 2; }

DEFAULT_TESTS="test_tpm2_ctrlchannel2 test_tpm2_getcap test_tpm2_hashing
test_tpm2_hashing2 test_tpm2_hashing3 test_tpm2_init test_tpm2_locality
test_tpm2_save_load_state test_tpm2_resume_volatile test_tpm2_volatilestate
test_tpm2_wrongorder test_tpm2_setbuffersize test_tpm2_probe
test_tpm2_savestate test_tpm2_migration_key test_tpm2_encrypted_state
test_tpm2_derived_keys test_tpm2_save_load_encrypted_state
test_tpm2_save_load_state_da_timeout test_tpm2_print_capabilities
test_tpm2_file_permissions test_tpm2_print_states test_tpm2_swtpm_bios"

TRACE=0
TIMEOUT=600

usage() {
	sed -n '3,31p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
}

while [ $# -gt 0 ]; do
	case "$1" in
	--trace) TRACE=1; shift;;
	--timeout) TIMEOUT="$2"; shift 2;;
	-h|--help) usage;;
	--) shift; break;;
	-*) echo "unknown option $1" >&2; usage;;
	*) break;;
	esac
done
[ $# -ge 2 ] || usage

BIN="$1"; shift
case "$BIN" in /*) ;; *) BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")";; esac
if [ -L "$BIN" ]; then
	echo "note: $BIN is a symlink; using $(readlink -f "$BIN")" >&2
	BIN="$(readlink -f "$BIN")"
fi
if ! file "$BIN" | grep -q ELF; then
	echo "warning: $BIN is not an ELF file; test_tpm2_file_permissions will SKIP" >&2
fi
if [ ! -x "$BIN" ]; then
	echo "SWTPM_BINARY '$BIN' is not executable" >&2
	exit 2
fi
if [ ! -d "$TESTDIR" ]; then
	echo "missing $TESTDIR (extract swtpm v0.7.1 first)" >&2
	exit 2
fi

TESTS=()
for t in "$@"; do
	if [ "$t" = all ]; then
		TESTS+=($DEFAULT_TESTS)
	else
		t="${t%.log}"; t="${t#_}"
		[[ "$t" == test_* ]] || t="test_$t"
		TESTS+=("$t")
	fi
done

mkdir -p "$LOGDIR"
chmod 0755 "$LOGDIR" 2>/dev/null

# The environment the upstream Makefile (tests/Makefile.am TESTS_ENVIRONMENT)
# and tests/common expect.
export abs_top_testdir="$TESTDIR"
export abs_top_srcdir="$SRCDIR"
export abs_top_builddir="$SRCDIR"      # $ROOT/src/swtpm/swtpm does not exist -> only SWTPM_* are used
export SWTPM_IOCTL="${SWTPM_IOCTL:-/usr/bin/swtpm_ioctl}"
export SWTPM_BIOS="${SWTPM_BIOS:-/usr/bin/swtpm_bios}"
export SWTPM_SETUP="${SWTPM_SETUP:-/usr/bin/swtpm_setup}"
export SWTPM_CERT="${SWTPM_CERT:-/usr/bin/swtpm_cert}"
unset SWTPM_TEST_SECCOMP_OPT SWTPM_SERVER_NO_DISCONNECT SWTPM_INTERFACE SWTPM_IFACE \
      SWTPM_SERVER_NAME SWTPM_SERVER_PORT SWTPM_CTRL_PORT SWTPM_IOCTL_BUFFERSIZE \
      TPM_PATH VTPM_NAME TPM_PORT 2>/dev/null

if [ $TRACE -eq 1 ]; then
	if [ ! -x "$ARGVLOG" ]; then
		gcc -O2 -o "$ARGVLOG" "${HERE}/tools/argvlog.c" || { echo "cannot build argvlog" >&2; exit 2; }
	fi
	export SWTPM_EXE="$ARGVLOG"
	export ARGVLOG_TARGET="$BIN"
else
	export SWTPM_EXE="$BIN"
	unset ARGVLOG_TARGET ARGVLOG_FILE
fi

# Kill whatever the test left running in its session (only processes we started).
reap_session() {
	local sid="$1" log="$2" p left=""
	# zombies (state Z) are ignored: PID 1 in this container may not reap them
	for p in $(ps -e -o pid=,sid=,stat= | awk -v s="$sid" '$2 == s && $3 !~ /^Z/ {print $1}'); do
		left="$left $p"
	done
	if [ -n "$left" ]; then
		echo "run.sh: leftover processes in session $sid:$left -- killing" >> "$log"
		ps -o pid,args -p "${left# }" >> "$log" 2>&1
		for p in $left; do kill -9 "$p" 2>/dev/null; done
		echo "(leftover pids killed:$left)"
	fi
}

npass=0; nfail=0; nskip=0
failed=()
tstart_all=$(date +%s.%N)

printf '%s\n' "SWTPM_EXE=$BIN  (swtpm_ioctl=$SWTPM_IOCTL swtpm_bios=$SWTPM_BIOS swtpm_setup=$SWTPM_SETUP)"

for t in "${TESTS[@]}"; do
	log="${LOGDIR}/${t}.log"
	if [ ! -f "${TESTDIR}/${t}" ]; then
		printf '%-42s %s\n' "$t" "FAIL(no such script)"
		nfail=$((nfail + 1)); failed+=("$t")
		continue
	fi
	if [ $TRACE -eq 1 ]; then
		export ARGVLOG_FILE="${LOGDIR}/${t}.argv"
		: > "$ARGVLOG_FILE"; chmod 0666 "$ARGVLOG_FILE"
	fi
	{
		echo "### run.sh: $t"
		echo "### date: $(date -Is)"
		echo "### SWTPM_EXE=$SWTPM_EXE${ARGVLOG_TARGET:+ (-> $ARGVLOG_TARGET)}"
		echo "### SWTPM_IOCTL=$SWTPM_IOCTL SWTPM_BIOS=$SWTPM_BIOS SWTPM_SETUP=$SWTPM_SETUP SWTPM_CERT=$SWTPM_CERT"
		echo "### abs_top_testdir=$abs_top_testdir"
		echo
	} > "$log"

	sidfile="$(mktemp)"
	t0=$(date +%s.%N)
	( cd "$TESTDIR" &&
	  setsid bash -c 'echo $$ > "$1"; shift; exec timeout -k 5 "$@"' _ \
		"$sidfile" "$TIMEOUT" bash "./$t" ) >> "$log" 2>&1 < /dev/null
	rc=$?
	t1=$(date +%s.%N)
	sid="$(cat "$sidfile" 2>/dev/null)"; rm -f "$sidfile"
	extra=""
	[ -n "$sid" ] && extra="$(reap_session "$sid" "$log")"
	dur=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
	echo "### exit code: $rc, duration ${dur}s" >> "$log"

	# which interface variants really ran / were skipped inside the script
	ran="$(grep -oE '^==== Starting swtpm with interfaces [^ ]+' "$log" |
	       awk '{print $6}' | sort | uniq -c | awk '{printf "%s%s", sep, $2 ($1>1 ? "x" $1 : ""); sep=","}')"
	notes=""
	n=$(grep -cE 'Need to be root to run test with CUSE|not compiled with CUSE|CUSE module: module not' "$log")
	[ "$n" -gt 0 ] && notes="${notes} cuse-skipped:${n}"
	grep -q 'does not support chardev interface' "$log" && notes="${notes} chardev-unsupported(skip)"
	grep -q 'Skip: No chardev available' "$log" && notes="${notes} chardev-variant-skipped"
	grep -q 'Test 3: SKIP' "$log" && notes="${notes} swtpm_cert-subtest-skipped"
	grep -q 'only runs with 64bit little endian' "$log" && notes="${notes} lib64-block-skipped"
	grep -q 'Skipping next tests since libtpms' "$log" && notes="${notes} rev155-block-skipped"
	grep -q 'Skip: Encountered allowed error' "$log" && notes="${notes} allowed-error-skip"
	n=$(grep -c '^Test 1: OK' "$log"); [ "$n" -gt 1 ] && [ -z "$ran" ] && notes="${notes} variants-passed:${n}"
	[ -n "$ran" ] && notes=" [ran: ${ran}]${notes}"

	case $rc in
	0)   res="PASS"; npass=$((npass + 1));;
	77)  res="SKIP(77)"; nskip=$((nskip + 1));;
	124|137) res="FAIL(timeout ${TIMEOUT}s)"; nfail=$((nfail + 1)); failed+=("$t");;
	*)   res="FAIL($rc)"; nfail=$((nfail + 1)); failed+=("$t");;
	esac
	printf '%-42s %-10s %6ss%s %s\n' "$t" "$res" "$dur" "$notes" "$extra"
done

tend_all=$(date +%s.%N)
total=$(awk -v a="$tstart_all" -v b="$tend_all" 'BEGIN{printf "%.1f", b-a}')
echo "----"
echo "total: ${#TESTS[@]}  pass: $npass  fail: $nfail  skip: $nskip  time: ${total}s"
[ $nfail -gt 0 ] && echo "failed: ${failed[*]}"
echo "logs: $LOGDIR/<test>.log"
[ $TRACE -eq 1 ] && echo "argv traces: $LOGDIR/<test>.argv"
[ $nfail -eq 0 ]
