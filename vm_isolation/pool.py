"""The warm pool: guests of configured shapes booted ahead of time, each handed to one executor.

:class:`WarmPool` owns the pool guests' lives. Each guest is a *slot* that moves through
:class:`SlotState` (BOOTING -> IDLE -> HANDING -> gone). It is booted with the pool's own
owner (its owner file, journal and libvirt owner metadata, so ``vm-isolation-reap`` removes it
if the pool dies) by :meth:`GuestFactory.hold`, and then either torn down by the pool or,
after a hand-over, *disowned*: forgotten without being removed, because it is someone else's.

**Who owns a guest is decided by one thing: the domain's owner metadata.** The executor
journals every resource, then switches the metadata to itself (:meth:`GuestFactory.adopt`),
then says ``taken``. Whatever the executor said, or if it vanished, :meth:`WarmPool.settle`
reads the metadata: still the pool's -> the pool destroys the guest (it was offered, so it is
never offered again); anyone else's -> the pool forgets it. So at every instant exactly one
owner (the pool, or the executor, or the reaper on behalf of the dead one) would tear the guest
down:

* the pool dies mid-hand-over, before the switch: the metadata names a dead owner and the
  reaper removes the guest; the executor's switch fails (the domain is gone) and it boots cold;
* the executor dies after journaling but before the switch: the pool's settle destroys it;
* the executor dies after the switch: the metadata names a dead owner; the reaper removes it,
  and the pool has forgotten it;
* two executors ask for the last guest: :meth:`take` hands a slot out under a lock, once.

A guest is used once: it is never returned. Refills run in the background, at most
``[pool] max_concurrent_boots`` at a time, so they do not starve running tasks of CPU.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from .config import Settings
from .console import host_key_from_console
from .domainxml import Owner
from .errors import VmIsolationError
from .guest import Cancelled, GuestRequest, HeldGuest, ProgressFn
from .ids import DomainName, domain_name_for
from .journal import ResourceJournal
from .ownership import Liveness, liveness
from .poolwire import POOL_TASK_HINT, Offer, Shape
from .waiting import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

RETRY_AFTER_FAILURE_S = 30.0
"""How long a shape whose boot failed waits before the next attempt (a broken image must not
make the pool boot in a loop)."""
TICK_S = 5.0


class SlotState(enum.StrEnum):
    BOOTING = "booting"
    IDLE = "idle"
    HANDING = "handing"
    """Offered to one executor; settled by :meth:`WarmPool.settle`."""


class Holder(Protocol):
    """What the pool needs to boot (GuestFactory has it)."""

    def hold(self, request: GuestRequest, *, cancel: Optional[threading.Event] = None,
             progress: ProgressFn = ...) -> HeldGuest: ...


class OwnerTable(Protocol):
    """What the pool needs to know of a domain (LibvirtHypervisor has it)."""

    def state(self, name: str) -> Optional[str]: ...
    def owner_of(self, name: str) -> Optional[Owner]: ...


KeyHand = Callable[[Path, int, int], None]
"""Gives a guest's key directory (and key) to uid, gid."""


def pool_lock_path(settings: Settings) -> Path:
    """Held (flock) by the running pool, beside its socket; records its pid."""
    return settings.pool.socket.parent / "pool.lock"


def pool_status_path(settings: Settings) -> Path:
    return settings.pool.socket.parent / "pool-status.json"


def pool_running(settings: Settings) -> bool:
    return liveness(pool_lock_path(settings)) is Liveness.ALIVE


def chown_key_dir(directory: Path, uid: int, gid: int) -> None:
    """Give the key directory and its key to the executor that took the guest (its uid from
    SO_PEERCRED): it then loads the key and removes the directory at teardown exactly as for
    a guest it booted, and the private key never crosses the socket. No-op for root."""
    if uid == os.geteuid():
        return
    for entry in os.scandir(directory):  # the key (and nothing else the pool would put there)
        os.chown(entry.path, uid, gid, follow_symlinks=False)
    os.chown(directory, uid, gid, follow_symlinks=False)


@dataclass
class Slot:
    shape: Shape
    name: DomainName
    state: SlotState = SlotState.BOOTING
    cancel: threading.Event = field(default_factory=threading.Event)
    held: Optional[HeldGuest] = None
    host_key: str = ""
    ready_at: float = 0.0


class WarmPool:
    """The pool's guests; thread-safe. :meth:`run_refills` on one thread, the rest from any."""

    def __init__(self, settings: Settings, launcher: Holder, hypervisor: OwnerTable, *, owner: Owner,
                 journal: ResourceJournal, hand_key: KeyHand = chown_key_dir, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.wanted = settings.pool.wanted(settings.images.default, settings.vm.default_memory_mib)
        self._launcher = launcher
        self._hv = hypervisor
        self.owner = owner
        self._journal = journal
        self._hand_key = hand_key
        self._clock = clock
        self._lock = threading.Condition()
        self._slots: dict[DomainName, Slot] = {}
        self._boots: list[threading.Thread] = []
        self._failed_at: dict[Shape, float] = {}
        self.stopping = threading.Event()
        self.handed = 0
        self.destroyed = 0

    # --- refills -----------------------------------------------------------------------------
    def due(self) -> list[Slot]:
        """The boots to start now (each slot already BOOTING); the bounds are applied here."""
        now = self._clock.monotonic()
        with self._lock:
            if self.stopping.is_set():
                return []
            booting = sum(1 for s in self._slots.values() if s.state is SlotState.BOOTING)
            room = self.settings.pool.max_concurrent_boots - booting
            started = []
            for shape, count in sorted(self.wanted.items()):
                failed = self._failed_at.get(shape)
                if failed is not None and now - failed < RETRY_AFTER_FAILURE_S:
                    continue
                have = sum(1 for s in self._slots.values()
                           if s.shape == shape and s.state is not SlotState.HANDING)
                while have < count and room > 0:
                    slot = Slot(shape, domain_name_for(POOL_TASK_HINT))
                    self._slots[slot.name] = slot
                    started.append(slot)
                    have += 1
                    room -= 1
            return started

    def run_refills(self) -> None:
        """Keep the pool full until :meth:`stop`; each boot runs on its own thread."""
        while not self.stopping.is_set():
            for slot in self.due():
                thread = threading.Thread(target=self.boot, args=(slot,), name=f"boot-{slot.name}", daemon=True)
                self._boots = [t for t in self._boots if t.is_alive()] + [thread]
                thread.start()
            with self._lock:
                self._lock.wait(TICK_S)

    def boot(self, slot: Slot) -> None:
        """Boot one slot's guest (on its own thread); a failure frees the slot."""
        request = GuestRequest(name=slot.name, base_image=self.settings.images.base(slot.shape.image),
                               vcpus=slot.shape.vcpus, memory_mib=slot.shape.memory_mib,
                               owner=self.owner, journal=self._journal, image=slot.shape.image,
                               kernel=self.settings.images.kernel_for(slot.shape.image))
        try:
            held = self._launcher.hold(request, cancel=slot.cancel)
        except Cancelled:
            self._forget(slot)
            return
        except (VmIsolationError, OSError) as exc:
            log.error("pool: boot of a %s guest failed (next try in %.0f s): %s", slot.shape,
                      RETRY_AFTER_FAILURE_S, exc)
            with self._lock:
                self._failed_at[slot.shape] = self._clock.monotonic()
            self._forget(slot)
            return
        held.guest.remote.close()  # the pool runs nothing in its guests; the executor connects itself
        host_key = host_key_from_console(held.guest.console_log) or ""
        with self._lock:
            slot.held, slot.host_key, slot.ready_at = held, host_key, self._clock.monotonic()
            keep = not self.stopping.is_set() and bool(host_key)
            if keep:
                slot.state = SlotState.IDLE
                self._failed_at.pop(slot.shape, None)
        if not keep:
            if not host_key:
                log.error("pool: %s announced no host key on its console; destroying it", slot.name)
            held.release()
            self._forget(slot)
            return
        log.info("pool: %s (%s) is idle, booted in %.2f s", slot.name, slot.shape, sum(held.guest.timings.values()))

    # --- hand-over -----------------------------------------------------------------------------
    def take(self, shape: Shape, uid: int, gid: int) -> Optional[tuple[Slot, Offer]]:
        """An idle guest of ``shape`` offered to the peer ``uid``/``gid`` (its key directory is
        now theirs), or None. A slot is handed out once; the caller must :meth:`settle` it."""
        while True:
            with self._lock:
                if self.stopping.is_set():
                    return None
                slot = next((s for s in self._slots.values() if s.shape == shape and s.state is SlotState.IDLE), None)
                if slot is None:
                    return None
                slot.state = SlotState.HANDING
                self._lock.notify_all()  # a refill can start now
            offer = self._offer(slot, uid, gid)
            if offer is not None:
                return slot, offer
            self._destroy(slot)  # dead or unusable: never offered; try the next one

    def _offer(self, slot: Slot, uid: int, gid: int) -> Optional[Offer]:
        assert slot.held is not None
        guest = slot.held.guest
        try:
            if self._hv.state(slot.name) != "running":
                log.warning("pool: %s is no longer running; destroying it", slot.name)
                return None
            self._hand_key(self.settings.vm.key_dir / slot.name, uid, gid)
        except (VmIsolationError, OSError) as exc:
            log.error("pool: cannot hand %s over: %s", slot.name, exc)
            return None
        return Offer(slot.name, guest.mac, guest.ip, guest.lease.expiry_time, guest.lease.client_id, slot.host_key)

    def settle(self, slot: Slot) -> str:
        """After an offer, however it ended: the metadata says whose the guest is. Returns
        "handed" (forgotten: someone else's now) or "destroyed"."""
        try:
            owner = self._hv.owner_of(slot.name)
        except VmIsolationError as exc:
            log.error("pool: cannot read the owner of %s (%s): destroying it", slot.name, exc)
            owner = self.owner
        if owner is not None and owner.owner_file != self.owner.owner_file:
            assert slot.held is not None
            slot.held.disown()
            with self._lock:
                self.handed += 1
            self._forget(slot)
            log.info("pool: %s handed over to %s (pid %s)", slot.name, owner.executor_id or "?", owner.executor_pid)
            return "handed"
        self._destroy(slot)
        return "destroyed"

    # --- ending -----------------------------------------------------------------------------
    def stop(self, wait_s: float = 60.0) -> None:
        """Stop refilling, cancel boots, destroy every guest the pool still owns (a guest being
        handed over is settled by its connection's thread first, within ``wait_s``)."""
        self.stopping.set()
        with self._lock:
            for slot in self._slots.values():
                slot.cancel.set()
            self._lock.notify_all()
        for thread in list(self._boots):
            thread.join(wait_s)
        deadline = self._clock.monotonic() + wait_s
        with self._lock:
            while any(s.state is SlotState.HANDING for s in self._slots.values()) \
                    and self._clock.monotonic() < deadline:
                self._lock.wait(0.5)
            idle = [s for s in self._slots.values() if s.state is not SlotState.HANDING]
        for slot in idle:
            self._destroy(slot)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"wanted": {str(k): v for k, v in sorted(self.wanted.items())},
                    "guests": [{"name": s.name, "shape": str(s.shape), "state": s.state.value}
                               for s in sorted(self._slots.values(), key=lambda s: s.name)],
                    "handed": self.handed, "destroyed": self.destroyed,
                    "stopping": self.stopping.is_set()}

    def _destroy(self, slot: Slot) -> None:
        if slot.held is not None:
            slot.held.release()
        with self._lock:
            self.destroyed += 1
        self._forget(slot)

    def _forget(self, slot: Slot) -> None:
        with self._lock:
            self._slots.pop(slot.name, None)
            self._lock.notify_all()
