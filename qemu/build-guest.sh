#!/usr/bin/env bash
# Build the small test guest used by the QEMU integration tests and by qemu/launch.sh.
#
# Usage: qemu/build-guest.sh [OUTDIR]        (default: <repo>/qemu/out)
#
# Output (replaced atomically, so the script is idempotent and safe to re-run):
#   OUTDIR/vmlinuz      the installed Debian kernel (copied from /boot)
#   OUTDIR/initrd.img   gzip'd newc cpio: busybox-static, tpm2-tools with every shared library
#                       (ldd closure, plus the TCTI libraries tpm2-tools dlopens), the kernel
#                       modules for virtio-blk + ext4 (the TPM drivers are checked against
#                       modules.builtin and added only if they are modules), and /init
#   OUTDIR/guest.info   kernel version, module load order, and the sha256 of this script
#                       (the Swift GuestImage helper rebuilds when the hash changes)
#
# Inputs are only installed Debian 12 packages: linux-image-amd64, busybox-static, tpm2-tools,
# libtss2-*, cpio, gzip.  Override the kernel with KVER=6.1.0-xx-amd64.
#
# Additions for other guests (qemu/build-kernel-guest.sh uses them):
#   GUEST_EXTRA_BIN="p1 p2"      executables copied to /usr/bin with their shared libraries
#   GUEST_EXTRA_MODULES="m1 m2"  more kernel modules, loaded at boot after the others
#   GUEST_EXTRA_TREE="src:dest"  directories copied into the image (several, space-separated)
#   GUEST_PVH=1                  OUTDIR/vmlinuz is the uncompressed kernel (an ELF QEMU boots through its PVH
#                                entry, without decompressing: ~2.5 s less per boot under TCG) and the
#                                initramfs is not compressed either
#
# Guest behaviour (see the init script written below):
#   * mounts proc, sys, devtmpfs, tmpfs on /tmp and /run, loads modules with busybox insmod
#   * waits for /dev/tpmrm0, exports TPM2TOOLS_TCTI=device:/dev/tpmrm0
#   * if /dev/vda (virtio-blk) or /dev/sda exists: formats it with mke2fs when it has no ext2/3/4
#     superblock, mounts it on /data. The harness attaches a qcow2 disk
#     (qemu-img create -f qcow2 disk.qcow2 64M); QEMU's savevm/loadvm need a writable qcow2 drive.
#   * prints the line VTPM-GUEST-READY on the serial console, then runs an interactive busybox
#     shell on the console (respawned if it exits).
# Suggested kernel command line: console=ttyS0 quiet loglevel=3 panic=-1
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-"$script_dir/out"}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# ---------------------------------------------------------------- kernel selection
if [[ -z ${KVER:-} ]]; then
    KVER=""
    # newest installed Debian kernel that has both an image and a module tree
    for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V); do
        [[ -d /lib/modules/$k ]] && KVER=$k
    done
fi
[[ -n $KVER && -r /boot/vmlinuz-$KVER && -d /lib/modules/$KVER ]] || {
    echo "build-guest: no usable kernel (need /boot/vmlinuz-\$KVER and /lib/modules/\$KVER; install linux-image-amd64)" >&2
    exit 1
}
moddir=/lib/modules/$KVER

for tool in busybox tpm2 cpio gzip ldd; do
    command -v "$tool" >/dev/null || { echo "build-guest: missing $tool" >&2; exit 1; }
done
busybox_bin=$(readlink -f "$(command -v busybox)")
if ldd "$busybox_bin" >/dev/null 2>&1; then
    echo "build-guest: $busybox_bin is dynamically linked; install busybox-static" >&2
    exit 1
fi
tpm2_bin=$(readlink -f "$(command -v tpm2)")

work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root

# usrmerged layout like the host, so ldd's paths and ld.so's default search work unchanged
mkdir -p "$root"/{usr/bin,usr/lib/x86_64-linux-gnu,usr/lib64,dev,proc,sys,tmp,run,data,etc,root}
ln -s usr/bin "$root/bin"
ln -s usr/bin "$root/sbin"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
ln -s bin "$root/usr/sbin"
chmod 1777 "$root/tmp"

# ---------------------------------------------------------------- busybox
cp "$busybox_bin" "$root/usr/bin/busybox"
for applet in $("$busybox_bin" --list); do
    [[ $applet == busybox || -e $root/usr/bin/$applet ]] || ln -s busybox "$root/usr/bin/$applet"
done

# ---------------------------------------------------------------- tpm2-tools
cp "$tpm2_bin" "$root/usr/bin/tpm2"
n_links=0
for link in /usr/bin/tpm2_*; do
    [[ -L $link && $(readlink -f "$link") == "$tpm2_bin" ]] || continue
    ln -sf tpm2 "$root/usr/bin/$(basename "$link")"
    n_links=$((n_links + 1))
done
required=(createprimary create load unseal pcrextend pcrread nvdefine nvwrite nvread nvincrement
    nvreadpublic createek createak readpublic evictcontrol getcap getrandom flushcontext sign
    verifysignature startauthsession policynv policycommandcode policyauthorize hash print clear
    startup selftest)
for t in "${required[@]}"; do
    [[ -L $root/usr/bin/tpm2_$t ]] || { echo "build-guest: tpm2-tools lacks tpm2_$t" >&2; exit 1; }
done

# ---------------------------------------------------------------- shared libraries
# tpm2-tools' tctildr dlopens libtss2-tcti-<name>.so.0, so every installed TCTI goes in, too.
libdirs=(/usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu)
dl_objects=()
for d in "${libdirs[@]}"; do
    for f in "$d"/libtss2-tcti-*.so.[0-9]; do [[ -e $f ]] && dl_objects+=("$f"); done
done
[[ ${#dl_objects[@]} -gt 0 ]] || { echo "build-guest: no libtss2-tcti-*.so found" >&2; exit 1; }

declare -A seen=()
copy_file() { # copy a host file (following symlinks) to the same path inside $root; keep the soname link
    local src=$1 dest
    [[ -n ${seen[$src]:-} ]] && return 0
    seen[$src]=1
    # map /lib/... onto /usr/lib/... (the image is usrmerged)
    dest=${src#/usr}
    dest=$root/usr$dest
    mkdir -p "$(dirname "$dest")"
    cp -L "$src" "$dest" # the soname path ldd printed, as a regular file
}
resolve_libs() { # every library ldd lists for $1 (ldd already returns the transitive closure)
    ldd "$1" 2>/dev/null | awk '
        $2 == "=>" && $3 ~ /^\// { print $3; next }
        $1 ~ /^\// { print $1 }'
}
extra_bins=()
for bin in ${GUEST_EXTRA_BIN:-}; do
    [[ -x $bin ]] || { echo "build-guest: GUEST_EXTRA_BIN: $bin is not an executable" >&2; exit 1; }
    rm -f "$root/usr/bin/$(basename "$bin")" # a busybox applet link of that name gives way
    cp -L "$bin" "$root/usr/bin/$(basename "$bin")"
    strip "$root/usr/bin/$(basename "$bin")" 2>/dev/null || true # as installed (install -s): no debug info
    extra_bins+=("$bin")
done
objects=("$tpm2_bin" "${dl_objects[@]}" "${extra_bins[@]}")
for obj in "${objects[@]}"; do
    for lib in $(resolve_libs "$obj"); do copy_file "$lib"; done
done
for obj in "${dl_objects[@]}"; do copy_file "$obj"; done
# the dlopen'ed objects may pull in libraries that tpm2 itself does not: second pass over what we copied
for lib in "${!seen[@]}"; do
    for dep in $(resolve_libs "$lib"); do copy_file "$dep"; done
done

# ld.so cache for the image (ld.so's built-in multiarch dirs already cover us; the cache makes it explicit)
printf '%s\n' /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu > "$root/etc/ld.so.conf"
if command -v ldconfig >/dev/null || [[ -x /sbin/ldconfig ]]; then
    PATH=$PATH:/sbin:/usr/sbin ldconfig -r "$root" 2>/dev/null || true
fi

# ---------------------------------------------------------------- kernel modules
# TPM drivers first (only if modular in this kernel), then block device + filesystem.
wanted=(tpm tpm_tis_core tpm_tis tpm_crb virtio_pci virtio_blk ext4 crc32c_generic ${GUEST_EXTRA_MODULES:-})
declare -A dep_of=() path_of=() loaded=()
while IFS= read -r line; do
    mod=${line%%:*}
    name=$(basename "$mod"); name=${name%%.ko*}; name=${name//-/_}
    path_of[$name]=$mod
    dep_of[$name]=${line#*:}
done < "$moddir/modules.dep"
declare -A builtin=()
while IFS= read -r line; do
    name=$(basename "$line"); name=${name%%.ko*}; name=${name//-/_}
    builtin[$name]=1
done < "$moddir/modules.builtin"

order=()
add_module() { # depth-first: dependencies before the module
    local name=$1 dep dname deps i
    [[ -n ${loaded[$name]:-} ]] && return 0
    loaded[$name]=1
    read -r -a deps <<< "${dep_of[$name]}"
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
        dep=${deps[i]}
        dname=$(basename "$dep"); dname=${dname%%.ko*}; dname=${dname//-/_}
        add_module "$dname"
    done
    order+=("$name")
}
builtin_list=()
for m in "${wanted[@]}"; do
    if [[ -n ${builtin[$m]:-} ]]; then
        builtin_list+=("$m")
    elif [[ -n ${path_of[$m]:-} ]]; then
        add_module "$m"
    else
        echo "build-guest: module $m neither built in nor in $moddir/modules.dep" >&2
        exit 1
    fi
done
mkdir -p "$root/usr/lib/modules/$KVER"
: > "$root/etc/modules.load"
for name in "${order[@]}"; do
    src=$moddir/${path_of[$name]}
    dest=$root/usr/lib/modules/$KVER/$name.ko
    case $src in
        *.ko) cp "$src" "$dest" ;;
        *.ko.xz) xz -dc "$src" > "$dest" ;;
        *.ko.zst) zstd -qdc "$src" > "$dest" ;;
        *.ko.gz) gzip -dc "$src" > "$dest" ;;
        *) echo "build-guest: unknown module format $src" >&2; exit 1 ;;
    esac
    echo "/lib/modules/$KVER/$name.ko" >> "$root/etc/modules.load"
done

# ---------------------------------------------------------------- init
cat > "$root/init" <<'EOF'
#!/bin/sh
# swift-vtpm test guest init (generated by qemu/build-guest.sh)
export PATH=/usr/bin:/bin:/sbin
export HOME=/root
export TPM2TOOLS_TCTI=device:/dev/tpmrm0
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
dmesg -n 1
hostname vtpm-guest

while read -r ko; do
    insmod "$ko" || echo "init: insmod $ko failed"
done < /etc/modules.load

# the TPM driver is built in (or loaded above); CRB/TIS probe is asynchronous-ish. `vtpm.notpm` on the kernel
# command line: the machine has no TPM device, do not wait for one.
if ! grep -qw vtpm.notpm /proc/cmdline; then
    i=0
    while [ ! -c /dev/tpmrm0 ] && [ $i -lt 200 ]; do usleep 50000; i=$((i + 1)); done
    [ -c /dev/tpmrm0 ] || echo "init: WARNING /dev/tpmrm0 did not appear"
fi

disk=""
i=0
while [ $i -lt 20 ]; do
    for d in /dev/vda /dev/sda; do [ -b $d ] && disk=$d && break; done
    [ -n "$disk" ] && break
    # only wait when a virtio block device is on the PCI bus (vendor 1af4, device 1001/1042)
    grep -qsE '^0x(1001|1042)$' /sys/bus/pci/devices/*/device || break
    usleep 100000; i=$((i + 1))
done
if [ -n "$disk" ]; then
    # ext2/3/4 superblock magic 0xEF53 at byte 1080 (little endian: 53 ef)
    magic=$(dd if=$disk bs=1 skip=1080 count=2 2>/dev/null | hexdump -e '2/1 "%02x"')
    if [ "$magic" != "53ef" ]; then
        mke2fs -q -F $disk >/dev/null 2>&1 || echo "init: mke2fs $disk failed"
    fi
    mount -t ext4 $disk /data || echo "init: mount $disk /data failed"
fi

echo "VTPM-GUEST-READY kernel=$(uname -r) tpm=$(ls /dev/tpm* 2>/dev/null | tr '\n' ' ')disk=${disk:-none}"

# `vtpm.run=NAME` on the kernel command line: run /usr/lib/vtpm-guest/NAME.sh (added with GUEST_EXTRA_TREE)
# before the shell.
for word in $(cat /proc/cmdline); do
    case $word in
        vtpm.run=*) sh "/usr/lib/vtpm-guest/${word#vtpm.run=}.sh" ;;
    esac
done

# an interactive shell on the console, respawned if it exits
while true; do
    setsid cttyhack sh -l
    sleep 1
done
EOF
chmod 0755 "$root/init"
cat > "$root/etc/profile" <<'EOF'
export PATH=/usr/bin:/bin:/sbin
export HOME=/root
export TPM2TOOLS_TCTI=device:/dev/tpmrm0
PS1='vtpm-guest# '
cd /root
EOF
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$root/etc/hosts"

# ---------------------------------------------------------------- extra trees
for pair in ${GUEST_EXTRA_TREE:-}; do
    src=${pair%%:*}
    dest=$root/${pair#*:}
    [[ -d $src ]] || { echo "build-guest: GUEST_EXTRA_TREE: $src is not a directory" >&2; exit 1; }
    mkdir -p "$dest"
    cp -a "$src/." "$dest/"
done

# ---------------------------------------------------------------- pack
if [[ ${GUEST_PVH:-0} == 1 ]]; then
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) > "$work/initrd.img"
    # The bzImage carries the kernel as an xz stream: unpack it to the ELF whose PVH note QEMU boots.
    command -v xz >/dev/null || { echo "build-guest: GUEST_PVH=1 needs xz (xz-utils)" >&2; exit 1; }
    offset=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "/boot/vmlinuz-$KVER" | head -1 | cut -d: -f1)
    [[ -n $offset ]] || { echo "build-guest: no xz stream in /boot/vmlinuz-$KVER" >&2; exit 1; }
    tail -c +$((offset + 1)) "/boot/vmlinuz-$KVER" | xz -dc --single-stream > "$work/vmlinuz" 2>/dev/null || true
    [[ $(head -c 4 "$work/vmlinuz" | od -An -tx1 | tr -d ' ') == 7f454c46 ]] || {
        echo "build-guest: the unpacked kernel is not an ELF" >&2
        exit 1
    }
else
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -6 -n > "$work/initrd.img"
    cp "/boot/vmlinuz-$KVER" "$work/vmlinuz"
fi
{
    echo "kernel=$KVER"
    echo "builtin_modules=${builtin_list[*]}"
    echo "loaded_modules=${order[*]}"
    echo "tpm2_symlinks=$n_links"
    echo "script_sha256=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
} > "$work/guest.info"
mv -f "$work/vmlinuz" "$out/vmlinuz"
mv -f "$work/initrd.img" "$out/initrd.img"
mv -f "$work/guest.info" "$out/guest.info"
echo "build-guest: $out/vmlinuz $out/initrd.img ($(du -k "$out/initrd.img" | cut -f1) KiB, kernel $KVER)"
