"""python -m bench: measure vm-isolation on this host and write JSON, Markdown and a chart.

    python -m bench [--reps 5] [--only floor,coldpath,...] [--out DIR] [--publish]

Sections (default: all, in this order): floor, coldpath, warm (the pool hit), concurrency, disk, discovery, kill,
footprint, cloud-init (create -> SSH command on debian-cloud next to busybox: bench/CLOUD.md).
Results go to bench/results/<UTC time>/ (or --out); --publish also refreshes the
committed bench/RESULTS.md and bench/RESULTS.png.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Callable, Optional

from vm_isolation.config import load_settings
from vm_isolation.hypervisor import LibvirtHypervisor

from . import cloudimage, coldpath, concurrency, discovery, disk, env, floor, footprint, kill, report, targets, warm
from .common import BenchContext, Section, log, new_leftovers, snapshot_leftovers

SECTIONS = ("floor", "coldpath", "warm", "concurrency", "disk", "discovery", "kill", "footprint", "cloud-init")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="repetitions per figure (default 5)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections ({','.join(SECTIONS)})")
    p.add_argument("--out", type=Path, help="output directory (default bench/results/<UTC time>)")
    p.add_argument("--sizes", type=_ints, default=[64, 512, 2048], help="disk: base sizes in MiB")
    p.add_argument("--concurrency", type=_ints, default=[1, 2, 4, 8], help="concurrency: task counts")
    p.add_argument("--concurrency-reps", type=int, default=1, help="repetitions per task count (default 1)")
    p.add_argument("--modes", default="one-executor,separate-executors",
                   help="concurrency modes: one-executor, separate-executors")
    p.add_argument("--footprint", type=_ints, default=[1, 4], help="footprint: task counts")
    p.add_argument("--grace", type=float, default=3.0, help="kill: the kill policy's grace period (s)")
    p.add_argument("--deadline", type=float, default=240.0, help="per-wait deadline in seconds")
    p.add_argument("--compare-kernel", default="debian",
                   help="floor and coldpath also boot this kernel, interleaved: fast, debian or none (default debian)")
    p.add_argument("--publish", action="store_true", help="also write bench/RESULTS.md and RESULTS.png")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s", stream=sys.stderr)
    for noisy in ("vm_isolation", "paramiko"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        print(f"python -m bench: unknown sections {sorted(unknown)}; choose from {SECTIONS}", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    out = args.out or RESULTS_DIR / started.strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    settings = load_settings()
    environment = env.describe(settings) | {"load_avg_start": env.load_average()}
    hv = LibvirtHypervisor(settings.libvirt.uri)
    try:
        before = snapshot_leftovers(settings, hv)
        with tempfile.TemporaryDirectory(prefix="vmiso-bench-", dir="/var/tmp") as tmp:
            ctx = BenchContext(settings, hv, Path(tmp), args.reps, args.deadline, args.compare_kernel)
            sections = _run_sections(ctx, args, wanted)
        leftovers = new_leftovers(before, snapshot_leftovers(settings, hv))
    finally:
        hv.close()
    environment["load_avg_end"] = env.load_average()
    document = {
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "args": {"reps": args.reps, "sections": wanted, "sizes_mib": args.sizes, "concurrency": args.concurrency,
                 "concurrency_reps": args.concurrency_reps, "modes": args.modes, "grace_s": args.grace,
                 "deadline_s": args.deadline, "compare_kernel": args.compare_kernel},
        "environment": environment,
        "headline": targets.headline(sections),
        "targets": targets.as_dicts(checked := targets.evaluate(sections, args.grace)),
        "sections": {name: report.section_json(s) for name, s in sections.items()},
        "leftovers": leftovers,
        "virsh_list_all_after": _virsh_list(),
    }
    json_path, md_path, png_path = out / "bench.json", out / "bench.md", out / "bench.png"
    report.write_json(json_path, document)
    report.chart(png_path, sections)
    md_text = report.markdown(document, checked, png_path.name)
    md_path.write_text(md_text, encoding="utf-8")
    if args.publish:
        report.publish(json_path, md_text, png_path)
    print(md_text)
    log.info("wrote %s, %s, %s", json_path, md_path, png_path)
    return 1 if leftovers else 0


def _run_sections(ctx: BenchContext, args: argparse.Namespace, wanted: list[str]) -> dict[str, Section]:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    runners: dict[str, Callable[[], Section]] = {
        "floor": lambda: floor.run(ctx),
        "coldpath": lambda: coldpath.run(ctx),
        "warm": lambda: warm.run(ctx),
        "concurrency": lambda: concurrency.run(ctx, args.concurrency, modes, args.concurrency_reps),
        "disk": lambda: disk.run(args.sizes, ctx.reps),
        "discovery": lambda: discovery.run(ctx),
        "kill": lambda: kill.run(ctx, args.grace),
        "footprint": lambda: footprint.run(ctx, args.footprint, 1),
        "cloud-init": lambda: cloudimage.run(ctx),
    }
    sections: dict[str, Section] = {}
    for name in SECTIONS:
        if name not in wanted:
            continue
        log.info("=== %s ===", name)
        try:
            sections[name] = runners[name]()
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others' numbers
            section = Section(name)
            section.fail(f"section crashed: {exc!r}")
            sections[name] = section
    return sections


def _virsh_list() -> str:
    try:
        return subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all"], capture_output=True, text=True,
                              timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable: {exc}"


if __name__ == "__main__":
    sys.exit(main())
