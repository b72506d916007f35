"""The headline figures and the targets the issue sets, computed from the section summaries."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from .common import Section
from .stats import median_or_none, percentile

OVERHEAD_TARGET_S = 0.5
OVERLAY_FLAT_TOLERANCE_S = 0.05
ADDRESS_TARGET_S = 0.1
KILL_SLACK_S = 0.5
EXECUTOR_RSS_TARGET_MIB = 60.0
WARM_RUNNING_TARGET_S = 0.3
IDLE_GUEST_RSS_TARGET_MIB = 150.0
COLD_RUNNING_TARGET_S = 2.0
QEMU_CPU_TARGET_S = 2.0


@dataclass(frozen=True)
class Target:
    name: str
    target: str
    measured: str
    met: Optional[bool]
    """None: not measured in this run."""
    note: str = ""
    """What the figure is made of, to read a miss by."""


def _samples(sections: dict[str, Section], name: str, metric: str) -> list[float]:
    section = sections.get(name)
    return section.samples.get(metric, []) if section else []


def headline(sections: dict[str, Section]) -> dict[str, Any]:
    floor = median_or_none(_samples(sections, "floor", "total"))
    floor_started = median_or_none(_samples(sections, "floor", "command_started"))
    cold = median_or_none(_samples(sections, "coldpath", "to_finished"))
    cold_running = median_or_none(_samples(sections, "coldpath", "to_running"))
    out: dict[str, Any] = {"floor_total_median_s": floor, "cold_finished_median_s": cold,
                           "floor_command_started_median_s": floor_started, "cold_running_median_s": cold_running}
    if floor and cold:
        out["overhead_s"] = round(cold - floor, 3)
        out["overhead_ratio"] = round(cold / floor, 3)
    if floor_started and cold_running:
        out["running_overhead_s"] = round(cold_running - floor_started, 3)
    warm_running = median_or_none(_samples(sections, "warm", "to_running"))
    if warm_running is not None:
        out["warm_running_median_s"] = warm_running
        out["idle_pool_guest_rss_median_mib"] = median_or_none(_samples(sections, "warm", "idle_guest_qemu_rss"))
    out["kernels"] = _per_kernel(sections)
    conc = sections.get("concurrency")
    if conc:
        for key, values in conc.samples.items():
            if key.endswith((".n8.all_running", ".n8.all_finished", ".n8.failures")):
                out[f"concurrency.{key}"] = median_or_none(values)
    return out


def _per_kernel(sections: dict[str, Section]) -> dict[str, dict[str, Optional[float]]]:
    """Kernel kind -> its medians: floor command start, cold LAUNCH -> TASK_RUNNING, qemu CPU s per boot."""
    kernels: dict[str, str] = {}
    for name in ("floor", "coldpath"):
        section = sections.get(name)
        if section:
            kernels.update({prefix: k["kind"] for prefix, k in section.extra.get("kernels", {}).items()})
    return {kind: {"floor_command_started_median_s": median_or_none(_samples(sections, "floor", f"{p}command_started")),
                   "cold_running_median_s": median_or_none(_samples(sections, "coldpath", f"{p}to_running")),
                   "qemu_cpu_s_per_boot_median": median_or_none(_samples(sections, "floor", f"{p}qemu_cpu_s"))}
            for p, kind in kernels.items()}


def evaluate(sections: dict[str, Section], grace_s: float) -> list[Target]:
    return [_overhead(sections), _cold_running(sections), _qemu_cpu(sections), _overlay(sections),
            _address(sections), _kill(sections, grace_s), _rss(sections), _warm(sections), _idle_rss(sections)]


def _cold_running(sections: dict[str, Section]) -> Target:
    name, target = "cold LAUNCH -> TASK_RUNNING", f"<= {COLD_RUNNING_TARGET_S} s (median, configured kernel)"
    value = median_or_none(_samples(sections, "coldpath", "to_running"))
    if value is None:
        return Target(name, target, "not measured", None)
    others = {kind: k["cold_running_median_s"] for kind, k in _per_kernel(sections).items()}
    note = "per kernel: " + ", ".join(f"{kind} {v:.2f} s" for kind, v in others.items() if v is not None)
    return Target(name, target, f"{value:.2f} s", value <= COLD_RUNNING_TARGET_S, note)


def _qemu_cpu(sections: dict[str, Section]) -> Target:
    name, target = "qemu CPU per cold boot", f"<= {QEMU_CPU_TARGET_S:g} CPU s (median, floor, configured kernel)"
    value = median_or_none(_samples(sections, "floor", "qemu_cpu_s"))
    if value is None:
        return Target(name, target, "not measured", None)
    others = {kind: k["qemu_cpu_s_per_boot_median"] for kind, k in _per_kernel(sections).items()}
    note = "per kernel: " + ", ".join(f"{kind} {v:.2f} CPU s" for kind, v in others.items() if v is not None)
    return Target(name, target, f"{value:.2f} CPU s", value <= QEMU_CPU_TARGET_S, note)


def _warm(sections: dict[str, Section]) -> Target:
    name, target = "warm (pool hit) LAUNCH -> TASK_RUNNING", f"<= {WARM_RUNNING_TARGET_S} s (median)"
    warm = median_or_none(_samples(sections, "warm", "to_running"))
    if warm is None:
        return Target(name, target, "not measured", None)
    cold = median_or_none(_samples(sections, "coldpath", "to_running"))
    handover = median_or_none(_samples(sections, "warm", "phase.handover"))
    note = (f"hand-over (ask the pool -> SSH up) median {handover or 0:.3f} s; the rest is the executor's start, "
            f"SUBSCRIBE, LAUNCH and upload" + (f"; cold path in this run {cold:.2f} s" if cold else ""))
    return Target(name, target, f"{warm:.2f} s", warm <= WARM_RUNNING_TARGET_S, note)


def _idle_rss(sections: dict[str, Section]) -> Target:
    name, target = "idle pool guest qemu RSS", f"<= {IDLE_GUEST_RSS_TARGET_MIB:.0f} MiB (median)"
    rss = median_or_none(_samples(sections, "warm", "idle_guest_qemu_rss"))
    if rss is None:
        return Target(name, target, "not measured", None)
    return Target(name, target, f"{rss:.0f} MiB", rss <= IDLE_GUEST_RSS_TARGET_MIB)


def _overhead(sections: dict[str, Section]) -> Target:
    h = headline(sections)
    name, target = "executor overhead over the floor", f"<= {OVERHEAD_TARGET_S} s (median TASK_FINISHED - floor total)"
    if "overhead_s" not in h:
        return Target(name, target, "not measured", None)
    floor_lease = median_or_none(_samples(sections, "floor", "phase.lease"))
    cold_lease = median_or_none(_samples(sections, "coldpath", "phase.lease"))
    outside = median_or_none(_samples(sections, "coldpath", "outside_task_worker"))
    by_min = min(_samples(sections, "coldpath", "to_finished")) - min(_samples(sections, "floor", "total"))
    note = (f"difference of the minima {by_min:+.2f} s; the executor's time outside its task worker "
            f"(process start, SUBSCRIBE, LAUNCH, updates) median {outside or 0:.2f} s; guest lease phase "
            f"median {cold_lease or 0:.2f} s in the executor vs {floor_lease or 0:.2f} s in the floor "
            f"(the guest's own boot, which the executor does not change, varies with host load)")
    return Target(name, target, f"{h['overhead_s']:+.2f} s (x{h['overhead_ratio']:.2f})",
                  h["overhead_s"] <= OVERHEAD_TARGET_S, note)


def _overlay(sections: dict[str, Section]) -> Target:
    name = "overlay creation flat in base size"
    target = f"median at the largest base within {OVERLAY_FLAT_TOLERANCE_S * 1000:.0f} ms of the smallest"
    disk = sections.get("disk")
    sizes = disk.extra.get("sizes_mib", []) if disk else []
    medians = {s: median_or_none(_samples(sections, "disk", f"overlay.{s}MiB")) for s in sizes}
    known = {s: m for s, m in medians.items() if m is not None}
    if len(known) < 2:
        return Target(name, target, "not measured (needs two sizes)", None)
    small, large = known[min(known)], known[max(known)]
    measured = ", ".join(f"{s} MiB {m * 1000:.1f} ms" for s, m in sorted(known.items()))
    copies = {s: median_or_none(_samples(sections, "disk", f"copy.{s}MiB")) for s in sizes}
    note = "full copy (cp): " + ", ".join(f"{s} MiB {c:.3f} s" for s, c in copies.items() if c is not None)
    return Target(name, target, measured, large - small <= OVERLAY_FLAT_TOLERANCE_S, note)


def _address(sections: dict[str, Section]) -> Target:
    name, target = "address found after the lease", f"<= {ADDRESS_TARGET_S} s (p95)"
    values = _samples(sections, "discovery", "lease_to_address")
    if not values:
        return Target(name, target, "not measured", None)
    p95 = percentile(values, 95)
    return Target(name, target, f"median {median_or_none(values):.3f} s, p95 {p95:.3f} s", p95 <= ADDRESS_TARGET_S)


def _kill(sections: dict[str, Section], grace_s: float) -> Target:
    name, target = "KILL -> TASK_KILLED", f"<= grace + {KILL_SLACK_S} s = {grace_s + KILL_SLACK_S:g} s (p95)"
    values = _samples(sections, "kill", "kill_to_killed")
    if not values:
        return Target(name, target, "not measured", None)
    p95 = percentile(values, 95)
    return Target(name, target, f"median {median_or_none(values):.2f} s, p95 {p95:.2f} s",
                  p95 <= grace_s + KILL_SLACK_S)


def _rss(sections: dict[str, Section]) -> Target:
    name, target = "executor RSS", f"<= {EXECUTOR_RSS_TARGET_MIB:g} MiB (largest sample)"
    section = sections.get("footprint")
    values = [v for k, vs in (section.samples.items() if section else []) if k.startswith("executor_rss")
              for v in vs]
    if not values:
        return Target(name, target, "not measured", None)
    per_count = ", ".join(f"{k.removeprefix('executor_rss.')}: {max(vs):.1f} MiB" for k, vs in
                          sorted(section.samples.items() if section else []) if k.startswith("executor_rss"))
    return Target(name, target, f"max {max(values):.1f} MiB", max(values) <= EXECUTOR_RSS_TARGET_MIB,
                  f"by tasks running: {per_count}")


def as_dicts(targets: list[Target]) -> list[dict[str, Any]]:
    return [asdict(t) for t in targets]
