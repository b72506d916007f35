"""The two guest kernels side by side: which one a repetition boots, and qemu's CPU time per boot.

The floor and the cold path boot the default image with its configured kernel (plain metric
names, which the headline and targets read) and, interleaved repetition by repetition so that
host load hits both alike, with the comparison kernel (``--compare-kernel``, default the other
one of fast/debian), whose metrics carry the prefix ``kernel-<kind>.``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vm_isolation.config import KERNEL_KINDS, GuestKernel, Settings, conf_path

from .footprint import qemu_pid

COMPARE_IMAGE = "bench-compare-kernel"
"""The image name the cold path's comparison runs label their tasks with (in the bench's config copy)."""


@dataclass(frozen=True)
class KernelRun:
    """One kernel a section boots: what it is, its metric prefix, and for the executor its config
    file and the task label that selects it."""

    kernel: GuestKernel
    prefix: str = ""
    config: Optional[Path] = None
    """None: the host's configuration; else the bench's copy with the comparison image."""
    image: Optional[str] = None
    """The task's ``vm_isolation.image`` label; None: the default image."""


def runs(settings: Settings, work_dir: Path, compare: str) -> list[KernelRun]:
    """The configured kernel of the default image, then (unless ``compare`` is none or the same
    kernel) the comparison kernel booting the same disk."""
    images = settings.images
    default = KernelRun(images.kernel_for(images.default))
    if compare in ("none", default.kernel.kind):
        return [default]
    if compare not in KERNEL_KINDS:
        raise ValueError(f"--compare-kernel {compare!r}: use one of {', '.join(KERNEL_KINDS)} or none")
    return [default, KernelRun(images.guest_kernel(compare), f"kernel-{compare}.",
                               _config_with_compare_image(settings, work_dir, compare), COMPARE_IMAGE)]


def _config_with_compare_image(settings: Settings, work_dir: Path, kind: str) -> Path:
    """A copy of the host's configuration plus an image that boots the default image's disk with
    ``kind``: what the executor is pointed at for the comparison runs."""
    source = settings.source or conf_path(None)
    base = settings.images.base(settings.images.default)
    path = work_dir / f"compare-{kind}.conf"
    path.write_text(source.read_text(encoding="utf-8")
                    + f"\n[image:{COMPARE_IMAGE}]\npath = {base}\nkernel = {kind}\n", encoding="utf-8")
    return path


def qemu_cpu_s(domain: str) -> Optional[float]:
    """User + system CPU seconds the domain's qemu process has used so far (None if it is gone)."""
    pid = qemu_pid(domain)
    if pid is None:
        return None
    try:
        # Fields after the command name, which may hold spaces: utime and stime are the 12th/13th.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
