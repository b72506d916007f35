"""vm-isolation-reap: remove the guests, overlays, keys and leases of executors that died.

    vm-isolation-reap [--dry-run] [--json] [--config PATH] [--min-age SECONDS]
                      [--work-dir DIR] [--journal PATH ...]
    vm-isolation-reap --watch [--interval SECONDS] [--full-every SECONDS] [--work-dir DIR]

Only domains vm-isolation created (owner metadata and a vmiso- name) whose owning executor is
gone are touched, plus overlays and key directories of no domain, plus what the sandbox
journals of dead executors list (under the agent's --work_dir, and any --journal given).
Exit status: 0 when nothing was found or everything found was removed (or, with --dry-run,
listed), 1 when a removal failed, 2 when the configuration or libvirt is unusable.

``--watch`` runs as the host's service (see vm_isolation/reaperwatch.py; host set-up starts it,
``conf/systemd/vm-isolation-reaper.service`` is its unit): a dead executor's guests are gone
within about a second of its death. It exits 0 on SIGTERM/SIGINT, 1 if another watcher runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from ..config import Settings, load_settings
from ..errors import VmIsolationError
from ..journal import journals_under
from ..reaper import DEFAULT_ORPHAN_MIN_AGE_S, ReapReport, reap
from ..reaperwatch import DEFAULT_FULL_EVERY_S, DEFAULT_INTERVAL_S, WatchLock, watch, watch_lock_path
from ..wiring import agent_ports, real_hypervisor, real_leases
from .common import configure_logging, service_record, stop_on_signals

log = logging.getLogger("vm-isolation-reap")
DEFAULT_AGENT_WORK_DIR = Path("/var/lib/mesos")
FIRST_CONNECT_S = 60.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vm-isolation-reap", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; touch nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--config", type=Path, help="configuration file")
    p.add_argument("--min-age", type=float, default=DEFAULT_ORPHAN_MIN_AGE_S, metavar="SECONDS",
                   help="leave overlays/keys of no domain younger than this (a guest may be booting; "
                        f"default {DEFAULT_ORPHAN_MIN_AGE_S:g})")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_AGENT_WORK_DIR, metavar="DIR",
                   help="the Mesos agent's --work_dir, whose executor sandboxes hold journals "
                        f"(default {DEFAULT_AGENT_WORK_DIR}; skipped if absent)")
    p.add_argument("--journal", type=Path, action="append", default=[], metavar="PATH",
                   help="also finish the teardown this journal records (repeatable)")
    p.add_argument("--watch", action="store_true",
                   help="keep running: reap dead executors' guests every --interval seconds (the host service)")
    p.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, metavar="SECONDS",
                   help=f"--watch: seconds between checks of the guests' owners (default {DEFAULT_INTERVAL_S:g})")
    p.add_argument("--full-every", type=float, default=DEFAULT_FULL_EVERY_S, metavar="SECONDS",
                   help="--watch: seconds between full passes (journals under --work-dir, orphaned files; "
                        f"default {DEFAULT_FULL_EVERY_S:g})")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging("vm-isolation-reap")
    try:
        settings = load_settings(args.config)
    except VmIsolationError as exc:
        log.error("%s", exc)
        return 2
    if args.watch:
        return _watch(settings, args)
    hypervisor = real_hypervisor(settings)
    try:
        journals = dict.fromkeys([*journals_under(args.work_dir), *args.journal])
        report = reap(settings, hypervisor, real_leases(hypervisor), orphan_min_age_s=args.min_age,
                      journals=journals, dry_run=args.dry_run, ports=agent_ports(settings))
    finally:
        hypervisor.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        _print_text(report)
    return 0 if report.ok else 1


def _watch(settings: Settings, args: argparse.Namespace) -> int:
    try:
        lock = WatchLock(watch_lock_path(settings), service_record())
    except VmIsolationError as exc:
        log.error("%s", exc)
        return 1
    stop = stop_on_signals()
    # A libvirtd that is down or restarting is waited for, never a reason to exit.
    hypervisor = real_hypervisor(settings, first_connect_s=FIRST_CONNECT_S)
    log.info("watching: owners every %.1f s, full pass every %.0f s (journals under %s)",
             args.interval, args.full_every, args.work_dir)
    try:
        watch(settings, hypervisor, real_leases(hypervisor), stop,
              journals=lambda: [*journals_under(args.work_dir), *args.journal],
              interval_s=args.interval, full_every_s=args.full_every, orphan_min_age_s=args.min_age,
              ports=agent_ports(settings))
    finally:
        hypervisor.close()
        lock.close()
    log.info("stopped")
    return 0


def _print_text(report: ReapReport) -> None:
    verb = "would remove" if report.dry_run else "found"
    if not report.found:
        print("vm-isolation-reap: nothing left over")
    for leftover in report.found:
        print(f"{verb} {leftover.kind.value} {leftover.path or leftover.name}: {leftover.reason}")
    for line in report.removed:
        print(f"removed: {line}")
    for line in report.kept:
        print(f"kept: {line}")
    for line in report.errors:
        print(f"error: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
