"""The guests' address guard: the root service (``vm-isolation-guard``) that keeps the guard
table's ``leases`` set (:func:`hostfirewall.guard_ruleset`) equal to the DHCP leases libvirt's
dnsmasq has handed out, and forgets the port bindings of taps that are gone.

A guest may send IPv4 and ARP only from the address its lease gave its MAC, and its tap is bound
to that MAC in the data path (the table does that itself); this service is what tells the table
which address each MAC holds. It reads the lease helper's status files (``<bridge>.status``),
which libvirt rewrites on every lease event: polled every ``interval_s`` (a stat of a few
files), so a new lease is let through within a few tens of milliseconds, before the executor
has connected. It talks to neither libvirt nor any guest: a libvirtd restart does not touch it.

Without it running, a guest gets its lease and nothing more (fail closed); executors refuse to
boot when it is not running (:func:`guard_running`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol

from .errors import VmIsolationError
from .ownership import Liveness, liveness

log = logging.getLogger(__name__)

GUARD_LOCK = Path("/run/vm-isolation/guard.lock")
DEFAULT_INTERVAL_S = 0.02
DEFAULT_FULL_EVERY_S = 2.0
Pair = tuple[str, str]


def guard_running(lock: Path = GUARD_LOCK) -> bool:
    """Whether a guard holds its lock (an executor that is not root can tell too)."""
    return liveness(lock) is Liveness.ALIVE


class GuardTable(Protocol):
    """The guard's nftables sets (hostfirewall), as this service needs them."""

    def leases(self) -> set[Pair]: ...
    def update(self, add: set[Pair], remove: set[Pair]) -> None: ...
    def taps(self) -> set[str]: ...
    def forget(self, taps: set[str]) -> None: ...


@dataclass
class AddressGuard:
    table: GuardTable
    read_leases: Callable[[], Optional[set[Pair]]]
    """Every (mac, ip) the lease files hold; None when they could not be read this time."""
    files_state: Callable[[], object]
    """Changes whenever a lease file does (polled)."""
    present_taps: Callable[[], set[str]]
    """The network devices that exist now."""
    monotonic: Callable[[], float] = time.monotonic
    _bound: Optional[set[Pair]] = field(default=None, init=False)
    _last_state: object = field(default=None, init=False)
    _last_error: str = field(default="", init=False)

    def tick(self, full: bool) -> None:
        """One pass: re-sync the leases if the files changed (or ``full``); with ``full`` also
        re-read the table (someone may have flushed it) and forget the taps that are gone."""
        state = self.files_state()
        try:
            if full or self._bound is None:
                self._bound = self.table.leases()
                self._forget_gone_taps()
            if full or state != self._last_state:
                self._sync()
                self._last_state = state
            self._last_error = ""
        except VmIsolationError as exc:
            self._bound = None  # re-read the table next time
            if str(exc) != self._last_error:  # a lasting error is logged once
                log.error("address guard: %s", exc)
                self._last_error = str(exc)

    def _sync(self) -> None:
        wanted = self.read_leases()
        if wanted is None or self._bound is None:
            return
        add, remove = wanted - self._bound, self._bound - wanted
        if add or remove:
            self.table.update(add, remove)
            self._bound = set(wanted)
            for mac, ip in sorted(add):
                log.info("let through: %s from %s", ip, mac)
            for mac, ip in sorted(remove):
                log.info("stopped: %s from %s (lease gone)", ip, mac)

    def _forget_gone_taps(self) -> None:
        gone = self.table.taps() - self.present_taps()
        if gone:
            self.table.forget(gone)
            log.info("forgot the port bindings of %s (taps gone)", ", ".join(sorted(gone)))

    def run(self, stop: threading.Event, *, interval_s: float = DEFAULT_INTERVAL_S,
            full_every_s: float = DEFAULT_FULL_EVERY_S) -> None:
        """Guard until ``stop`` is set."""
        next_full = self.monotonic()
        while not stop.is_set():
            now = self.monotonic()
            full = now >= next_full
            if full:
                next_full = now + full_every_s
            self.tick(full)
            stop.wait(interval_s)
