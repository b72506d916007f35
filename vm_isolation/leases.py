"""DHCP leases: the only reader of lease data, and the one place a lease is released.

A guest's address is its lease in the libvirt network's dnsmasq, looked up by MAC through
``virNetworkGetDHCPLeases``; the lease-helper status file (``<bridge>.status``, the JSON that
libvirt_leaseshelper writes and the API itself reads) is the fallback when the API cannot
answer. Looking up by hostname is not safe: dnsmasq blanks the hostname of an older lease when
a newer one claims it.

NOTE: a destroyed guest's lease stays for the whole lease time (1 h) and survives a network
restart, so a lease that existed before the guest started is never taken as its address
(``stale``), and teardown releases the lease with dnsmasq's ``dhcp_release``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import subprocess
from pathlib import Path
from typing import Callable, Iterable, Optional

from .errors import VmIsolationError
from .hosttypes import Lease as Lease
from .hosttypes import LeaseSource, RawLease
from .waiting import Deadline, poll_until

log = logging.getLogger(__name__)

STATUS_DIR = Path("/var/lib/libvirt/dnsmasq")
POLL_INTERVAL_S = 0.1
SOURCE_API = "libvirt-api"
SOURCE_STATUS_FILE = "status-file"


class Leases:
    def __init__(self, source: LeaseSource, *, status_dir: Path = STATUS_DIR,
                 release_command: str = "dhcp_release") -> None:
        self._source = source
        self._status_dir = status_dir
        self._release_command = release_command

    def all_for(self, network: str, mac: str) -> list[Lease]:
        """Every lease of ``mac``, newest expiry first; API first, status file as fallback."""
        mac = mac.lower()
        try:
            found = [_from_raw(r, SOURCE_API) for r in self._source.dhcp_leases(network, mac)]
        except VmIsolationError as exc:
            log.debug("lease API failed (%s); reading the status file", exc)
            found = []
        if not found:
            found = [lease for lease in self._from_status_file(network) if lease.mac == mac]
        return sorted(found, key=lambda lease: lease.expiry_time, reverse=True)

    def current(self, network: str, mac: str, *, stale: Iterable[tuple[str, float]] = ()) -> Optional[Lease]:
        """The newest lease of ``mac`` that is not one of ``stale`` (keys seen before boot)."""
        old = set(stale)
        for lease in self.all_for(network, mac):
            if lease.key not in old:
                return lease
        return None

    def wait_for_address(
        self,
        network: str,
        mac: str,
        deadline: Deadline,
        *,
        stale: Iterable[tuple[str, float]] = (),
        check: Callable[[], None] = lambda: None,
    ) -> Lease:
        """Poll (every 0.1 s) until ``mac`` holds a fresh lease.

        ``check`` runs on every poll and may raise to abort (the guest died, the task was
        killed). Raises :class:`vm_isolation.waiting.WaitTimeout` at the deadline.
        """
        old = frozenset(stale)

        def probe() -> Optional[Lease]:
            check()
            return self.current(network, mac, stale=old)

        return poll_until(probe, deadline, interval_s=POLL_INTERVAL_S, what=f"a DHCP lease for {mac}")

    def release(self, network: str, lease: Lease) -> None:
        """Tell dnsmasq the lease is free (dnsmasq-utils ``dhcp_release``); best effort."""
        bridge = self._source.network(network).bridge
        argv = [self._release_command, bridge, lease.ip, lease.mac]
        if lease.client_id:
            argv.append(lease.client_id)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("could not release lease %s of %s: %s (install dnsmasq-utils)",
                        lease.ip, lease.mac, exc)
            return
        if proc.returncode != 0:
            log.warning("dhcp_release %s %s failed: %s", lease.ip, lease.mac, proc.stderr.strip())

    def _from_status_file(self, network: str) -> list[Lease]:
        try:
            bridge = self._source.network(network).bridge
            text = (self._status_dir / f"{bridge}.status").read_text(encoding="utf-8").strip()
            entries = json.loads(text) if text else []
        except (VmIsolationError, OSError, ValueError) as exc:
            log.debug("lease status file unreadable: %s", exc)
            return []
        return [
            Lease(
                mac=str(e.get("mac-address", "")).lower(),
                ip=str(e.get("ip-address", "")),
                hostname=str(e.get("hostname") or ""),
                expiry_time=float(e.get("expiry-time") or 0),
                client_id=str(e.get("client-id") or ""),
                source=SOURCE_STATUS_FILE,
            )
            for e in entries
            if isinstance(e, dict) and ":" not in str(e.get("ip-address", ":"))  # IPv4 only
        ]


def _from_raw(raw: RawLease, source: str) -> Lease:
    return Lease(mac=raw.mac, ip=raw.ip, hostname=raw.hostname, expiry_time=raw.expiry_time,
                 client_id=raw.client_id, source=source)


def status_files_state(status_dir: Path = STATUS_DIR) -> tuple[tuple[str, int, int, int], ...]:
    """What changes whenever libvirt's lease helper rewrites a status file: name, inode, size and
    mtime of every ``*.status`` in ``status_dir`` (a cheap test, for polling)."""
    state = []
    try:
        paths = sorted(status_dir.glob("*.status"))
    except OSError:
        return ()
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        state.append((path.name, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(state)


def status_file_addresses(status_dir: Path = STATUS_DIR) -> Optional[set[tuple[str, str]]]:
    """Every ``(mac, ipv4)`` pair of every network's status file; None if one could not be read
    or parsed (the caller keeps what it had rather than cutting guests off on a torn read)."""
    pairs: set[tuple[str, str]] = set()
    try:
        paths = sorted(status_dir.glob("*.status"))
    except OSError:
        return None
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8").strip()
            entries = json.loads(text) if text else []
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            log.warning("lease status file %s unreadable: %s", path, exc)
            return None
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            mac, ip = str(entry.get("mac-address", "")).lower(), str(entry.get("ip-address", ""))
            if _MAC.fullmatch(mac) and _is_ipv4(ip):
                pairs.add((mac, ip))
    return pairs


_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True
