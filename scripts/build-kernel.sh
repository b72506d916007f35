#!/usr/bin/env bash
# Build vm-isolation's fast guest kernel from Debian's linux-source-6.1 package.
#
#   scripts/build-kernel.sh [--images-dir DIR] [--build-dir DIR] [--force]
#
#   --images-dir DIR   where vmlinux-fast goes (default /var/lib/vm-isolation/images)
#   --build-dir DIR    the unpacked source and the object tree, kept for quick rebuilds after
#                      a change of the fragment (default /var/cache/vm-isolation/fast-kernel;
#                      about 1.5 GiB)
#   --force            rebuild even if vmlinux-fast is up to date
#
# Output: DIR/vmlinux-fast, an uncompressed, stripped ELF booted directly through PVH (the
# bzImage would have to decompress itself under emulation). The configuration is `make
# tinyconfig` with kernel/fast-guest.config merged over it (scripts/kconfig/merge_config.sh,
# then `make olddefconfig`); the build fails if any symbol of the fragment did not end up as
# written (a dependency the fragment lacks). It boots with no initramfs: everything the
# guests need is built in (see the fragment's header), and the kernel mounts /dev/vda itself
# (root=/dev/vda rw rootfstype=ext4 init=/sbin/vmiso-init on the command line guest.py writes).
#
# A build id (the linux-source-6.1 version, the fragment, this script, the compiler's and the
# linker's versions) is recorded as the line "vmlinux-fast ID" in DIR/.build-id, beside the
# ids of scripts/build-image.sh's outputs; when it matches and the file exists the script says
# "up to date" and exits at once. The kernel is staged in the build directory and renamed into
# DIR under DIR/.lock (the lock build-image.sh holds), held only for that moment, so image
# builds are not blocked for the length of a kernel build; the build directory has a lock of
# its own. A failed or interrupted build leaves the installed kernel as it was.
#
# Needs (scripts/host-setup.sh installs them): linux-source-6.1, build-essential, bc, flex,
# bison, libelf-dev, libssl-dev, xz-utils. About 5 minutes on two quiet cores; 14 minutes measured
# on two cores under a load average of 5-8.
set -euo pipefail
umask 022

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
readonly FRAGMENT=$HERE/kernel/fast-guest.config
readonly SOURCE_PACKAGE=linux-source-6.1
readonly SOURCE_TARBALL=/usr/src/linux-source-6.1.tar.xz
readonly OUTPUT=vmlinux-fast
readonly DEFAULT_IMAGES_DIR=/var/lib/vm-isolation/images
readonly DEFAULT_BUILD_DIR=/var/cache/vm-isolation/fast-kernel
readonly PROGRESS_EVERY_MS=30000

IMAGES_DIR=$DEFAULT_IMAGES_DIR
BUILD_DIR=$DEFAULT_BUILD_DIR
FORCE=0

say() { printf 'build-kernel: %s\n' "$*" >&2; }
die() { printf 'build-kernel: ERROR: %s\n' "$*" >&2; exit 1; }
usage_error() { usage >&2; printf 'build-kernel: ERROR: %s\n' "$*" >&2; exit 2; }

now_ms() {
    local us=${EPOCHREALTIME//[!0-9]/}
    echo $((us / 1000))
}

seconds_since() {   # START_MS: "12.3"
    local ms=$(($(now_ms) - $1))
    echo "$((ms / 1000)).$(((ms % 1000) / 100))"
}

# timed DESCRIPTION COMMAND...: run a step between two progress lines.
timed() {
    local what=$1 start
    shift
    start=$(now_ms)
    say "$what ..."
    "$@"
    say "$what: done in $(seconds_since "$start") s"
}

# quietly COMMAND...: run a chatty tool; show its output only when it fails.
quietly() {
    local output
    if ! output=$("$@" 2>&1); then
        printf '%s\n' "$output" | tail -n 20 >&2
        die "failed: $*"
    fi
}

usage() {
    cat <<EOF
usage: scripts/build-kernel.sh [--images-dir DIR] [--build-dir DIR] [--force]

  --images-dir DIR   where $OUTPUT goes (default $DEFAULT_IMAGES_DIR)
  --build-dir DIR    source and object tree, kept for rebuilds (default $DEFAULT_BUILD_DIR)
  --force            rebuild even if $OUTPUT is up to date
EOF
}

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
            --images-dir) [ $# -ge 2 ] || usage_error "--images-dir needs a directory"; IMAGES_DIR=$2; shift ;;
            --images-dir=*) IMAGES_DIR=${1#*=} ;;
            --build-dir) [ $# -ge 2 ] || usage_error "--build-dir needs a directory"; BUILD_DIR=$2; shift ;;
            --build-dir=*) BUILD_DIR=${1#*=} ;;
            --force) FORCE=1 ;;
            -h | --help) usage; exit 0 ;;
            *) usage_error "unexpected argument: $1" ;;
        esac
        shift
    done
}

require_host() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (it installs into $IMAGES_DIR): sudo $0"
    local tool missing=()
    for tool in make gcc ld bc flex bison strip readelf tar xz sha256sum flock dpkg-query; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ -e /usr/include/libelf.h ] || missing+=(libelf-dev)
    [ -e /usr/include/openssl/opensslv.h ] || missing+=(libssl-dev)
    [ -f "$SOURCE_TARBALL" ] || missing+=("$SOURCE_PACKAGE")
    [ ${#missing[@]} -eq 0 ] || die "missing on this host: ${missing[*]} (run scripts/host-setup.sh)"
    [ -f "$FRAGMENT" ] || die "no kernel configuration fragment at $FRAGMENT"
}

source_version() {
    dpkg-query -W -f='${Version}' "$SOURCE_PACKAGE" 2>/dev/null \
        || die "$SOURCE_PACKAGE is not installed (run scripts/host-setup.sh)"
}

compute_build_id() {   # SOURCE_VERSION
    {
        printf '%s %s\n' "$SOURCE_PACKAGE" "$1"
        gcc --version | head -n 1
        ld --version | head -n 1
        (cd "$HERE" && sha256sum build-kernel.sh "kernel/${FRAGMENT##*/}")
    } | sha256sum | cut -d' ' -f1
}

is_up_to_date() {   # BUILD_ID
    local recorded
    recorded=$(awk -v o="$OUTPUT" '$1 == o {print $2}' "$IMAGES_DIR/.build-id" 2>/dev/null) || true
    [ "$recorded" = "$1" ] && [ -s "$IMAGES_DIR/$OUTPUT" ]
}

# --- the build -------------------------------------------------------------------------------

lock_build_dir() {
    install -d -m 0755 "$BUILD_DIR"
    exec {build_lock_fd}>"$BUILD_DIR/.lock"
    if ! flock -n "$build_lock_fd"; then
        say "waiting for another kernel build in $BUILD_DIR"
        flock "$build_lock_fd"
    fi
}

# Sets SOURCE_TREE to the unpacked source of VERSION (unpacked once; other versions removed).
unpack_source() {   # VERSION
    local name=src-${1//[^A-Za-z0-9.+~-]/_} old
    SOURCE_TREE=$BUILD_DIR/$name
    if [ ! -f "$SOURCE_TREE/.unpacked" ]; then
        for old in "$BUILD_DIR"/src-* "$BUILD_DIR"/obj-*; do
            [ -e "$old" ] && rm -rf "$old"
        done
        timed "unpacking $SOURCE_TARBALL" unpack_into "$SOURCE_TREE"
    fi
    OBJ_TREE=$BUILD_DIR/obj-${name#src-}
    mkdir -p "$OBJ_TREE"
}

unpack_into() {   # DIR
    local tmp=$1.partial
    rm -rf "$tmp"
    mkdir -p "$tmp"
    tar -xf "$SOURCE_TARBALL" -C "$tmp" --strip-components=1
    : >"$tmp/.unpacked"
    mv "$tmp" "$1"
}

kmake() {   # TARGET...
    make -C "$SOURCE_TREE" O="$OBJ_TREE" "$@"
}

configure() {
    quietly kmake tinyconfig
    quietly "$SOURCE_TREE/scripts/kconfig/merge_config.sh" -m -O "$OBJ_TREE" "$OBJ_TREE/.config" "$FRAGMENT"
    quietly kmake olddefconfig
    check_config
}

# Every symbol of the fragment must be in the final .config as written: kconfig silently drops
# a value whose dependencies are not met.
check_config() {
    local line symbol value wrong=()
    while IFS= read -r line; do
        case $line in
            CONFIG_*=*) ;;
            "# CONFIG_"*" is not set") line="${line#\# }"; line="${line% is not set}=n" ;;
            *) continue ;;
        esac
        symbol=${line%%=*} value=${line#*=}
        if [ "$value" = n ]; then
            grep -qx "$symbol=.*" "$OBJ_TREE/.config" && wrong+=("$symbol (wanted n)")
        else
            grep -qxF "$symbol=$value" "$OBJ_TREE/.config" \
                || wrong+=("$symbol (wanted $value, got $(grep -m 1 "^$symbol=\|^# $symbol " "$OBJ_TREE/.config" || echo unset))")
        fi
    done <"$FRAGMENT"
    [ ${#wrong[@]} -eq 0 ] || die "kernel/${FRAGMENT##*/}: not applied as written: ${wrong[*]}"
}

# make vmlinux, its output in OBJ_TREE/build.log; a progress line every PROGRESS_EVERY_MS
# (objects compiled so far, seconds elapsed).
compile() {
    local log=$OBJ_TREE/build.log start last line objects=0 status
    start=$(now_ms) last=$start
    say "compiling with make -j$(nproc) vmlinux (log: $log)"
    set +e
    kmake -j"$(nproc)" vmlinux 2>&1 | while IFS= read -r line; do
        printf '%s\n' "$line"
        case $line in *" CC "*) objects=$((objects + 1)) ;; esac
        if [ $(($(now_ms) - last)) -ge "$PROGRESS_EVERY_MS" ]; then
            last=$(now_ms)
            say "  ... $objects objects compiled, $(seconds_since "$start") s"
        fi
    done >"$log"
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ]; then
        tail -n 30 "$log" >&2
        die "make vmlinux failed (exit $status); the whole log is $log"
    fi
    say "compiled $(grep -c ' CC ' "$log" || true) objects in $(seconds_since "$start") s"
}

# Strips the ELF into BUILD_DIR/OUTPUT and checks it carries Xen's PVH entry note
# (XEN_ELFNOTE_PHYS32_ENTRY, 0x12), without which QEMU could not boot it directly.
stage_output() {
    STAGED=$BUILD_DIR/$OUTPUT
    local notes
    strip -o "$STAGED.partial" "$OBJ_TREE/vmlinux"
    notes=$(readelf --notes "$STAGED.partial")
    grep -Eq '^[[:space:]]+Xen[[:space:]]+0x[0-9a-f]+[[:space:]]+Unknown note type: \(0x00000012\)' <<<"$notes" \
        || die "the built kernel has no PVH entry note (CONFIG_PVH): it cannot be booted directly"
    chmod 0644 "$STAGED.partial"
    mv -f "$STAGED.partial" "$STAGED"
}

# --- installing --------------------------------------------------------------------------------

# record_build_id [BUILD_ID]: set (or, without an id, drop) our line in DIR/.build-id. Called
# with DIR/.lock held, as build-image.sh does for its own lines.
record_build_id() {
    local ids=$IMAGES_DIR/.build-id
    {
        [ ! -f "$ids" ] || awk -v o="$OUTPUT" '$1 != o' "$ids"
        [ $# -eq 0 ] || echo "$OUTPUT $1"
    } >"$ids.new"
    chmod 0644 "$ids.new"
    mv -f "$ids.new" "$ids"
}

install_output() {   # BUILD_ID
    install -d -m 0755 "$IMAGES_DIR"
    exec {images_lock_fd}>"$IMAGES_DIR/.lock"
    flock "$images_lock_fd"
    cp "$STAGED" "$IMAGES_DIR/.$OUTPUT.new"
    sync -- "$IMAGES_DIR/.$OUTPUT.new"
    record_build_id
    mv -f "$IMAGES_DIR/.$OUTPUT.new" "$IMAGES_DIR/$OUTPUT"
    record_build_id "$1"
    flock -u "$images_lock_fd"
}

main() {
    parse_args "$@"
    require_host
    local version build_id start
    version=$(source_version)
    build_id=$(compute_build_id "$version")
    if [ "$FORCE" -eq 0 ] && is_up_to_date "$build_id"; then
        say "up to date"
        return
    fi
    start=$(now_ms)
    lock_build_dir
    say "building $OUTPUT from $SOURCE_PACKAGE $version (about 5 min on 2 quiet cores, 14 measured under load)"
    unpack_source "$version"
    timed "configuring (tinyconfig + kernel/${FRAGMENT##*/})" configure
    compile
    stage_output
    install_output "$build_id"
    say "installed $IMAGES_DIR/$OUTPUT ($(($(stat -c %s "$IMAGES_DIR/$OUTPUT") / 1048576)) MiB) in $(seconds_since "$start") s"
}

main "$@"
