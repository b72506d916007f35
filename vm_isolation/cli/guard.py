"""vm-isolation-guard: the guests' address guard (see vm_isolation/addressguard.py).

    vm-isolation-guard            run it (as root; host set-up starts it, or its unit file)
    vm-isolation-guard --status   what the guard table lets through now, and whether it runs

It installs the guard table (``table bridge vmiso_guard``) itself at start, then keeps its
``leases`` set equal to libvirt's DHCP leases until SIGTERM. One per host (a lock in /run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

from .. import hostfirewall
from ..addressguard import DEFAULT_FULL_EVERY_S, DEFAULT_INTERVAL_S, GUARD_LOCK, AddressGuard, guard_running
from ..errors import VmIsolationError
from ..hostnet import interface_names
from ..leases import STATUS_DIR, status_file_addresses, status_files_state
from ..reaperwatch import WatchLock, watcher_record_at
from .common import configure_logging, service_record, stop_on_signals

log = logging.getLogger("vm-isolation-guard")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="vm-isolation-guard", description=__doc__.split("\n\n")[0])
    p.add_argument("--status", action="store_true", help="print what is let through and exit")
    p.add_argument("--lease-dir", type=Path, default=STATUS_DIR, help=f"lease status files (default {STATUS_DIR})")
    p.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, help="poll interval, s")
    args = p.parse_args(argv)
    configure_logging("vm-isolation-guard")
    if args.status:
        return _status()
    if os.geteuid() != 0:
        log.error("vm-isolation-guard changes nftables sets: run it as root (host set-up starts it)")
        return 2
    try:
        lock = WatchLock(GUARD_LOCK, service_record(), what="vm-isolation-guard")
        hostfirewall.install_guard()
    except VmIsolationError as exc:
        log.error("%s", exc)
        return 1
    stop = stop_on_signals()
    guard = AddressGuard(hostfirewall.NftGuardTable(), lambda: status_file_addresses(args.lease_dir),
                         lambda: status_files_state(args.lease_dir), interface_names)
    log.info("guarding: leases from %s every %.0f ms", args.lease_dir, args.interval * 1000)
    try:
        guard.run(stop, interval_s=args.interval, full_every_s=DEFAULT_FULL_EVERY_S)
    finally:
        lock.close()
    log.info("stopped")
    return 0


def _status() -> int:
    running = guard_running()
    print(json.dumps({"running": running, "record": watcher_record_at(GUARD_LOCK) if running else {},
                      "leases": sorted(map(list, hostfirewall.guard_leases())) if os.geteuid() == 0 else "needs root",
                      "ports": hostfirewall.guard_ports() if os.geteuid() == 0 else "needs root"}, indent=2))
    return 0 if running else 1


if __name__ == "__main__":
    sys.exit(main())
