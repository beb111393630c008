#!/usr/bin/env bash
# Build (and cache) the Linux guest that runs open-iscsi + dm-multipath against a
# switchyard node: a Debian bookworm kernel and an initramfs holding a minimal Debian
# root file system with open-iscsi, multipath-tools, sg3-utils, e2fsprogs and the kernel
# modules the tests need.
#
#   initiator-tests/qemu/build-image.sh          # prints the image folder on success
#
# Cache: $SWITCHYARD_QEMU_CACHE (default /var/tmp/switchyard-qemu)
#   rootfs/             debootstrap'ed root file system (kept; ~300 MiB)
#   kernel/             the unpacked linux-image-*.deb
#   image/vmlinuz       the guest kernel
#   image/base.cpio.gz  the initramfs without /init (run.sh appends /init and the test)
#   image/stamp         what the image was built from; a matching stamp skips the build
#
# Also installs the host tools when missing: qemu-system-x86_64, qemu-img with the
# iscsi block driver (qemu-block-extra), debootstrap, cpio. Needs root (debootstrap,
# chroot, apt-get). Every failure stops the script with the reason on stderr.
set -euo pipefail

CACHE=${SWITCHYARD_QEMU_CACHE:-/var/tmp/switchyard-qemu}
SUITE=bookworm
GUEST_PACKAGES=open-iscsi,multipath-tools,kmod,udev,iproute2,sg3-utils,procps,e2fsprogs,dmsetup
MODULES=(virtio_pci virtio_net iscsi_tcp sd_mod sg dm_multipath dm_round_robin
         dm_service_time dm_queue_length scsi_dh_alua crc32c_generic ext4)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() { echo "build-image: ERROR: $*" >&2; exit 1; }
log() { echo "build-image: $*" >&2; }

[[ $(id -u) == 0 ]] || die "must run as root (debootstrap, chroot and apt-get need it)"
mkdir -p "$CACHE" || die "cannot create cache folder $CACHE"
exec 9>"$CACHE/.lock"
flock 9 || die "cannot lock $CACHE/.lock"

# ---------------------------------------------------------------- host tools
apt_updated=0
apt_update() {
    if [[ $apt_updated == 0 ]]; then
        log "apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed"
        apt_updated=1
    fi
}

qemu_img_has_iscsi() {
    # Loads the iscsi block module: "Unknown protocol"/"Unable to load module" when absent.
    local out
    out=$(qemu-img info iscsi://127.0.0.1:1/iqn.2000-01.invalid:x/0 2>&1 || true)
    ! grep -qiE "unknown protocol|unable to load module|unknown driver" <<<"$out"
}

install_host_tools() {
    local need=()
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v cpio >/dev/null || need+=(cpio)
    command -v flock >/dev/null || need+=(util-linux)
    if ((${#need[@]})); then
        apt_update
        log "installing ${need[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2 \
            || die "apt-get install ${need[*]} failed"
    fi
    if command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null \
        && qemu_img_has_iscsi; then
        return
    fi
    # qemu-system-x86 and qemu-block-extra must be the same build as the installed
    # qemu-utils (QEMU loads only modules of its own build). This machine kind comes
    # with qemu-utils from bookworm-backports, which bookworm's own qemu-system-x86
    # (7.2) conflicts with; then take qemu-system-x86/qemu-block-extra from
    # bookworm-backports too, through a private apt list that leaves the system's
    # sources untouched.
    local qu_ver
    qu_ver=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [[ $qu_ver == *bpo* ]]; then
        log "qemu-utils $qu_ver is from backports: installing qemu-system-x86 and qemu-block-extra from bookworm-backports"
        local mirror sec bpo=$CACHE/apt-backports
        mirror=$(debian_mirror)
        sec=$(debian_security_mirror)
        mkdir -p "$bpo/lists/partial"
        cat >"$bpo/sources.list" <<EOF
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb $sec $SUITE-security main
deb $mirror $SUITE-backports main
EOF
        local A=(-o "Dir::Etc::sourcelist=$bpo/sources.list" -o "Dir::Etc::sourceparts=-"
                 -o "Dir::State::lists=$bpo/lists")
        apt-get "${A[@]}" update -qq >&2 || die "apt-get update (with $SUITE-backports) failed"
        DEBIAN_FRONTEND=noninteractive apt-get "${A[@]}" install -y -qq --no-install-recommends \
            -t "$SUITE-backports" qemu-system-x86 qemu-block-extra >&2 \
            || die "installing qemu-system-x86 qemu-block-extra from $SUITE-backports failed"
    else
        apt_update
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            qemu-system-x86 qemu-block-extra qemu-utils >&2 \
            || die "apt-get install qemu-system-x86 qemu-block-extra qemu-utils failed"
    fi
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 still missing after install"
    qemu_img_has_iscsi || die "qemu-img has no iscsi driver even with qemu-block-extra installed: $(qemu-img info iscsi://127.0.0.1:1/iqn.2000-01.invalid:x/0 2>&1 | head -2)"
}

# The Debian mirror of the host's apt sources (deb822 or one-line format).
debian_mirror() {
    local m
    m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
        /^URIs:/ {u=$2} /^Suites:/ {for (i=2;i<=NF;i++) if ($i=="'$SUITE'") print u}' | head -1)
    [[ -n $m ]] || m=$(grep -hsE "^deb[[:space:]]+[^[]*[[:space:]]${SUITE}[[:space:]]" \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}' | head -1)
    echo "${m:-http://deb.debian.org/debian}"
}
debian_security_mirror() {
    local m
    m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
        /^URIs:/ {u=$2} /^Suites:/ {for (i=2;i<=NF;i++) if ($i=="'$SUITE'-security") print u}' | head -1)
    echo "${m:-http://deb.debian.org/debian-security}"
}

install_host_tools

# ---------------------------------------------------------------- stamp check
IMG=$CACHE/image
script_sum=$(sha256sum "$HERE/build-image.sh" | cut -c1-16)
if [[ -f $IMG/stamp && -f $IMG/vmlinuz && -f $IMG/base.cpio.gz ]] \
    && grep -qx "script=$script_sum" "$IMG/stamp"; then
    log "cached image is up to date: $IMG ($(grep '^kernel=' "$IMG/stamp"))"
    echo "$IMG"
    exit 0
fi

# ---------------------------------------------------------------- root file system
ROOTFS=$CACHE/rootfs
GUEST_TOOLS=(iscsiadm iscsid multipath multipathd dmsetup mkfs.ext4 e2fsck sg_rtpg)
rootfs_has_tools() {
    local b
    for b in "${GUEST_TOOLS[@]}"; do
        [[ -x $ROOTFS/sbin/$b || -x $ROOTFS/usr/sbin/$b || -x $ROOTFS/usr/bin/$b ]] || {
            echo "$b"
            return 1
        }
    done
}
if [[ -f $ROOTFS/.switchyard-complete ]] && ! missing=$(rootfs_has_tools); then
    log "cached rootfs lacks $missing (built from an older package list): rebuilding it"
    rm -f "$ROOTFS/.switchyard-complete"
fi
if [[ ! -f $ROOTFS/.switchyard-complete ]]; then
    rm -rf "$ROOTFS"
    mirror=$(debian_mirror)
    log "debootstrap $SUITE from $mirror into $ROOTFS (a few minutes)"
    if ! debootstrap --variant=minbase --include="$GUEST_PACKAGES" "$SUITE" "$ROOTFS" "$mirror" \
        >"$CACHE/debootstrap.log" 2>&1; then
        tail -20 "$CACHE/debootstrap.log" >&2
        [[ -f $ROOTFS/debootstrap/debootstrap.log ]] && tail -20 "$ROOTFS/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (full log: $CACHE/debootstrap.log)"
    fi
    missing=$(rootfs_has_tools) || die "debootstrap finished but $missing is missing from the rootfs"
    touch "$ROOTFS/.switchyard-complete"
fi

# ---------------------------------------------------------------- kernel
KDIR=$CACHE/kernel
if [[ ! -f $KDIR/.switchyard-complete ]]; then
    apt_update
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [[ -n $kpkg ]] || die "cannot find the kernel package: 'apt-cache depends linux-image-amd64' names no linux-image-<version>-amd64"
    log "downloading $kpkg"
    rm -rf "$KDIR"; mkdir -p "$KDIR/deb" "$KDIR/root"
    (cd "$KDIR/deb" && apt-get -o APT::Sandbox::User=root download "$kpkg" >&2) || die "apt-get download $kpkg failed"
    dpkg -x "$KDIR"/deb/*.deb "$KDIR/root" || die "dpkg -x of $kpkg failed"
    echo "${kpkg#linux-image-}" >"$KDIR/kver"
    touch "$KDIR/.switchyard-complete"
fi
KVER=$(cat "$KDIR/kver")
VMLINUZ=$KDIR/root/boot/vmlinuz-$KVER
[[ -f $VMLINUZ ]] || die "kernel image $VMLINUZ missing from the unpacked package"
[[ -d $KDIR/root/lib/modules/$KVER ]] || die "modules of $KVER missing from the unpacked package"

# ---------------------------------------------------------------- initramfs
STAGE=$CACHE/stage
log "assembling the initramfs (kernel $KVER)"
rm -rf "$STAGE"
cp -a "$ROOTFS" "$STAGE"
rm -rf "$STAGE"/usr/share/{doc,man,info,locale,lintian,linda} "$STAGE"/var/cache/apt/* \
    "$STAGE"/var/lib/apt/lists/* "$STAGE"/debootstrap "$STAGE/.switchyard-complete"

# Resolve module dependencies with the guest's own depmod/modprobe, then keep only
# the modules the tests need (and what they depend on).
mkdir -p "$STAGE/lib/modules"
cp -a "$KDIR/root/lib/modules/$KVER" "$STAGE/lib/modules/$KVER"
chroot "$STAGE" /sbin/depmod -a "$KVER" || die "depmod (in the guest rootfs) failed"
keep=$STAGE/.keep-modules
: >"$keep"
for m in "${MODULES[@]}"; do
    deps=$(chroot "$STAGE" /sbin/modprobe -S "$KVER" --show-depends "$m" 2>&1) \
        || die "module $m: modprobe --show-depends failed: $deps"
    awk '$1 == "insmod" {print $2}' <<<"$deps" >>"$keep"
done
sort -u -o "$keep" "$keep"
log "keeping $(wc -l <"$keep") modules: $(xargs -n1 basename <"$keep" | sed 's/\.ko.*//' | tr '\n' ' ')"
(cd "$STAGE" && find "lib/modules/$KVER/kernel" -type f -name '*.ko*' | sed 's|^|/|' \
    | grep -vxF -f "$keep" | sed 's|^/||' | xargs -r rm -f)
find "$STAGE/lib/modules/$KVER/kernel" -type d -empty -delete
chroot "$STAGE" /sbin/depmod -a "$KVER" || die "second depmod failed"
rm -f "$keep"

# Guest configuration that does not depend on the run (run.sh adds /init and the test).
echo "InitiatorName=iqn.2026-11.org.switchyard:qemu-guest" >"$STAGE/etc/iscsi/initiatorname.iscsi"
echo "switchyard-guest" >"$STAGE/etc/hostname"
mkdir -p "$STAGE/run/lock/iscsi" "$STAGE/etc/multipath"

mkdir -p "$IMG"
tmp=$IMG/base.cpio.gz.tmp
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) >"$tmp" \
    || die "cpio/gzip of the initramfs failed"
mv "$tmp" "$IMG/base.cpio.gz"
cp "$VMLINUZ" "$IMG/vmlinuz"
rm -rf "$STAGE"
printf 'kernel=%s\nscript=%s\nbuilt=%s\n' "$KVER" "$script_sum" "$(date -u +%FT%TZ)" >"$IMG/stamp"
log "image ready: $IMG (initramfs $(du -h "$IMG/base.cpio.gz" | cut -f1))"
echo "$IMG"
