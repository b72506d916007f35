"""The reaper as a host service: ``vm-isolation-reap --watch`` removes a dead executor's guests
within about a second, however the executor died.

The Mesos agent never sends an executor SIGTERM: it destroys the container with SIGKILL to its
session or cgroup (after the shutdown grace period, on a registration timeout, a resource
limitation, ``--recover=cleanup``, an operator's KILL_CONTAINER). The guest's qemu belongs to
libvirtd, outside that session and cgroup, so it would survive and keep running the task. The
watcher asks every tick (``interval_s``, 0.5 s) whether each guest's owner still holds its
owner-file lock (:mod:`ownership`) and reaps the guests of dead owners; every ``full_every_s``
it also replays the journals under the agent's work directory and removes orphaned overlays and
keys (:func:`reaper.reap`). A libvirtd restart does not kill anything: owners are judged by
their locks, which a libvirtd restart does not touch.

One watcher per host: it holds an exclusive lock on :func:`watch_lock_path` (root-only
directory), which is also how executors and host set-up tell that it runs.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from .config import Settings
from .errors import StorageError
from .ownership import Liveness, liveness
from .reaper import DEFAULT_ORPHAN_MIN_AGE_S, DomainTable, LeaseBook, PortTable, ReapReport, reap

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 0.5
DEFAULT_FULL_EVERY_S = 60.0
LOCK_NAME = "reaper-watch.lock"


def watch_lock_path(settings: Settings) -> Path:
    """``/run/vm-isolation/reaper-watch.lock`` by default: beside (not in) the world-writable
    owner directory, so no framework user can fake or block the watcher."""
    return settings.vm.owner_dir.parent / LOCK_NAME


def reaper_watch_running(settings: Settings) -> bool:
    return liveness(watch_lock_path(settings)) is Liveness.ALIVE


def watcher_record(settings: Settings) -> dict[str, object]:
    """What the running watcher wrote into its lock file ({} if none or unreadable)."""
    return watcher_record_at(watch_lock_path(settings))


class WatchLock:
    """The one-watcher-per-host lock, held for the watcher's life."""

    def __init__(self, path: Path, record: dict[str, object], *, what: str = "vm-isolation-reap --watch") -> None:
        """``what`` names the service in the refusal (the warm pool uses the same lock)."""
        self.path = path
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open the watcher lock {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise StorageError(f"another {what} holds {path} "
                               f"({json.dumps(watcher_record_at(path))}); not starting a second one") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, json.dumps(record, sort_keys=True).encode() + b"\n")

    def close(self) -> None:
        os.close(self._fd)


def watcher_record_at(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def watch(settings: Settings, hypervisor: DomainTable, leases: LeaseBook, stop: threading.Event, *,
          journals: Callable[[], Iterable[Path]] = lambda: (), interval_s: float = DEFAULT_INTERVAL_S,
          full_every_s: float = DEFAULT_FULL_EVERY_S, orphan_min_age_s: float = DEFAULT_ORPHAN_MIN_AGE_S,
          ports: Optional[PortTable] = None, monotonic: Callable[[], float] = time.monotonic,
          on_report: Callable[[ReapReport], None] = lambda report: None) -> None:
    """Reap until ``stop`` is set: dead owners' guests every tick, a full pass every ``full_every_s``."""
    next_full = monotonic()
    last_errors: list[str] = []
    while not stop.is_set():
        started = monotonic()
        full = started >= next_full
        if full:
            next_full = started + full_every_s
        report = reap(settings, hypervisor, leases, orphan_files=full, orphan_min_age_s=orphan_min_age_s,
                      journals=journals() if full else (),
                      ports=ports)
        for line in report.removed:
            log.info("removed: %s", line)
        for leftover in report.found:
            log.info("reaped %s %s: %s", leftover.kind.value, leftover.path or leftover.name, leftover.reason)
        if report.errors != last_errors:  # a lasting error (libvirtd down) is logged once
            for line in report.errors:
                log.error("%s", line)
            last_errors = report.errors
        on_report(report)
        stop.wait(interval_s)
