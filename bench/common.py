"""What every benchmark shares: its result record, the context it runs in, and leftovers checks."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from vm_isolation.config import GuestKernel, Settings
from vm_isolation.guest import GuestRequest
from vm_isolation.hypervisor import LibvirtHypervisor
from vm_isolation.ids import domain_name_for
from vm_isolation.waiting import Deadline, WaitTimeout, poll_until

log = logging.getLogger("bench")
BENCH_PREFIX = "bench-"
"""Every id and guest name the benchmark makes starts with this (domains: ``vmiso-bench-...``)."""
OUR_DOMAINS = f"vmiso-{BENCH_PREFIX}"
TASK_MEM_MIB = 192
"""Guest memory of every benchmark guest, floor and executor alike (the tests' size)."""


@dataclass
class Section:
    """One benchmark's raw samples (every one kept), their units, failures and notes."""

    name: str
    samples: dict[str, list[float]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, metric: str, value: float, unit: str = "s") -> None:
        self.samples.setdefault(metric, []).append(round(value, 4))
        self.units[metric] = unit

    def fail(self, what: str) -> None:
        self.failures += 1
        self.errors.append(what)
        log.warning("%s: %s", self.name, what)


@dataclass(frozen=True)
class BenchContext:
    settings: Settings
    hypervisor: LibvirtHypervisor
    work_dir: Path
    """A temporary directory under /var/tmp, removed after the run."""
    reps: int
    deadline_s: float
    """Generous per-wait deadline: guests under software emulation on a loaded host are slow."""
    compare_kernel: str = "debian"
    """The floor and the cold path also boot this kernel (fast, debian; none: only the configured one)."""


def guest_request(ctx: BenchContext, hint: str, kernel: Optional[GuestKernel] = None) -> GuestRequest:
    """A guest like the executor's for a 1-cpu, 192 MiB task on the default image (with its
    configured kernel unless ``kernel`` says otherwise)."""
    images = ctx.settings.images
    return GuestRequest(name=domain_name_for(hint), base_image=images.base(images.default),
                        kernel=kernel or images.kernel_for(images.default),
                        vcpus=1, memory_mib=max(ctx.settings.vm.memory_floor_mib, TASK_MEM_MIB))


def repetitions(section: Section, reps: int, label: str = "") -> Iterator[int]:
    """``range(reps)`` that logs progress."""
    for rep in range(reps):
        log.info("%s%s: repetition %d/%d", section.name, f" {label}" if label else "", rep + 1, reps)
        yield rep


def wait_for(probe: Callable[[], Optional[Any]], timeout_s: float, what: str, interval_s: float = 0.02) -> bool:
    """poll_until with a deadline; False instead of an exception when it passes."""
    try:
        poll_until(probe, Deadline.after(timeout_s), interval_s=interval_s, what=what)
    except WaitTimeout:
        return False
    return True


def now() -> float:
    return time.monotonic()


def snapshot_leftovers(settings: Settings, hv: LibvirtHypervisor) -> dict[str, set[str]]:
    """The benchmark's domains, overlays and keys that exist now (to diff before/after a run).

    Only ``vmiso-bench-*`` names count: other engineers' tests may create and leave their own
    guests on this host meanwhile.
    """
    vm = settings.vm
    keys = {p.name for p in vm.key_dir.iterdir()} if vm.key_dir.exists() else set()
    return {
        "domains": {d.name for d in hv.owned_domains() if d.name.startswith(OUR_DOMAINS)},
        "overlays": {p.name for p in vm.overlay_dir.glob(f"{OUR_DOMAINS}*.qcow2")},
        "keys": {k for k in keys if k.startswith(OUR_DOMAINS)},
    }


def new_leftovers(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, list[str]]:
    return {kind: sorted(after[kind] - before[kind]) for kind in after if after[kind] - before[kind]}
