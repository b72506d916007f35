"""vm-isolation-reap: remove the guests, overlays, keys and leases of executors that died.

    vm-isolation-reap [--dry-run] [--json] [--config PATH] [--min-age SECONDS]
                      [--work-dir DIR] [--journal PATH ...]

Only domains vm-isolation created (owner metadata and a vmiso- name) whose owning executor is
gone are touched, plus overlays and key directories of no domain, plus what the sandbox
journals of dead executors list (under the agent's --work_dir, and any --journal given).
Exit status: 0 when nothing was found or everything found was removed (or, with --dry-run,
listed), 1 when a removal failed, 2 when the configuration or libvirt is unusable.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from ..config import load_settings
from ..errors import VmIsolationError
from ..hypervisor import LibvirtHypervisor
from ..journal import journals_under
from ..leases import Leases
from ..reaper import DEFAULT_ORPHAN_MIN_AGE_S, ReapReport, reap
from .common import configure_logging

log = logging.getLogger("vm-isolation-reap")
DEFAULT_AGENT_WORK_DIR = Path("/var/lib/mesos")


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
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging("vm-isolation-reap")
    try:
        settings = load_settings(args.config)
    except VmIsolationError as exc:
        log.error("%s", exc)
        return 2
    hypervisor = LibvirtHypervisor(settings.libvirt.uri)
    try:
        journals = dict.fromkeys([*journals_under(args.work_dir), *args.journal])
        report = reap(settings, hypervisor, Leases(hypervisor), orphan_min_age_s=args.min_age,
                      journals=journals, dry_run=args.dry_run)
    finally:
        hypervisor.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        _print_text(report)
    return 0 if report.ok else 1


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
