"""Disk: a copy-on-write overlay (vm_isolation.overlay.create_overlay) vs a full copy (cp).

Test bases of each size are qcow2 images filled with random data (``qemu-img convert`` of a
raw file from /dev/urandom), made in a temporary directory that is removed afterwards. All
overlays of a base are timed before its copies, and the page cache is synced after every write,
so write-back of one figure's data does not land in the next figure's time.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from vm_isolation.overlay import create_overlay, remove_overlay

from .common import Section, now, repetitions

MIB = 1024 * 1024
CHUNK = 4 * MIB


def run(sizes_mib: list[int], reps: int, tmp_parent: Path = Path("/var/tmp")) -> Section:
    section = Section("disk")
    section.extra["sizes_mib"] = sizes_mib
    with tempfile.TemporaryDirectory(prefix="vmiso-bench-disk-", dir=tmp_parent) as tmp:
        work = Path(tmp)
        for size in sizes_mib:
            try:
                base = _make_base(work, size)
            except (OSError, subprocess.CalledProcessError) as exc:
                section.fail(f"could not make a {size} MiB base: {exc}")
                continue
            for _ in repetitions(section, reps, f"{size} MiB overlay"):
                _overlay(section, base, work, size)
            for _ in repetitions(section, reps, f"{size} MiB copy"):
                _copy(section, base, work, size)
            base.unlink()
    return section


def _make_base(work: Path, size_mib: int) -> Path:
    raw, base = work / f"base-{size_mib}.raw", work / f"base-{size_mib}.qcow2"
    with open("/dev/urandom", "rb") as rand, open(raw, "wb") as out:
        for _ in range(size_mib * MIB // CHUNK):
            out.write(rand.read(CHUNK))
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(base)], check=True)
    raw.unlink()
    os.sync()  # write the base out now, not while overlays are being timed
    return base


def _overlay(section: Section, base: Path, work: Path, size_mib: int) -> None:
    overlay = work / "overlay.qcow2"
    t0 = now()
    create_overlay(base, overlay)
    section.add(f"overlay.{size_mib}MiB", now() - t0)
    remove_overlay(overlay)


def _copy(section: Section, base: Path, work: Path, size_mib: int) -> None:
    copy = work / "copy.qcow2"
    t0 = now()
    subprocess.run(["cp", str(base), str(copy)], check=True)
    section.add(f"copy.{size_mib}MiB", now() - t0)
    copy.unlink()
    os.sync()  # NOTE: the copy's dirty pages would otherwise be written back during the next figure
