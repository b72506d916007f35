#!/usr/bin/env bash
# Build the debian-cloud image: a Debian 12 cloud image with cloud-init (NoCloud only), made
# here from Debian's own packages, so tests and the demo need no download of a vendor image.
#
#   scripts/build-cloud-image.sh [--images-dir DIR] [--force] [--mirror URL]
#
#   --images-dir DIR   where the image goes (default /var/lib/vm-isolation/images)
#   --force            rebuild even if the image is up to date
#   --mirror URL       the Debian mirror debootstrap uses (default: the host's apt mirror,
#                      else http://deb.debian.org/debian)
#
# Output in DIR: debian-cloud.qcow2 (0644), a whole disk that boots by itself the way a vendor
# cloud image does, with no help from the host:
#   MBR (syslinux's mbr.bin) -> partition 1, FAT, bootable: SYSLINUX, the image's own kernel
#   (vmlinuz) and initramfs (initrd.img), copied from its /boot -> partition 2, ext4: the root,
#   debootstrapped (minbase) with linux-image-amd64, systemd, openssh-server, cloud-init, sudo.
# Why SYSLINUX on FAT: `syslinux --install` writes its boot record into a FAT image file with
# mtools, so the disk is made without loop devices or mounts (grub-install and extlinux need
# a mounted filesystem). A kernel upgraded inside a guest is not what boots next time; guests
# live for one task.
#
# The image carries no key and no password: root and every user are locked, /etc/ssh has no
# host keys (each guest gets its own through its NoCloud seed, vm_isolation/cloudseed.py), and
# /etc/machine-id is empty (systemd makes one per boot). cloud-init reads the NoCloud seed only
# (datasource_list [NoCloud, None]); the network is DHCP on the first NIC by systemd-networkd,
# baked in (cloud-init's network config is off). Boot-time trims are listed in tune_boot.
#
# The build id (a hash of this script and of apt's candidate versions of the packages
# installed, from the host's package lists) is kept in DIR/.build-id.debian-cloud; when it
# matches and the image exists the script says "up to date". The image is built in a
# temporary directory inside DIR and renamed into place (atomic); debootstrap's downloads are
# kept in DIR/.cache/debootstrap for rebuilds.
set -euo pipefail
umask 022

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
readonly NAME=debian-cloud
readonly SUITE=bookworm
readonly DEFAULT_IMAGES_DIR=/var/lib/vm-isolation/images
readonly PACKAGES=(linux-image-amd64 systemd systemd-sysv udev openssh-server cloud-init sudo
                   initramfs-tools iproute2 netbase ca-certificates)
readonly BOOT_MIB=48
readonly MBR_BIN=/usr/lib/syslinux/mbr/mbr.bin
readonly ROOT_LABEL=cloudroot

IMAGES_DIR=$DEFAULT_IMAGES_DIR
FORCE=0
MIRROR=""
WORK_DIR=""

say() { printf 'build-cloud-image: %s\n' "$*" >&2; }
die() { printf 'build-cloud-image: ERROR: %s\n' "$*" >&2; exit 1; }

now_ms() { local us=${EPOCHREALTIME//[!0-9]/}; echo $((us / 1000)); }

timed() {   # DESCRIPTION COMMAND...
    local what=$1 start ms
    shift
    start=$(now_ms)
    say "$what ..."
    "$@"
    ms=$(($(now_ms) - start))
    say "$what: done in $((ms / 1000)).$(((ms % 1000) / 100)) s"
}

quietly() {   # COMMAND...: show the output only when it fails
    local output
    if ! output=$("$@" 2>&1); then
        printf '%s\n' "$output" | tail -n 30 >&2
        die "failed: $*"
    fi
}

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
            --images-dir) [ $# -ge 2 ] || die "--images-dir needs a directory"; IMAGES_DIR=$2; shift ;;
            --images-dir=*) IMAGES_DIR=${1#*=} ;;
            --mirror) [ $# -ge 2 ] || die "--mirror needs a URL"; MIRROR=$2; shift ;;
            --mirror=*) MIRROR=${1#*=} ;;
            --force) FORCE=1 ;;
            -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
            *) die "unknown argument: $1 (see --help)" ;;
        esac
        shift
    done
}

require_host() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot): sudo $0"
    local tool missing=()
    for tool in debootstrap chroot mkfs.ext4 mkfs.vfat mcopy syslinux sfdisk qemu-img apt-cache sha256sum flock; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ -r "$MBR_BIN" ] || missing+=("$MBR_BIN")
    [ ${#missing[@]} -eq 0 ] || die "missing on this host: ${missing[*]} (run scripts/host-setup.sh)"
}

host_mirror() {
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null) || true
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null) || true
    echo "${uri:-http://deb.debian.org/debian}"
}

compute_build_id() {
    {
        (cd "$HERE" && sha256sum build-cloud-image.sh)
        printf 'suite %s\n' "$SUITE"
        local p
        for p in "${PACKAGES[@]}"; do
            printf '%s %s\n' "$p" "$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')"
        done
    } | sha256sum | cut -d' ' -f1
}

is_up_to_date() {   # BUILD_ID
    [ -s "$IMAGES_DIR/$NAME.qcow2" ] && [ "$(cat "$IMAGES_DIR/.build-id.$NAME" 2>/dev/null)" = "$1" ]
}

# debootstrap makes the minimal base; the packages are then installed by apt in the chroot
# (debootstrap's own --include resolves python3 packages' configure order badly: cloud-init's
# dependencies fail to configure). Daemons are kept from starting by policy-rc.d.
bootstrap() {   # ROOT
    local root=$1
    mkdir -p "$IMAGES_DIR/.cache/debootstrap"
    quietly debootstrap --variant=minbase --cache-dir="$IMAGES_DIR/.cache/debootstrap" "$SUITE" "$root" "$MIRROR"
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 0755 "$root/usr/sbin/policy-rc.d"
    mount_chroot "$root"
    DEBIAN_FRONTEND=noninteractive quietly chroot "$root" apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${PACKAGES[@]}"
    rm -f "$root/usr/sbin/policy-rc.d"
}

MOUNTED=()
mount_chroot() {   # ROOT: /proc, /sys and /dev for maintainer scripts, unmounted by cleanup
    local root=$1 m
    for m in proc sys dev dev/pts; do
        case $m in
            proc) mount -t proc proc "$root/proc" ;;
            sys) mount -t sysfs sysfs "$root/sys" ;;
            dev) mount --bind /dev "$root/dev" ;;
            dev/pts) mount -t devpts devpts "$root/dev/pts" ;;
        esac
        MOUNTED=("$root/$m" "${MOUNTED[@]}")
    done
}

unmount_chroot() {
    local m
    for m in "${MOUNTED[@]}"; do umount -l "$m" 2>/dev/null || true; done
    MOUNTED=()
}

configure() {   # ROOT
    local root=$1
    # No identity of its own: hostname from the seed, machine-id per boot, no host keys.
    : >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    echo localhost >"$root/etc/hostname"
    rm -f "$root"/etc/ssh/ssh_host_*
    printf 'LABEL=%s / ext4 defaults,noatime,errors=remount-ro 0 1\n' "$ROOT_LABEL" >"$root/etc/fstab"
    # No password anywhere: root locked (cloud-init locks the users it makes).
    chroot "$root" passwd -l root >/dev/null
    # sshd: keys only.
    cat >"$root/etc/ssh/sshd_config.d/10-vmiso.conf" <<'EOF'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
EOF
    # DHCP on the first NIC, by systemd-networkd (cloud-init's network config is off).
    cat >"$root/etc/systemd/network/10-dhcp.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no

[DHCPv4]
SendHostname=yes
UseDomains=no
EOF
    chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1
    cat >"$root/etc/cloud/cloud.cfg.d/90-vmiso.cfg" <<'EOF'
# vm-isolation: the NoCloud seed (a cidata volume) is the only data source.
datasource_list: [NoCloud, None]
network: {config: disabled}
EOF
    # A small initramfs: the modules the root on virtio needs, gzip (fast to unpack emulated).
    printf '%s\n' virtio_pci virtio_blk ext4 >"$root/etc/initramfs-tools/modules"
    sed -i -e 's/^MODULES=.*/MODULES=list/' -e 's/^COMPRESS=.*/COMPRESS=gzip/' \
        "$root/etc/initramfs-tools/initramfs.conf"
    quietly chroot "$root" update-initramfs -u -k all
}

# Boot-time trims (bench/CLOUD.md: where a boot goes, and what is known of each trim).
tune_boot() {   # ROOT
    local root=$1 unit
    # Nothing waits for "online": cloud-init's NoCloud seed is a local disk.
    for unit in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
        e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer dpkg-db-backup.timer \
        systemd-timesyncd.service getty@tty1.service; do
        ln -sf /dev/null "$root/etc/systemd/system/$unit"
    done
    # The modules a one-task guest needs, in the order cloud-init runs them.
    cat >"$root/etc/cloud/cloud.cfg.d/91-vmiso-modules.cfg" <<'EOF'
cloud_init_modules: [seed_random, bootcmd, write-files, set_hostname, update_hostname, update_etc_hosts, users-groups, ssh]
cloud_config_modules: [runcmd]
cloud_final_modules: [scripts-per-once, scripts-per-boot, scripts-per-instance, scripts-user, final-message]
EOF
}

clean_root() {   # ROOT
    local root=$1
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/var/cache/debconf/*-old \
        "$root"/var/lib/cloud/* "$root"/tmp/* "$root"/root/.bash_history
}

make_disk() {   # ROOT OUT.qcow2
    local root=$1 raw=$WORK_DIR/disk.raw boot=$WORK_DIR/boot.fat rootfs=$WORK_DIR/root.ext4
    local kernel initrd root_kib root_mib total_mib
    kernel=$(cd "$root/boot" && ls vmlinuz-* | sort -V | tail -1)
    initrd=initrd.img-${kernel#vmlinuz-}
    [ -s "$root/boot/$initrd" ] || die "no $initrd in the image's /boot"
    # Partition 1: FAT with SYSLINUX, the kernel and the initramfs.
    quietly mkfs.vfat -C -n VMISOBOOT "$boot" $((BOOT_MIB * 1024))
    cat >"$WORK_DIR/syslinux.cfg" <<EOF
DEFAULT linux
PROMPT 0
TIMEOUT 0
SERIAL 0 115200
LABEL linux
  KERNEL vmlinuz
  APPEND initrd=initrd.img root=LABEL=$ROOT_LABEL ro console=ttyS0,115200 quiet no_timer_check panic=-1
EOF
    MTOOLS_SKIP_CHECK=1 quietly mcopy -i "$boot" "$root/boot/$kernel" ::vmlinuz
    MTOOLS_SKIP_CHECK=1 quietly mcopy -i "$boot" "$root/boot/$initrd" ::initrd.img
    MTOOLS_SKIP_CHECK=1 quietly mcopy -i "$boot" "$WORK_DIR/syslinux.cfg" ::syslinux.cfg
    quietly syslinux --install "$boot"
    # Partition 2: the root, made from the directory (no loop mount), 25 % + 256 MiB free.
    root_kib=$(du -sk "$root" | cut -f1)
    root_mib=$((root_kib * 5 / 4 / 1024 + 256))
    quietly mkfs.ext4 -q -F -L "$ROOT_LABEL" -m 0 -E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0 \
        -d "$root" "$rootfs" "${root_mib}M"
    quietly e2fsck -f -n "$rootfs"
    # The disk: MBR, 1 MiB gap, the two partitions.
    total_mib=$((1 + BOOT_MIB + root_mib))
    truncate -s "${total_mib}M" "$raw"
    printf 'label: dos\nstart=1MiB, size=%sMiB, type=6, bootable\nstart=%sMiB, type=83\n' \
        "$BOOT_MIB" $((1 + BOOT_MIB)) | quietly sfdisk -q "$raw"
    dd if="$MBR_BIN" of="$raw" bs=440 count=1 conv=notrunc status=none
    dd if="$boot" of="$raw" bs=1M seek=1 conv=notrunc status=none
    dd if="$rootfs" of="$raw" bs=1M seek=$((1 + BOOT_MIB)) conv=notrunc status=none
    rm -f "$boot" "$rootfs"
    quietly qemu-img convert -f raw -O qcow2 "$raw" "$2"
    rm -f "$raw"
    say "$NAME.qcow2: ${root_kib} KiB of files, a ${total_mib} MiB disk, kernel ${kernel#vmlinuz-}"
}

cleanup() {
    unmount_chroot
    [ -z "$WORK_DIR" ] || rm -rf --one-file-system "$WORK_DIR"
}

build() {   # BUILD_ID
    local start ms root
    start=$(now_ms)
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    WORK_DIR=$(mktemp -d "$IMAGES_DIR/.tmp-cloud.XXXXXX")
    root=$WORK_DIR/root
    say "building $NAME.qcow2 ($SUITE from $MIRROR) into $IMAGES_DIR"
    timed "debootstrap (${PACKAGES[*]})" bootstrap "$root"
    timed "configuring the image" configure "$root"
    tune_boot "$root"
    clean_root "$root"
    unmount_chroot
    timed "making the disk" make_disk "$root" "$WORK_DIR/$NAME.qcow2"
    rm -rf --one-file-system "$root"
    chmod 0644 "$WORK_DIR/$NAME.qcow2"
    sync -- "$WORK_DIR/$NAME.qcow2"
    rm -f "$IMAGES_DIR/.build-id.$NAME"
    mv -f "$WORK_DIR/$NAME.qcow2" "$IMAGES_DIR/$NAME.qcow2"
    echo "$1" >"$IMAGES_DIR/.build-id.$NAME.new"
    chmod 0644 "$IMAGES_DIR/.build-id.$NAME.new"
    mv -f "$IMAGES_DIR/.build-id.$NAME.new" "$IMAGES_DIR/.build-id.$NAME"
    ms=$(($(now_ms) - start))
    say "built $NAME.qcow2 in $((ms / 1000)).$(((ms % 1000) / 100)) s"
}

main() {
    parse_args "$@"
    require_host
    [ -n "$MIRROR" ] || MIRROR=$(host_mirror)
    install -d -m 0755 "$IMAGES_DIR"
    IMAGES_DIR=$(realpath -- "$IMAGES_DIR")
    exec {lock_fd}>"$IMAGES_DIR/.lock.$NAME"
    flock -n "$lock_fd" || { say "waiting for another build of $NAME"; flock "$lock_fd"; }
    local d
    for d in "$IMAGES_DIR"/.tmp-cloud.*; do   # a killed build's leftovers
        if [ -e "$d" ]; then rm -rf --one-file-system "$d"; fi
    done
    local build_id
    build_id=$(compute_build_id)
    if [ "$FORCE" -eq 0 ] && is_up_to_date "$build_id"; then
        say "up to date"
        return 0
    fi
    build "$build_id"
}

main "$@"
