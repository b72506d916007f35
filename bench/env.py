"""The environment a run happened in: CPUs, domain type, kernel, versions, load."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from vm_isolation import __version__
from vm_isolation.accel import resolve_domain_type
from vm_isolation.config import Settings


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else ""


def _proc_field(path: str, prefix: str) -> str:
    """The rest of the first line of a /proc file starting with ``prefix`` ('' if none)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(prefix)), "")


def _cpu_model() -> str:
    return _proc_field("/proc/cpuinfo", "model name") or platform.processor()


def _mem_total_mib() -> float:
    value = _proc_field("/proc/meminfo", "MemTotal")
    return int(value.split()[0]) / 1024.0 if value else 0.0


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def describe(settings: Settings) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_total_mib": round(_mem_total_mib()),
        "domain_type": resolve_domain_type(settings.libvirt.domain_type),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "vm_isolation": __version__,
        "qemu": _first_line(["qemu-system-x86_64", "--version"]),
        "libvirt": _first_line(["libvirtd", "--version"]),
        "qemu_img": _first_line(["qemu-img", "--version"]),
        "image": str(settings.images.base(settings.images.default)),
        "network": settings.libvirt.network,
    }
