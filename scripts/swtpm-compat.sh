#!/usr/bin/env bash
# Runs swtpm 0.7.1's own test scripts (the 23 that issue #2 lists) against vtpmd.
# swtpm's tests are not part of this repository: extract them from swtpm's git tag v0.7.1
#   git clone https://github.com/stefanberger/swtpm && git -C swtpm archive v0.7.1 | tar -x -C /tmp/swtpm-0.7.1
# and run   SWTPM_SRC=/tmp/swtpm-0.7.1 make swtpm-compat
# The binary must be an unstripped-of-ASAN-symbols ELF file: test_tpm2_file_permissions skips a
# binary whose `nm` output contains "__asan_" (BoringSSL's debug build has such no-op helpers), so a
# stripped release build is used.
set -euo pipefail
cd "$(dirname "$0")/.."
make release
mkdir -p .build/compat
cp .build/release/vtpmd .build/compat/vtpmd
strip .build/compat/vtpmd
chmod 755 .build/compat/vtpmd
export SWTPM_COMPAT_LOGS=${SWTPM_COMPAT_LOGS:-$PWD/.build/compat/logs}
exec ./scripts/swtpm-compat-run.sh "$PWD/.build/compat/vtpmd" all
