"""Address discovery latency: the lease appearing in the lease-helper status file -> wait_for_address returns.

A guest is booted through the library with its :class:`Leases` wrapped: when the boot starts
waiting for the address of its (fresh, random) MAC, a watcher thread polls the status file
(``<bridge>.status``) every few milliseconds until the MAC is in it and records the file's
mtime, which is when libvirt_leaseshelper wrote the lease. The latency is the wall-clock time
from that mtime to ``wait_for_address`` returning.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from vm_isolation.leases import STATUS_DIR, Lease, Leases
from vm_isolation.waiting import Deadline, WaitTimeout, poll_until
from vm_isolation.wiring import real_launcher

from .common import BenchContext, Section, guest_request, repetitions

WATCH_INTERVAL_S = 0.002


class WatchedLeases(Leases):
    """Leases that also record when the lease showed up in the status file and when we saw it."""

    def __init__(self, source: Any, status_file: Path) -> None:
        super().__init__(source)
        self.status_file = status_file
        self.lease_written_at: Optional[float] = None
        self.returned_at: Optional[float] = None
        self.api_source: Optional[str] = None

    def wait_for_address(self, network: str, mac: str, deadline: Deadline, *,
                         stale: Iterable[tuple[str, float]] = (),
                         check: Callable[[], None] = lambda: None) -> Lease:
        watcher = threading.Thread(target=self._watch, args=(mac.lower(), deadline), daemon=True)
        watcher.start()
        lease = super().wait_for_address(network, mac, deadline, stale=stale, check=check)
        self.returned_at = time.time()
        self.api_source = lease.source
        watcher.join(max(1.0, deadline.remaining()))
        return lease

    def _watch(self, mac: str, deadline: Deadline) -> None:
        def written() -> Optional[float]:
            try:
                mtime = self.status_file.stat().st_mtime_ns / 1e9
                entries = json.loads(self.status_file.read_text() or "[]")
            except (OSError, ValueError):
                return None
            found = any(str(e.get("mac-address", "")).lower() == mac for e in entries if isinstance(e, dict))
            return mtime if found else None

        try:
            self.lease_written_at = poll_until(written, deadline, interval_s=WATCH_INTERVAL_S, what="lease in file")
        except WaitTimeout:
            self.lease_written_at = None


def run(ctx: BenchContext) -> Section:
    section = Section("discovery")
    bridge = ctx.hypervisor.network(ctx.settings.libvirt.network).bridge
    status_file = STATUS_DIR / f"{bridge}.status"
    section.extra["status_file"] = str(status_file)
    for _ in repetitions(section, ctx.reps):
        try:
            _one(ctx, section, status_file)
        except Exception as exc:  # noqa: BLE001 - counted, never fatal
            section.fail(f"boot failed: {exc}")
    return section


def _one(ctx: BenchContext, section: Section, status_file: Path) -> None:
    launcher = real_launcher(ctx.settings, ctx.hypervisor)
    leases = WatchedLeases(ctx.hypervisor, status_file)
    launcher.leases = leases
    request = guest_request(ctx, "bench-addr")
    with launcher.boot(request):
        pass
    if leases.lease_written_at is None or leases.returned_at is None:
        section.fail("the lease never showed up in the status file")
        return
    section.add("lease_to_address", leases.returned_at - leases.lease_written_at)
    section.extra.setdefault("found_through", []).append(leases.api_source)
