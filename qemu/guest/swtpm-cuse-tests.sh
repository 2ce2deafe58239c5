#!/bin/sh
# swtpm v0.7.1's own test scripts against `vtpmd cuse`, in the kernel guest (make swtpm-cuse-compat). The
# suite's wrappers run each `_test_tpm2_*` script for the CUSE interface twice (swtpm_ioctl moving state blobs
# through ioctls and read()/write() in 100-byte, then in 4096-byte pieces) before the socket variants; this runs
# exactly those CUSE runs, plus the CUSE-only test_tpm2_partial_reads and the CUSE part of the print tests.
# Prints `SWTPM-CUSE <script> <variant> PASS|FAIL(rc)|SKIP` and `SWTPM-CUSE-DONE pass=N fail=N skip=N`.
tests=/opt/swtpm/tests
[ -d $tests ] || { echo "SWTPM-CUSE-DONE no swtpm test suite in the image (build it with SWTPM_SRC)"; exit 1; }
# tests/test_cuse skips unless the build's config.h says the CUSE interface was built.
echo '#define WITH_CUSE 1' > /opt/swtpm/config.h
export abs_top_testdir=$tests abs_top_srcdir=/opt/swtpm abs_top_builddir=/opt/swtpm
export SWTPM_EXE=/usr/bin/vtpmd SWTPM_IOCTL=/usr/bin/swtpm_ioctl SWTPM_BIOS=/usr/bin/swtpm_bios
export SWTPM_SETUP=/usr/bin/swtpm_setup SWTPM_CERT=/usr/bin/swtpm_cert
# swtpm_setup runs `swtpm` from PATH, which the print test starts with the build tree's src/swtpm: vtpmd under
# that name, as the package installs it.
mkdir -p /opt/swtpm/src/swtpm
ln -sf /usr/bin/vtpmd /opt/swtpm/src/swtpm/swtpm
ln -sf /usr/bin/vtpmd /usr/bin/swtpm
mkdir -p /tmp/swtpm-logs
pass=0 fail=0 skip=0
record() { # script variant rc
    case $3 in
        0) pass=$((pass + 1)); echo "SWTPM-CUSE $1 $2 PASS" ;;
        77) skip=$((skip + 1)); echo "SWTPM-CUSE $1 $2 SKIP" ;;
        *)
            fail=$((fail + 1))
            echo "SWTPM-CUSE $1 $2 FAIL($3)"
            tail -8 "/tmp/swtpm-logs/$1.$2.log" | sed 's/^/    /'
            ;;
    esac
}
cd $tests
for t in derived_keys encrypted_state getcap hashing hashing2 hashing3 init locality migration_key probe \
    resume_volatile save_load_encrypted_state save_load_state save_load_state_da_timeout savestate setbuffersize \
    swtpm_bios volatilestate wrongorder; do
    for bs in 100 4096; do
        SWTPM_INTERFACE=cuse SWTPM_IOCTL_BUFFERSIZE=$bs timeout 300 bash "_test_tpm2_$t" \
            >"/tmp/swtpm-logs/_test_tpm2_$t.bs$bs.log" 2>&1
        record "_test_tpm2_$t" "bs$bs" $?
    done
done
timeout 300 bash test_tpm2_partial_reads >/tmp/swtpm-logs/test_tpm2_partial_reads.cuse.log 2>&1
record test_tpm2_partial_reads cuse $?
for t in print_capabilities print_states; do
    SWTPM_IFACE=cuse timeout 300 bash "_test_tpm2_$t" >"/tmp/swtpm-logs/_test_tpm2_$t.cuse.log" 2>&1
    record "_test_tpm2_$t" cuse $?
done
echo "SWTPM-CUSE-DONE pass=$pass fail=$fail skip=$skip"
