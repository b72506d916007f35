#!/usr/bin/env bash
# Prepare a Debian 12 host to run vm-isolation guests. Idempotent: a second run on a ready host
# takes about a second. Usable by operators as well as by `make demo` / `make test`.
#
#   scripts/host-setup.sh            packages, daemons, directories, /etc/vm-isolation/mesos.conf
#   scripts/host-setup.sh --executor-user NAME [--executor-user NAME ...]
#                                    also let these users run vm-isolation-executor (see below)
#
# Executor users. With the agent's default --switch_user, executors run as the framework's
# user. Such a user needs the libvirt socket, the overlay, key and console directories, and
# (where KVM is used) /dev/kvm. --executor-user records NAME in /etc/vm-isolation/executor-users
# (every later run applies the list again), adds NAME to the groups libvirt and kvm, lets the
# group libvirt use libvirtd's read-write socket without polkit (unix_sock_group = "libvirt",
# unix_sock_rw_perms = "0770", auth_unix_rw = "none" in /etc/libvirt/libvirtd.conf: members of
# that group can then manage every domain on the host, as on a stock Debian desktop), has qemu
# write the serial console files itself (stdio_handler = "file" in /etc/libvirt/qemu.conf), and
# makes the directories group libvirt, group-writable. Without any executor user, libvirtd and
# the directories are left root-only.
#
# The libvirt network tuning (STP off, dnsmasq no-ping) needs libvirt-python and is done by
# `python -m vm_isolation.hostsetup` afterwards (the Makefile runs both).
#
# Why each step is needed (measured on the development hosts; README, "Host network"):
#  * the Debian packages' postinst scripts start nothing when there is no systemd, so virtlogd
#    and libvirtd are started by hand here;
#  * libvirtd double-forks qemu and dnsmasq; when PID 1 is not an init system it reaps orphans
#    only every 1-2 s and every virDomainDestroy then takes 1.2-2.2 s instead of 0.2 s. Running
#    libvirtd under `tini -s` (a child subreaper) fixes that.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
CONF=${VM_ISOLATION_CONF:-/etc/vm-isolation/mesos.conf}
VIRSH=(virsh -c qemu:///system)

# qemu-system-x86 / qemu-utils .... the hypervisor and qemu-img (overlays)
# libvirt-daemon-system ........... libvirtd 9.0 (+ its `default` network definition)
# libvirt-dev pkg-config gcc ...... libvirt-python builds from source against them
# python3-venv python3-dev ........ the project's virtualenv on Debian's python3
# dnsmasq-base dnsmasq-utils ...... DHCP for the guests; dhcp_release frees a destroyed guest's lease
# busybox-static dropbear-bin openssh-sftp-server cpio kmod e2fsprogs xz-utils
#                                   .. the test guest image (scripts/build-image.sh)
# linux-source-6.1 build-essential bc flex bison libelf-dev libssl-dev
#                                   .. the fast guest kernel (scripts/build-kernel.sh)
# debootstrap syslinux syslinux-common mtools dosfstools fdisk
#                                   .. the debian-cloud image (scripts/build-cloud-image.sh)
# xorriso ......................... the cloud-init guests' NoCloud seeds (vm_isolation/seedimage.py)
# tini ............................ child subreaper for libvirtd (see above)
# acl ............................. setfacl: the tests let their framework user reach the checkout
# zookeeper ....................... the server for vm-isolation-scheduler's ZooKeeper store tests
PACKAGES=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev
  pkg-config gcc python3-venv python3-dev dnsmasq-base dnsmasq-utils busybox-static dropbear-bin
  openssh-sftp-server openssh-client iptables nftables iproute2 kmod cpio gzip xz-utils e2fsprogs
  linux-source-6.1 build-essential bc flex bison libelf-dev libssl-dev tini acl make zookeeper
  debootstrap syslinux syslinux-common mtools dosfstools fdisk xorriso)

say() { printf 'host-setup: %s\n' "$*" >&2; }
die() { printf 'host-setup: ERROR: %s\n' "$*" >&2; exit 1; }

require_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts libvirtd): sudo $0"
}

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then say "packages: all present"; return; fi
  say "packages: installing ${missing[*]} (about a minute on a fresh machine)"
  apt-get update -q >&2 || die "apt-get update failed: is a Debian mirror reachable?"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
    || die "apt-get install failed for: ${missing[*]}"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_daemons() {
  if [ -d /run/systemd/system ]; then
    say "daemons: systemd present, starting virtlogd and libvirtd through it"
    systemctl start virtlogd libvirtd || die "systemctl start libvirtd failed: see journalctl -u libvirtd"
  else
    mkdir -p /run/libvirt /var/log/libvirt
    pid_alive /run/virtlogd.pid || { say "daemons: starting virtlogd"; virtlogd -d; }
    if ! pid_alive /run/libvirtd.pid; then
      say "daemons: starting libvirtd under tini -s (PID 1 is not an init system)"
      setsid nohup tini -s -- /usr/sbin/libvirtd >>/var/log/libvirt/libvirtd-foreground.log 2>&1 </dev/null &
    fi
  fi
  local i
  for i in $(seq 1 600); do
    "${VIRSH[@]}" version >/dev/null 2>&1 && { say "daemons: libvirtd answers"; return; }
    sleep 0.1
  done
  die "libvirtd did not answer within 60 s: see /var/log/libvirt/libvirtd-foreground.log"
}

kvm_device_permissions() {
  # Debian's udev rule gives /dev/kvm to group kvm, mode 0660. Without udev running (no
  # systemd) the node can stay root:root 0600; libvirt then finds KVM "not usable" for the
  # libvirt-qemu user, disagrees with its cached QEMU capabilities, and re-probes QEMU on every
  # domain define: measured 9.8 s per define instead of 0.09 s.
  [ -e /dev/kvm ] || return 0
  if [ "$(stat -c '%G %a' /dev/kvm)" != "kvm 660" ] && getent group kvm >/dev/null; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
    say "devices: /dev/kvm set to root:kvm 0660 (what Debian's udev rule does)"
  fi
}

write_config() {
  if [ -f "$CONF" ]; then say "config: $CONF exists, left as it is"; return; fi
  install -d -m 0755 "$(dirname "$CONF")"
  install -m 0644 "$REPO/conf/mesos.conf.example" "$CONF"
  say "config: wrote $CONF from conf/mesos.conf.example"
}

make_directories() {
  # Images and overlays must be traversable by the libvirt-qemu user; keys only by root (and,
  # with executor users, by the group libvirt: each guest's key directory is 0700 its creator's).
  install -d -m 0755 /var/lib/vm-isolation /var/lib/vm-isolation/images
  install -d -m 0755 /run/vm-isolation
  # Owner files (vm_isolation/ownership.py): every executor, whatever its user, creates one.
  install -d -m 1777 /run/vm-isolation/owners
  if [ ${#EXECUTOR_USERS[@]} -eq 0 ]; then
    install -d -m 0755 /var/lib/vm-isolation/overlays
    install -d -m 0700 /run/vm-isolation/keys
    install -d -m 0750 /var/log/vm-isolation
  else
    install -d -g libvirt -m 2775 /var/lib/vm-isolation/overlays
    install -d -g libvirt -m 2770 /run/vm-isolation/keys
    # qemu (user libvirt-qemu) opens the console files in it by name: it may traverse, not list.
    install -d -g libvirt -m 2771 /var/log/vm-isolation
  fi
}

EXECUTOR_USERS_FILE=/etc/vm-isolation/executor-users
EXECUTOR_USERS=()

read_executor_users() {
  local name
  if [ -f "$EXECUTOR_USERS_FILE" ]; then
    while read -r name; do [ -n "$name" ] && EXECUTOR_USERS+=("$name"); done < "$EXECUTOR_USERS_FILE"
  fi
  for name in "${NEW_EXECUTOR_USERS[@]}"; do
    [[ "$name" =~ ^[a-z_][a-z0-9_-]*[$]?$ ]] || die "--executor-user $name: not a valid user name"
    getent passwd "$name" >/dev/null || die "--executor-user $name: no such user (create it first)"
    if ! printf '%s\n' "${EXECUTOR_USERS[@]}" | grep -qx -- "$name"; then
      EXECUTOR_USERS+=("$name")
      install -d -m 0755 "$(dirname "$EXECUTOR_USERS_FILE")"
      printf '%s\n' "$name" >> "$EXECUTOR_USERS_FILE"
      say "executor users: recorded $name in $EXECUTOR_USERS_FILE"
    fi
  done
}

set_libvirt_option() {  # file key value: uncomment or append `key = value`; 0 if it changed
  local file=$1 key=$2 value=$3
  grep -qx "$key = $value" "$file" && return 1
  if grep -qE "^#?$key = " "$file"; then
    sed -i -E "0,/^#?$key = .*/s||$key = $value|" "$file"
  else
    printf '%s = %s\n' "$key" "$value" >> "$file"
  fi
  return 0
}

allow_executor_users() {
  [ ${#EXECUTOR_USERS[@]} -gt 0 ] || return 0
  local changed=0 name
  set_libvirt_option /etc/libvirt/libvirtd.conf unix_sock_group '"libvirt"' && changed=1
  set_libvirt_option /etc/libvirt/libvirtd.conf unix_sock_rw_perms '"0770"' && changed=1
  set_libvirt_option /etc/libvirt/libvirtd.conf auth_unix_rw '"none"' && changed=1
  # The serial console file is then written by qemu itself, into the file vm-isolation created
  # readable by all (virtlogd would write it as root, 0600: unreadable for the executor, which
  # reads the guest's host key from it). Nothing rotates it: the sandbox is the task's.
  set_libvirt_option /etc/libvirt/qemu.conf stdio_handler '"file"' && changed=1
  if [ $changed -eq 1 ]; then
    say "executor users: libvirtd's socket usable by the group libvirt, consoles written by qemu; restarting libvirtd (guests keep running)"
    restart_libvirtd
  fi
  for name in "${EXECUTOR_USERS[@]}"; do
    id -nG "$name" | tr ' ' '\n' | grep -qx libvirt || { usermod -aG libvirt "$name"; say "executor users: $name added to group libvirt"; }
    if getent group kvm >/dev/null && ! id -nG "$name" | tr ' ' '\n' | grep -qx kvm; then
      usermod -aG kvm "$name"; say "executor users: $name added to group kvm"
    fi
  done
  say "executor users: ${EXECUTOR_USERS[*]}"
}

restart_libvirtd() {
  if [ -d /run/systemd/system ]; then
    systemctl restart libvirtd || die "systemctl restart libvirtd failed"
  elif pid_alive /run/libvirtd.pid; then
    local pid; pid=$(cat /run/libvirtd.pid)
    kill "$pid"
    local i
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  start_daemons
}

NEW_EXECUTOR_USERS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --executor-user) [ $# -ge 2 ] || die "--executor-user needs a user name"; NEW_EXECUTOR_USERS+=("$2"); shift 2 ;;
    --executor-user=*) NEW_EXECUTOR_USERS+=("${1#*=}"); shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

require_root
install_packages
kvm_device_permissions
start_daemons
read_executor_users
allow_executor_users
make_directories
write_config
