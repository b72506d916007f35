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
RUNNING_OVERHEAD_TARGET_S = 0.3
QEMU_CPU_TARGET_S = 2.0
CONCURRENT_TASKS = 8
CONCURRENT_RUNNING_TARGET_S = 12.0


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
    return [_overhead(sections), _cold_running(sections), _running_overhead(sections), _concurrent(sections),
            _qemu_cpu(sections), _overlay(sections), _address(sections), _kill(sections, grace_s), _rss(sections),
            _warm(sections), _idle_rss(sections)]


def _median_target(sections: dict[str, Section], name: str, target: str, where: tuple[str, str], limit: float,
                   unit: str, note: str = "") -> Target:
    """A target on the median of one metric (``where``: section, metric), at most ``limit``."""
    value = median_or_none(_samples(sections, *where))
    if value is None:
        return Target(name, target, "not measured", None)
    return Target(name, target, f"{value:.2f} {unit}", value <= limit, note)


def _per_kernel_note(sections: dict[str, Section], key: str, unit: str) -> str:
    values = {kind: k[key] for kind, k in _per_kernel(sections).items()}
    return "per kernel: " + ", ".join(f"{kind} {v:.2f} {unit}" for kind, v in values.items() if v is not None)


def _cold_running(sections: dict[str, Section]) -> Target:
    return _median_target(sections, "cold LAUNCH -> TASK_RUNNING",
                          f"<= {COLD_RUNNING_TARGET_S} s (median, configured kernel)", ("coldpath", "to_running"),
                          COLD_RUNNING_TARGET_S, "s", _per_kernel_note(sections, "cold_running_median_s", "s"))


def _qemu_cpu(sections: dict[str, Section]) -> Target:
    return _median_target(sections, "qemu CPU per cold boot",
                          f"<= {QEMU_CPU_TARGET_S:g} CPU s (median, floor, configured kernel)", ("floor", "qemu_cpu_s"),
                          QEMU_CPU_TARGET_S, "CPU s", _per_kernel_note(sections, "qemu_cpu_s_per_boot_median", "CPU s"))


def _warm(sections: dict[str, Section]) -> Target:
    cold = median_or_none(_samples(sections, "coldpath", "to_running"))
    handover = median_or_none(_samples(sections, "warm", "phase.handover"))
    note = (f"hand-over (ask the pool -> SSH up) median {handover or 0:.3f} s; the rest is the executor's start, "
            f"SUBSCRIBE, LAUNCH and the launcher's start" + (f"; cold path in this run {cold:.2f} s" if cold else ""))
    return _median_target(sections, "warm (pool hit) LAUNCH -> TASK_RUNNING", f"<= {WARM_RUNNING_TARGET_S} s (median)",
                          ("warm", "to_running"), WARM_RUNNING_TARGET_S, "s", note)


def _idle_rss(sections: dict[str, Section]) -> Target:
    return _median_target(sections, "idle pool guest qemu RSS", f"<= {IDLE_GUEST_RSS_TARGET_MIB:.0f} MiB (median)",
                          ("warm", "idle_guest_qemu_rss"), IDLE_GUEST_RSS_TARGET_MIB, "MiB")


def _running_overhead(sections: dict[str, Section]) -> Target:
    """The executor's own cost to TASK_RUNNING: cold LAUNCH -> TASK_RUNNING minus the floor's
    create -> command started, same kernel, same run."""
    name = "executor overhead to TASK_RUNNING over the floor"
    target = f"<= {RUNNING_OVERHEAD_TARGET_S} s (median cold to_running - median floor command_started)"
    overhead = headline(sections).get("running_overhead_s")
    if overhead is None:
        return Target(name, target, "not measured", None)
    outside = median_or_none(_samples(sections, "coldpath", "outside_task_worker"))
    note = (f"the executor's time outside its task worker (process start, SUBSCRIBE, LAUNCH, updates) "
            f"median {outside or 0:.2f} s")
    return Target(name, target, f"{overhead:+.2f} s", overhead <= RUNNING_OVERHEAD_TARGET_S, note)


def _concurrent(sections: dict[str, Section]) -> Target:
    """N cold launches at once, each task in its own executor (as the agent runs command tasks):
    the time until all are TASK_RUNNING, and no failure."""
    n = CONCURRENT_TASKS
    name = f"{n} concurrent cold launches"
    target = f"all TASK_RUNNING <= {CONCURRENT_RUNNING_TARGET_S:g} s, 0 failures (separate executors)"
    running = median_or_none(_samples(sections, "concurrency", f"separate-executors.n{n}.all_running"))
    failures = _samples(sections, "concurrency", f"separate-executors.n{n}.failures")
    if running is None or not failures:
        return Target(name, target, "not measured", None)
    one = median_or_none(_samples(sections, "concurrency", f"one-executor.n{n}.all_running"))
    note = f"one executor running all {n}: {one:.2f} s" if one is not None else ""
    return Target(name, target, f"{running:.2f} s, {sum(failures):.0f} failures",
                  running <= CONCURRENT_RUNNING_TARGET_S and sum(failures) == 0, note)


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
