"""vm-isolation-pool: the warm pool of pre-booted guests (see vm_isolation/pool.py).

    vm-isolation-pool serve  [--config PATH]    run the pool in the foreground (the service)
    vm-isolation-pool status [--config PATH]    print the running pool's guests as JSON
    vm-isolation-pool stop   [--config PATH]    stop it: every guest it owns is destroyed

``serve`` keeps ``[pool] size`` guests of ``[pool] shapes`` booted and idle and hands one to
each executor that asks on ``[pool] socket``. Its guests are owned by its own owner file and
journal (``[pool] state_dir``), so ``vm-isolation-reap`` removes them if it dies. It exits 0
on SIGTERM/SIGINT once its guests are gone, 1 if another pool runs or it cannot start, 2 when
the configuration is unusable or ``[pool] size = 0``. ``status`` exits 0 if a pool runs, 3 if
none does; ``stop`` exits 0 once none runs (``conf/systemd/vm-isolation-pool.service`` is the
unit; host set-up starts it only when ``[pool] size`` is above 0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from ..config import Settings, load_settings
from ..domainxml import Owner
from ..errors import VmIsolationError
from ..journal import Journal, journal_path
from ..ownership import OwnerFile
from ..pool import WarmPool, pool_running
from ..pool import pool_lock_path as lock_path
from ..pool import pool_status_path as status_path
from ..poolserver import PoolServer
from ..procinfo import own_start_time
from ..reaperwatch import WatchLock, watcher_record_at
from ..waiting import Deadline, WaitTimeout, poll_until
from ..wiring import real_hypervisor, real_launcher
from .common import configure_logging, stop_on_signals

log = logging.getLogger("vm-isolation-pool")
POOL_EXECUTOR_ID = "vm-isolation-pool"
STATUS_EVERY_S = 1.0
STOP_TIMEOUT_S = 180.0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="vm-isolation-pool", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("serve", "status", "stop"))
    parser.add_argument("--config", type=Path, help="configuration file (default /etc/vm-isolation/mesos.conf)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    configure_logging("vm-isolation-pool", args.verbose)
    try:
        settings = load_settings(args.config)
    except VmIsolationError as exc:
        log.error("%s", exc)
        return 2
    if args.command == "status":
        return _status(settings)
    if args.command == "stop":
        return _stop(settings)
    if not settings.pool.enabled:
        log.error("[pool] size = 0 in %s: no pool to serve", settings.source)
        return 2
    return _serve(settings)


def _status(settings: Settings) -> int:
    running = pool_running(settings)
    status: dict[str, Any] = {"running": running, "socket": str(settings.pool.socket),
                              "pid": watcher_record_at(lock_path(settings)).get("pid") if running else None}
    if running:
        with contextlib.suppress(OSError, ValueError):
            status.update(json.loads(status_path(settings).read_text()))
    print(json.dumps(status, indent=2, sort_keys=True))
    return 0 if running else 3


def _stop(settings: Settings) -> int:
    if not pool_running(settings):
        print("no pool is running")
        return 0
    pid = watcher_record_at(lock_path(settings)).get("pid")
    if not isinstance(pid, int) or pid <= 0:
        log.error("the pool's lock %s names no pid", lock_path(settings))
        return 1
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        poll_until(lambda: True if not pool_running(settings) else None, Deadline.after(STOP_TIMEOUT_S),
                   interval_s=0.2, what=f"the pool (pid {pid}) to destroy its guests and exit")
    except WaitTimeout as exc:
        log.error("%s", exc)
        return 1
    print(f"pool (pid {pid}) stopped")
    return 0


def _serve(settings: Settings) -> int:
    pid, started = os.getpid(), own_start_time()
    try:
        lock = WatchLock(lock_path(settings), {"pid": pid, "exe": str(Path(sys.argv[0]).resolve())},
                         what="vm-isolation-pool")
    except VmIsolationError as exc:
        log.error("%s", exc)
        return 1
    with contextlib.ExitStack() as stack:
        stack.callback(lock.close)
        try:
            pool, server = _start(settings, pid, started, stack)
        except VmIsolationError as exc:
            log.error("%s", exc)
            return 1
        stop = stop_on_signals()
        threading.Thread(target=pool.run_refills, name="refills", daemon=True).start()
        threading.Thread(target=_write_status, args=(settings, pool, stop), name="status", daemon=True).start()
        log.info("serving %s on %s (max %d concurrent boots)",
                 ", ".join(f"{k}*{v}" for k, v in sorted(pool.wanted.items())), settings.pool.socket,
                 settings.pool.max_concurrent_boots)
        server.serve(stop)
        log.info("stopping: destroying the pool's guests")
        server.close()
        pool.stop()
        server.join(settings.pool.handover_timeout_s)
        status_path(settings).unlink(missing_ok=True)
    log.info("stopped (%d guests handed over, %d destroyed)", pool.handed, pool.destroyed)
    return 0


def _start(settings: Settings, pid: int, started: str, stack: contextlib.ExitStack) -> tuple[WarmPool, PoolServer]:
    """The pool's owner file, journal, libvirt connection, pool and bound socket; each undone on ``stack``."""
    journal_file = journal_path(settings.pool.state_dir)
    owner_file = OwnerFile.create(settings.vm.owner_dir, executor_id=POOL_EXECUTOR_ID, pid=pid, start_time=started,
                                  journal=journal_file)
    stack.callback(owner_file.release)  # last: only once every guest of ours is gone
    owner = Owner(executor_id=POOL_EXECUTOR_ID, task_id="pool", executor_pid=pid, executor_start_time=started,
                  owner_file=str(owner_file.path))
    journal = Journal(journal_file, owner)
    stack.callback(journal.close)
    hypervisor = real_hypervisor(settings, first_connect_s=20.0)
    stack.callback(hypervisor.close)
    pool = WarmPool(settings, real_launcher(settings, hypervisor), hypervisor, owner=owner, journal=journal)
    server = PoolServer(pool, settings.pool.socket, handover_timeout_s=settings.pool.handover_timeout_s)
    server.bind()
    stack.callback(server.close)
    return pool, server


def _write_status(settings: Settings, pool: WarmPool, stop: threading.Event) -> None:
    """The pool's state for ``status``, rewritten every second (atomically)."""
    path = status_path(settings)
    while not stop.is_set():
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(json.dumps(pool.status(), sort_keys=True))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)
        stop.wait(STATUS_EVERY_S)


if __name__ == "__main__":
    sys.exit(main())
