"""Footprint: the executor's RSS while it runs 1 and 4 tasks, and each guest's qemu RSS on the host."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from vm_isolation.localagent import LocalAgent

from .agentrun import RUNNING, executor_command, first_state, fresh_id, task_info
from .common import BenchContext, Section, now, repetitions
from .kill import domain_of

QEMU_PID_DIR = Path("/run/libvirt/qemu")


def rss_mib(pid: int) -> Optional[float]:
    """VmRSS of a process in MiB, from /proc/<pid>/status (None if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


def qemu_pid(domain: str) -> Optional[int]:
    try:
        return int((QEMU_PID_DIR / f"{domain}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def run(ctx: BenchContext, counts: list[int], reps: int) -> Section:
    section = Section("footprint")
    with LocalAgent(ctx.work_dir / "agent-footprint") as agent:
        for n in counts:
            for _ in repetitions(section, reps, f"n={n}"):
                try:
                    _one(ctx, agent, section, n)
                except Exception as exc:  # noqa: BLE001 - counted, never fatal
                    section.fail(f"n={n}: {exc}")
    return section


def _one(ctx: BenchContext, agent: LocalAgent, section: Section, n: int) -> None:
    executor_id = fresh_id("exec-mem")
    task_ids = [fresh_id(f"mem{n}-{i}") for i in range(n)]
    handle = agent.launch_executor(executor_id, executor_command())
    for task_id in task_ids:
        agent.launch_task(executor_id, task_info(task_id, "sleep 600"))
    deadline_at = now() + ctx.deadline_s * max(1, n // 2)
    try:
        running = [first_state(agent, t, (RUNNING,), deadline_at) for t in task_ids]
        if all(r is not None and r.state == RUNNING for r in running):
            _sample(ctx, section, handle.pid, task_ids, n)
        else:
            section.fail(f"n={n}: not every task reached TASK_RUNNING")
    finally:
        for task_id in task_ids:
            agent.kill_task(executor_id, task_id, grace_period_s=1.0)
        for task_id in task_ids:
            first_state(agent, task_id, (), now() + ctx.deadline_s)
        handle.wait(ctx.deadline_s)


def _sample(ctx: BenchContext, section: Section, executor_pid: int, task_ids: list[str], n: int) -> None:
    executor = rss_mib(executor_pid)
    if executor is not None:
        section.add(f"executor_rss.n{n}", executor, unit="MiB")
    for task_id in task_ids:
        domain = domain_of(ctx.hypervisor, task_id)
        pid = qemu_pid(domain) if domain else None
        guest = rss_mib(pid) if pid else None
        if guest is not None:
            section.add("qemu_rss_per_guest", guest, unit="MiB")
