#!/usr/bin/env bash
# Build the vm-isolation guest images from Debian packages, without touching the host's /boot.
#
#   scripts/build-image.sh [--images-dir DIR] [--force] [VARIANT...]
#
#   --images-dir DIR   where the images go (default /var/lib/vm-isolation/images). It must be
#                      traversable by the libvirt-qemu user, so not under /root.
#   --force            rebuild even if the images are up to date
#   VARIANT...         the base images to build (default: busybox only):
#                        busybox  busybox, dropbear (+ sftp-server) and udhcpc on glibc
#                        python   the busybox root plus Debian's python3 (/usr/bin/python3)
#                      e.g. `scripts/build-image.sh busybox python` builds (or checks) both.
#
# Outputs in DIR (directories 0755, files 0644):
#   vmlinux            the Debian kernel as an uncompressed ELF, booted directly through PVH
#                      (under emulation that saves the ~4 s the bzImage spends un-xz-ing itself)
#   initramfs.cpio.gz  shared by every variant: loads the virtio and ext4 modules, mounts the
#                      guest's disk /dev/vda and switch_roots to its /sbin/vmiso-init
#                      (guest/initramfs-init)
#   VARIANT.qcow2      the base image, an ext4 root filesystem. Each guest boots from its own
#                      copy-on-write overlay of it (qemu-img create -b VARIANT.qcow2 -F qcow2).
#
# The python variant is made without debootstrap: the Debian packages of python3.11 and of
# the libraries its binary and lib-dynload modules link (PYTHON_PACKAGES) are fetched with
# `apt-get download` (kept in DIR/.cache), unpacked with `dpkg-deb -x` (no maintainer
# scripts) over the busybox root, whose glibc is the host's; the standard library is
# byte-compiled at build time, and the build fails unless every ELF file in the root finds
# its libraries and every lib-dynload module imports.
#
# The guest side (kernel command line, console lines) is specified in guest/vmiso-init. No
# private key of any kind is put into an image: guests make their host key at boot.
#
# A build id (a hash of this script, guest/*, the kernel package version and the versions of
# the host packages copied into the image; for python also libc6's and those of the
# downloaded packages) is recorded in DIR/.build-id per variant; when it matches and the
# outputs exist the script says "up to date" and exits at once. Outputs are
# built in a temporary directory inside DIR and renamed into place, so a failed or
# interrupted build never leaves a half-written image behind.
#
# Adding a variant: write a populate_rootfs_NAME function next to populate_rootfs_busybox
# that makes the root (its own /etc/passwd etc., or install_minimal_etc), then adds
# install_guest_files, install_busybox (it never replaces a file the root already has) and
# install_ssh_server (or starts from populate_rootfs_busybox, as python does); add the name
# to VARIANTS and its disk size to DISK_SIZES. The kernel and the initramfs are shared by all
# variants; several variants built in one call share one kernel unpack and initramfs build.
set -euo pipefail
umask 022

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
readonly GUEST_FILES=$HERE/guest
readonly DEFAULT_IMAGES_DIR=/var/lib/vm-isolation/images
readonly VARIANTS=(busybox python)
readonly KERNEL_METAPACKAGE=linux-image-amd64
# In load order, with their dependencies, through `modprobe --show-depends`.
readonly INITRAMFS_MODULES=(virtio_pci virtio_net virtio_blk virtio_rng ext4)
readonly -A DISK_SIZES=([busybox]=512M [python]=1G)
readonly BUSYBOX=/bin/busybox
readonly SFTP_SERVER=/usr/lib/openssh/sftp-server
# Host packages whose files are copied into the images: their versions are part of the id.
readonly COPIED_PACKAGES=(busybox-static dropbear-bin openssh-sftp-server)
readonly APT_LISTS=/var/lib/apt/lists
# The python variant: Debian's python3.11 and the libraries that its binary and its lib-dynload
# modules need beyond what the busybox root has (found with ldd; glibc's own libm and libresolv
# are copied from the host's libc6 like the rest of glibc). apt's candidate versions are used.
readonly PYTHON_VERSION=3.11
readonly PYTHON_PACKAGES=(
    python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
    libexpat1 libssl3 libffi8 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libdb5.3
    libncursesw6 libtinfo6 libreadline8
    libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1
    libcom-err2
)
readonly LOADER=/lib64/ld-linux-x86-64.so.2

IMAGES_DIR=$DEFAULT_IMAGES_DIR
FORCE=0
REQUESTED=()      # the variants named on the command line, in order, once each
VARIANT=busybox   # the variant being checked or built
PYTHON_DEBS=()    # "PACKAGE VERSION ARCHITECTURE" of PYTHON_PACKAGES, when python is requested
WORK_DIR=""   # the build's temporary directory, inside IMAGES_DIR

# --- output and errors ---------------------------------------------------------------------

say() { printf 'build-image: %s\n' "$*" >&2; }
die() { printf 'build-image: ERROR: %s\n' "$*" >&2; exit 1; }
usage_error() { usage >&2; printf 'build-image: ERROR: %s\n' "$*" >&2; exit 2; }

now_ms() {
    local us=${EPOCHREALTIME//[!0-9]/}
    echo $((us / 1000))
}

# timed DESCRIPTION COMMAND...: run a long step between two progress lines.
timed() {
    local what=$1 start
    shift
    start=$(now_ms)
    say "$what ..."
    "$@"
    local ms=$(($(now_ms) - start))
    say "$what: done in $((ms / 1000)).$(((ms % 1000) / 100)) s"
}

# quietly COMMAND...: run a chatty tool; show its output only when it fails.
quietly() {
    local output
    if ! output=$("$@" 2>&1); then
        printf '%s\n' "$output" | tail -n 20 >&2
        die "failed: $*"
    fi
}

# --- arguments and the host ----------------------------------------------------------------

usage() {
    cat <<EOF
usage: scripts/build-image.sh [--images-dir DIR] [--force] [VARIANT...]

  --images-dir DIR   where the images go (default $DEFAULT_IMAGES_DIR)
  --force            rebuild even if the images are up to date
  VARIANT...         the base images to build: ${VARIANTS[*]} (default busybox)
EOF
}

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
            --images-dir) [ $# -ge 2 ] || usage_error "--images-dir needs a directory"; IMAGES_DIR=$2; shift ;;
            --images-dir=*) IMAGES_DIR=${1#*=} ;;
            --force) FORCE=1 ;;
            -h | --help) usage; exit 0 ;;
            -*) usage_error "unknown option: $1" ;;
            *) is_known_variant "$1" || usage_error "unknown variant '$1' (known: ${VARIANTS[*]})"
               is_requested "$1" || REQUESTED+=("$1") ;;
        esac
        shift
    done
    [ ${#REQUESTED[@]} -gt 0 ] || REQUESTED=(busybox)
}

is_known_variant() {   # NAME
    local v
    for v in "${VARIANTS[@]}"; do [ "$1" = "$v" ] && return 0; done
    return 1
}

is_requested() {   # NAME
    local v
    for v in "${REQUESTED[@]}"; do [ "$1" = "$v" ] && return 0; done
    return 1
}

require_host() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (the image's files must be owned by root): sudo $0"
    local tool missing=()
    for tool in apt-get apt-cache dpkg-deb dpkg-query depmod modprobe cpio gzip mkfs.ext4 e2fsck \
        qemu-img python3 dropbear dropbearkey sha256sum flock ldd chroot; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ -x "$BUSYBOX" ] || missing+=("$BUSYBOX")
    [ -x "$SFTP_SERVER" ] || missing+=("$SFTP_SERVER")
    [ ${#missing[@]} -eq 0 ] || die "missing on this host: ${missing[*]} (run scripts/host-setup.sh)"
    # The initramfs has no libraries: a dynamically linked busybox would not even start there.
    if ldd "$BUSYBOX" >/dev/null 2>&1; then
        die "$BUSYBOX is dynamically linked: apt-get install busybox-static"
    fi
}

# Checks that qemu, which libvirt runs as libvirt-qemu, will reach the files in IMAGES_DIR
# (every existing directory on the way needs the "other" execute bit), then creates it 0755.
prepare_images_dir() {
    local dir d mode
    dir=$(realpath -m -- "$IMAGES_DIR")
    case $dir/ in
        /root/*) die "$dir is under /root, which the libvirt-qemu user cannot read: choose another --images-dir" ;;
    esac
    d=$dir
    while :; do
        if [ -e "${d:-/}" ]; then
            mode=$(stat -L -c %a "${d:-/}")
            (((8#$mode & 1) == 1)) \
                || die "${d:-/} (mode $mode) is not traversable by other users, so libvirt-qemu could not read $dir"
        fi
        [ -n "$d" ] || break
        d=${d%/*}
    done
    install -d -m 0755 "$dir"
    IMAGES_DIR=$dir
}

# One build at a time per images directory; a second one waits, then usually finds the
# images up to date. Temporary directories of a killed build are removed here.
lock_images_dir() {
    exec {lock_fd}>"$IMAGES_DIR/.lock"
    if ! flock -n "$lock_fd"; then
        say "waiting for another build in $IMAGES_DIR"
        flock "$lock_fd"
    fi
    rm -rf "$IMAGES_DIR"/.tmp-build.*
}

# --- the kernel package ----------------------------------------------------------------------

# Prints "PACKAGE VERSION" of the kernel linux-image-amd64 currently depends on.
#
# apt-cache takes about 1.5 s per call on hosts whose apt binary cache is disabled (Docker's
# apt config does that), so the answer is remembered together with a fingerprint of apt's
# package lists and asked again only when those change (e.g. after apt-get update).
resolve_kernel_package() {
    local memo=$IMAGES_DIR/.cache/kernel-package fingerprint
    fingerprint=$(apt_lists_fingerprint)
    if [ -f "$memo" ]; then
        local memo_fingerprint package version
        read -r memo_fingerprint package version <"$memo" || true
        if [ "$memo_fingerprint" = "$fingerprint" ] && [ -n "${version-}" ]; then
            echo "$package $version"
            return
        fi
    fi
    local answer
    if ! answer=$(ask_apt_for_kernel_package); then
        say "apt knows no $KERNEL_METAPACKAGE: running apt-get update"
        quietly apt-get update -q
        fingerprint=$(apt_lists_fingerprint)
        answer=$(ask_apt_for_kernel_package) \
            || die "apt-cache finds no versioned package that $KERNEL_METAPACKAGE depends on"
    fi
    install -d -m 0755 "$IMAGES_DIR/.cache"
    echo "$fingerprint $answer" >"$memo.new"
    mv -f "$memo.new" "$memo"
    echo "$answer"
}

apt_lists_fingerprint() {
    local lists=()
    shopt -s nullglob
    lists=("$APT_LISTS"/*_Packages* "$APT_LISTS"/*Release)
    shopt -u nullglob
    { [ ${#lists[@]} -eq 0 ] || stat -c '%n %s %Y' "${lists[@]}"; } | sha256sum | cut -d' ' -f1
}

ask_apt_for_kernel_package() {
    local package version
    package=$(apt-cache depends "$KERNEL_METAPACKAGE" 2>/dev/null \
        | awk '$1 ~ /Depends:$/ && $2 ~ /^linux-image-[0-9]/ {print $2; exit}') || true
    [ -n "$package" ] || return 1
    version=$(apt-cache show --no-all-versions "$package" 2>/dev/null \
        | awk '$1 == "Version:" {print $2; exit}') || true
    [ -n "$version" ] || return 1
    echo "$package $version"
}

# --- the python variant's packages ----------------------------------------------------------

# Prints "PACKAGE VERSION ARCHITECTURE" for each of PYTHON_PACKAGES: apt's candidate. Remembered
# like the kernel package (see resolve_kernel_package), so an up-to-date check stays fast.
resolve_python_packages() {
    local memo=$IMAGES_DIR/.cache/python-packages fingerprint answer
    fingerprint=$(apt_lists_fingerprint)
    if [ -f "$memo" ] && [ "$(head -n 1 "$memo")" = "$fingerprint" ]; then
        tail -n +2 "$memo"
        return
    fi
    if ! answer=$(ask_apt_for_packages "${PYTHON_PACKAGES[@]}"); then
        say "apt does not know all of ${PYTHON_PACKAGES[*]}: running apt-get update"
        quietly apt-get update -q
        fingerprint=$(apt_lists_fingerprint)
        answer=$(ask_apt_for_packages "${PYTHON_PACKAGES[@]}") \
            || die "apt-cache does not know all of ${PYTHON_PACKAGES[*]}"
    fi
    install -d -m 0755 "$IMAGES_DIR/.cache"
    printf '%s\n%s\n' "$fingerprint" "$answer" >"$memo.new"
    mv -f "$memo.new" "$memo"
    echo "$answer"
}

ask_apt_for_packages() {   # PACKAGE...: one line per package, or fails
    local answer
    answer=$(apt-cache show --no-all-versions "$@" 2>/dev/null | awk '
        $1 == "Package:" {p = $2} $1 == "Version:" {v = $2} $1 == "Architecture:" {a = $2}
        /^$/ && p != "" {print p, v, a; p = ""}
        END {if (p != "") print p, v, a}') || true
    [ "$(printf '%s\n' "$answer" | awk 'NF == 3' | sort -u | wc -l)" -eq $# ] || return 1
    echo "$answer"
}

python_deb_path() {   # "PACKAGE VERSION ARCHITECTURE"
    local package version arch
    read -r package version arch <<<"$1"
    echo "$IMAGES_DIR/.cache/${package}_${version//:/%3a}_${arch}.deb"
}

# Fetches the packages of PYTHON_DEBS not yet in DIR/.cache (dropping their older versions).
download_python_debs() {
    local download=$WORK_DIR/download entry deb package version specs=() missing=()
    for entry in "${PYTHON_DEBS[@]}"; do
        deb=$(python_deb_path "$entry")
        [ -s "$deb" ] && continue
        missing+=("$entry")
        read -r package version _ <<<"$entry"
        specs+=("$package=$version")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    mkdir -p "$download"
    (cd "$download" && quietly apt-get download -q -o APT::Sandbox::User=root "${specs[@]}")
    for entry in "${missing[@]}"; do
        deb=$(python_deb_path "$entry")
        [ -s "$download/${deb##*/}" ] || die "apt-get download did not produce ${deb##*/}"
        rm -f "$IMAGES_DIR/.cache/${entry%% *}_"*.deb
        mv -f "$download/${deb##*/}" "$deb"
    done
}

# --- build ids -----------------------------------------------------------------------------

compute_build_id() {   # KERNEL_PACKAGE KERNEL_VERSION
    {
        printf 'variant %s\nkernel %s %s\n' "$VARIANT" "$1" "$2"
        dpkg-query -W "${COPIED_PACKAGES[@]}"
        (cd "$HERE" && sha256sum build-image.sh guest/*)
        if [ "$VARIANT" = python ]; then
            dpkg-query -W "libc6:$(dpkg --print-architecture)"
            printf 'deb %s\n' "${PYTHON_DEBS[@]}"
        fi
    } | sha256sum | cut -d' ' -f1
}

variant_outputs() {
    echo vmlinux initramfs.cpio.gz "$VARIANT.qcow2"
}

is_up_to_date() {   # BUILD_ID
    local recorded file
    recorded=$(awk -v v="$VARIANT" '$1 == v {print $2}' "$IMAGES_DIR/.build-id" 2>/dev/null) || true
    [ "$recorded" = "$1" ] || return 1
    for file in $(variant_outputs); do
        [ -s "$IMAGES_DIR/$file" ] || return 1
    done
}

# record_build_id [BUILD_ID]: set (or, without an id, drop) this variant's line in .build-id.
record_build_id() {
    local ids=$IMAGES_DIR/.build-id
    {
        [ ! -f "$ids" ] || awk -v v="$VARIANT" '$1 != v' "$ids"
        [ $# -eq 0 ] || echo "$VARIANT $1"
    } >"$ids.new"
    chmod 0644 "$ids.new"
    mv -f "$ids.new" "$ids"
}

# --- kernel --------------------------------------------------------------------------------

# The kernel package is kept in DIR/.cache for rebuilds (the current version only).
kernel_deb_path() {   # PACKAGE VERSION
    echo "$IMAGES_DIR/.cache/${1}_${2//:/%3a}_$(dpkg --print-architecture).deb"
}

download_kernel_deb() {   # PACKAGE VERSION DEB
    local download=$WORK_DIR/download name=${3##*/}
    mkdir -p "$download"
    # As root, apt hands downloads to the _apt user, which cannot write to this directory.
    (cd "$download" && quietly apt-get download -q -o APT::Sandbox::User=root "$1=$2")
    [ -s "$download/$name" ] || die "apt-get download did not produce $name"
    rm -f "$IMAGES_DIR"/.cache/linux-image-*.deb
    mv -f "$download/$name" "$3"
}

# Unpacks the kernel package into WORK_DIR/kernel and builds modules.dep (normally the
# package's postinst does that). Sets KERNEL_ROOT and KERNEL_RELEASE.
unpack_kernel() {   # DEB
    KERNEL_ROOT=$WORK_DIR/kernel
    quietly dpkg-deb -x "$1" "$KERNEL_ROOT"
    local releases=("$KERNEL_ROOT"/lib/modules/*)
    if [ ${#releases[@]} -ne 1 ] || [ ! -d "${releases[0]}" ]; then
        die "expected one kernel release under lib/modules in $1"
    fi
    KERNEL_RELEASE=${releases[0]##*/}
    [ -f "$KERNEL_ROOT/boot/vmlinuz-$KERNEL_RELEASE" ] || die "no boot/vmlinuz-$KERNEL_RELEASE in $1"
    quietly depmod -b "$KERNEL_ROOT" "$KERNEL_RELEASE"
}

# The bzImage's protected-mode payload is an xz stream holding the ELF vmlinux. Its place is
# read from the boot protocol's setup header (payload_offset/payload_length). The ELF must
# carry Xen's PVH entry note (CONFIG_PVH), or QEMU could not boot it directly.
extract_vmlinux() {   # BZIMAGE OUT
    python3 - "$1" "$2" <<'PYTHON'
import lzma
import struct
import sys

XZ_MAGIC = b"\xfd7zXZ\x00"
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18


def payload(image: bytes) -> bytes:
    if image[0x202:0x206] != b"HdrS":
        sys.exit("not a bzImage: no setup header")
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    data = image[start:start + length]
    if not data.startswith(XZ_MAGIC):
        sys.exit("the kernel payload is not xz-compressed")
    return data


def has_pvh_entry(elf: bytes) -> bool:
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", elf, phoff + i * phentsize)
        p_offset, = struct.unpack_from("<Q", elf, phoff + i * phentsize + 8)
        p_filesz, = struct.unpack_from("<Q", elf, phoff + i * phentsize + 32)
        if p_type != PT_NOTE:
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, n_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz]
            if name == b"Xen\x00" and n_type == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


source, target = sys.argv[1:3]
with open(source, "rb") as f:
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload(f.read()))
if elf[:5] != b"\x7fELF\x02":
    sys.exit("the decompressed kernel is not a 64-bit ELF")
if not has_pvh_entry(elf):
    sys.exit("the kernel has no PVH entry point (CONFIG_PVH), it cannot be booted directly")
with open(target, "wb") as f:
    f.write(elf)
PYTHON
}

build_kernel() {   # OUT_DIR
    extract_vmlinux "$KERNEL_ROOT/boot/vmlinuz-$KERNEL_RELEASE" "$1/vmlinux" \
        || die "cannot extract vmlinux from vmlinuz-$KERNEL_RELEASE"
}

# --- initramfs -----------------------------------------------------------------------------

# Prints the .ko files of INITRAMFS_MODULES and their dependencies, in load order, once each.
initramfs_module_files() {
    local module
    for module in "${INITRAMFS_MODULES[@]}"; do
        # -C /dev/null: the host's modprobe.d (blacklists, install commands) has no say.
        modprobe -C /dev/null -d "$KERNEL_ROOT" -S "$KERNEL_RELEASE" --show-depends "$module" \
            || die "modprobe cannot resolve module $module of $KERNEL_RELEASE"
    done | awk '$1 == "insmod" && !seen[$2]++ {print $2}'
}

install_module() {   # KO_FILE DEST_DIR: prints the installed file's name
    local name=${1##*/}
    case $name in
        *.ko.xz) name=${name%.xz}; xz -dc "$1" >"$2/$name" ;;
        *.ko.zst) name=${name%.zst}; zstd -qdc "$1" >"$2/$name" ;;
        *.ko) cp "$1" "$2/$name" ;;
        *) die "unexpected module file $1" ;;
    esac
    echo "$name"
}

install_busybox() {   # ROOT: busybox and a symlink per applet
    install -D -m 0755 "$BUSYBOX" "$1/bin/busybox"
    local applet
    mkdir -p "$1"/{bin,sbin,usr/bin,usr/sbin}
    for applet in $("$BUSYBOX" --list-full); do
        case $applet in */*) ;; *) continue ;; esac   # "linuxrc": old-style initrd only
        if [ -e "$1/$applet" ] || [ -L "$1/$applet" ]; then continue; fi
        [ -d "$1/${applet%/*}" ] || mkdir -p "$1/${applet%/*}"
        ln -s /bin/busybox "$1/$applet"
    done
}

build_initramfs() {   # OUT_DIR
    local root=$WORK_DIR/initramfs ko
    mkdir -p "$root"/{dev,proc,sys,newroot,lib/modules}
    install_busybox "$root"
    install -m 0755 "$GUEST_FILES/initramfs-init" "$root/init"
    # The kernel opens /dev/console for /init before anything is mounted.
    mknod -m 0600 "$root/dev/console" c 5 1
    local modules
    modules=$(initramfs_module_files)
    for ko in $modules; do
        install_module "$ko" "$root/lib/modules"
    done >"$root/lib/modules/load-order"
    (cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
        | cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) \
        | gzip -9 -n >"$1/initramfs.cpio.gz"
    say "initramfs: $(wc -l <"$root/lib/modules/load-order") modules, $(du -k "$1/initramfs.cpio.gz" | cut -f1) KiB"
}

# --- root filesystems ----------------------------------------------------------------------

# What every variant's root needs from this repository: the guest-side files and the
# directories they and the host rely on.
install_guest_files() {   # ROOT
    local root=$1
    install -d -m 0755 "$root"/{sbin,etc/udhcpc,dev,proc,sys,run,mnt/mesos/sandbox}
    install -d -m 0700 "$root/root"
    install -d -m 1777 "$root/tmp"
    install -m 0755 "$GUEST_FILES/vmiso-init" "$root/sbin/vmiso-init"
    install -m 0755 "$GUEST_FILES/udhcpc.script" "$root/etc/udhcpc/default.script"
    install -m 0644 "$GUEST_FILES/inittab" "$root/etc/inittab"
}

# A minimal /etc for a root that has none: root's account with a locked password (logins
# are by key only), and what glibc's getpwnam and the resolver look for.
install_minimal_etc() {   # ROOT
    local root=$1
    install -d -m 0755 "$root"/{etc,var/log}
    ln -sfn ../run "$root/var/run"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\ntty:x:5:\n' >"$root/etc/group"
    (umask 077 && printf 'root:!::0:99999:7:::\n' >"$root/etc/shadow")
    printf '/bin/sh\n' >"$root/etc/shells"
    printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
    printf '127.0.0.1\tlocalhost\n' >"$root/etc/hosts"
    : >"$root/etc/resolv.conf"
}

# install_elf ROOT SOURCE [DEST]: a dynamically linked program and the libraries ldd lists.
install_elf() {
    local root=$1 source=$2 dest=${3:-$2} lib
    install -D -m 0755 "$source" "$root$dest"
    for lib in $(ldd "$source" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

# dropbear as the SSH server. It runs SFTP sessions through its compiled-in path
# /usr/lib/sftp-server, where OpenSSH's server goes.
install_ssh_server() {   # ROOT
    install_elf "$1" "$(command -v dropbear)" /usr/sbin/dropbear
    install_elf "$1" "$(command -v dropbearkey)" /usr/bin/dropbearkey
    install_elf "$1" "$SFTP_SERVER" /usr/lib/sftp-server
}

populate_rootfs_busybox() {   # ROOT
    install_minimal_etc "$1"
    install_guest_files "$1"
    install_busybox "$1"
    install_ssh_server "$1"
}

# The busybox root plus Debian's python3.11 (see PYTHON_PACKAGES), unpacked without running
# maintainer scripts: what those would do (the python3 symlink, byte-compiling) is done here.
populate_rootfs_python() {   # ROOT
    local root=$1 entry python=/usr/bin/python$PYTHON_VERSION
    populate_rootfs_busybox "$root"
    for entry in "${PYTHON_DEBS[@]}"; do
        quietly dpkg-deb -x "$(python_deb_path "$entry")" "$root"
    done
    rm -rf "$root"/usr/share/{doc,man,lintian}
    [ -x "$root$python" ] || die "no $python in the python packages"
    ln -sfn "${python##*/}" "$root/usr/bin/python3"
    install_missing_glibc_libraries "$root"
    # Timestamp-based .pyc files, as Debian's postinst makes them: the guest never compiles
    # (or writes into its overlay) when it imports the standard library. Sequential, because
    # the chroot has no /dev/shm for compileall's worker processes.
    quietly run_in_root "$root" /usr/bin/python3 -E -m compileall -q -f "/usr/lib/python$PYTHON_VERSION"
    local imported
    imported=$(run_in_root "$root" /usr/bin/python3 -I -c "$IMPORT_ALL_EXTENSIONS") \
        || die "the python root cannot import all of its lib-dynload modules"
    say "python.qcow2: $(run_in_root "$root" /usr/bin/python3 -V), $imported lib-dynload modules import"
}

# Imports every extension module of the standard library and prints how many there are.
readonly IMPORT_ALL_EXTENSIONS='
import importlib, os, sysconfig
d = sysconfig.get_path("platstdlib") + "/lib-dynload"
names = sorted({f.split(".")[0] for f in os.listdir(d) if f.endswith(".so")})
for name in names:
    importlib.import_module(name)
print(len(names))'

run_in_root() {   # ROOT COMMAND...: a command of the root, in a chroot, with a clean environment
    local root=$1
    shift
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin TERM=dumb LC_ALL=C.UTF-8 chroot "$root" "$@"
}

# Prints "SONAME FILE" for each library that ROOT's dynamic loader cannot find for one of the
# root's ELF files (FILE as seen inside the root). The tracing runs inside the root (through
# its static busybox): set outside, LD_TRACE_LOADED_OBJECTS would trace chroot itself.
missing_libraries() {   # ROOT
    local root=$1 file magic files=()
    while IFS= read -r -d '' file; do
        [ "$file" = "$root/bin/busybox" ] && continue   # static
        magic=$(head -c 4 "$file" | od -An -tx1 | tr -d ' \n')
        [ "$magic" = 7f454c46 ] && files+=("${file#"$root"}")
    done < <(find "$root" -type f \( -perm -u+x -o -name '*.so*' \) -print0)
    # shellcheck disable=SC2016 # the script is for the root's shell
    run_in_root "$root" /bin/busybox sh -c '
        for f; do
            LD_TRACE_LOADED_OBJECTS=1 "$0" "$f" | awk -v f="$f" "\$2 == \"=>\" && \$3 == \"not\" {print \$1, f}"
        done' "$LOADER" "${files[@]}" 2>/dev/null
}

# The packages bring no glibc (the root's is the host's, from install_elf): whatever part of it
# they need beyond that (libm, libresolv) comes from the host's libc6 too, so glibc's pieces
# stay of one version. Any other missing library fails the build.
install_missing_glibc_libraries() {   # ROOT
    local root=$1 missing soname file path glibc_files
    glibc_files=$(dpkg -L "libc6:$(dpkg --print-architecture)")
    missing=$(missing_libraries "$root")
    for soname in $(printf '%s\n' "$missing" | awk 'NF {print $1}' | sort -u); do
        path=$(printf '%s\n' "$glibc_files" | grep -m 1 "/$soname\$") || continue
        [ -e "$root$path" ] && continue
        mkdir -p "$root${path%/*}"
        cp -L "$path" "$root$path"
    done
    missing=$(missing_libraries "$root")
    if [ -n "$missing" ]; then
        printf '%s\n' "$missing" | sed 's/^/build-image:   missing /' >&2
        die "the python root lacks libraries (add their packages to PYTHON_PACKAGES)"
    fi
}

# An ext4 filesystem made straight from the directory (mkfs.ext4 -d: no loop mount), then
# converted to qcow2, which stores only the blocks in use.
make_disk_image() {   # ROOT OUT SIZE
    local raw=$WORK_DIR/disk.raw
    # The inode tables and the journal are initialised now, not lazily by the guest kernel,
    # which would otherwise spend emulated CPU time writing zeroes into every overlay.
    quietly mkfs.ext4 -q -F -L vmiso-root -m 0 -E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0 \
        -d "$1" "$raw" "$3"
    quietly e2fsck -f -n "$raw"
    quietly qemu-img convert -f raw -O qcow2 "$raw" "$2"
    rm -f "$raw"
}

build_base_image() {   # OUT_DIR
    local root=$WORK_DIR/rootfs-$VARIANT
    mkdir -p "$root"
    "populate_rootfs_$VARIANT" "$root"
    make_disk_image "$root" "$1/$VARIANT.qcow2" "${DISK_SIZES[$VARIANT]}"
    say "$VARIANT.qcow2: $(du -sk "$root" | cut -f1) KiB of files in a ${DISK_SIZES[$VARIANT]} disk"
    rm -rf "$root"
}

# --- installing the outputs ----------------------------------------------------------------

# Each output is renamed over the old one (atomic per file; running guests keep the old file
# open). This variant's build id is dropped first and written last, so an interruption in
# between leaves the images "out of date", never "up to date" with a mix of builds. When
# several variants are built in one call, the first one installed brings the shared kernel and
# initramfs; they are then already in place for the others.
install_outputs() {   # OUT_DIR BUILD_ID
    local file files=()
    for file in $(variant_outputs); do
        [ -e "$1/$file" ] || [ "$file" = "$VARIANT.qcow2" ] || continue
        files+=("$1/$file")
    done
    chmod 0644 "${files[@]}"
    sync -- "${files[@]}"
    record_build_id
    for file in "${files[@]}"; do
        mv -f "$file" "$IMAGES_DIR/${file##*/}"
    done
    record_build_id "$2"
}

cleanup() {
    [ -z "$WORK_DIR" ] || rm -rf "$WORK_DIR"
}

build() {   # KERNEL_PACKAGE KERNEL_VERSION VARIANT=BUILD_ID...
    local start out deb kernel_package=$1 kernel_version=$2 pending built=(vmlinux initramfs.cpio.gz)
    shift 2
    start=$(now_ms)
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    WORK_DIR=$(mktemp -d "$IMAGES_DIR/.tmp-build.XXXXXX")
    out=$WORK_DIR/out
    mkdir -p "$out"
    say "building ${*%%=*} with $kernel_package $kernel_version into $IMAGES_DIR"
    deb=$(kernel_deb_path "$kernel_package" "$kernel_version")
    [ -s "$deb" ] || timed "downloading $kernel_package $kernel_version" \
        download_kernel_deb "$kernel_package" "$kernel_version" "$deb"
    if [[ " ${*%%=*} " == *" python "* ]]; then
        timed "downloading the python packages" download_python_debs
    fi
    timed "unpacking $kernel_package" unpack_kernel "$deb"
    timed "extracting vmlinux" build_kernel "$out"
    timed "building initramfs.cpio.gz" build_initramfs "$out"
    for pending in "$@"; do
        VARIANT=${pending%%=*}
        timed "building $VARIANT.qcow2" build_base_image "$out"
        install_outputs "$out" "${pending#*=}"
        built+=("$VARIANT.qcow2")
    done
    local ms=$(($(now_ms) - start))
    say "built ${built[*]} in $((ms / 1000)).$(((ms % 1000) / 100)) s"
}

main() {
    parse_args "$@"
    require_host
    prepare_images_dir
    lock_images_dir
    local kernel package version build_id python_debs pending=()
    kernel=$(resolve_kernel_package)
    read -r package version <<<"$kernel"
    if is_requested python; then
        python_debs=$(resolve_python_packages)
        mapfile -t PYTHON_DEBS <<<"$python_debs"
    fi
    for VARIANT in "${REQUESTED[@]}"; do
        build_id=$(compute_build_id "$package" "$version")
        if [ "$FORCE" -eq 0 ] && is_up_to_date "$build_id"; then
            if [ ${#REQUESTED[@]} -eq 1 ]; then say "up to date"; else say "$VARIANT: up to date"; fi
            continue
        fi
        pending+=("$VARIANT=$build_id")
    done
    [ ${#pending[@]} -eq 0 ] || build "$package" "$version" "${pending[@]}"
}

main "$@"
