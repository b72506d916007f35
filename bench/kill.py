"""Kill latency: KILL of a running ``sleep 600`` -> TASK_KILLED, and -> its domain gone."""

from __future__ import annotations

from typing import Optional

from vm_isolation.hypervisor import LibvirtHypervisor
from vm_isolation.localagent import LocalAgent

from .agentrun import RUNNING, executor_command, first_state, fresh_id, task_info
from .common import BenchContext, Section, now, repetitions, wait_for


def run(ctx: BenchContext, grace_s: float) -> Section:
    section = Section("kill")
    section.extra["grace_s"] = grace_s
    with LocalAgent(ctx.work_dir / "agent-kill") as agent:
        for _ in repetitions(section, ctx.reps):
            try:
                _one(ctx, agent, section, grace_s)
            except Exception as exc:  # noqa: BLE001 - counted, never fatal
                section.fail(f"kill failed: {exc}")
    return section


def domain_of(hv: LibvirtHypervisor, task_id: str) -> Optional[str]:
    return next((d.name for d in hv.owned_domains() if d.owner.task_id == task_id), None)


def _one(ctx: BenchContext, agent: LocalAgent, section: Section, grace_s: float) -> None:
    executor_id, task_id = fresh_id("exec-kill"), fresh_id("sleeper")
    handle = agent.launch_executor(executor_id, executor_command())
    agent.launch_task(executor_id, task_info(task_id, "sleep 600"))
    running = first_state(agent, task_id, (RUNNING,), now() + ctx.deadline_s)
    domain = domain_of(ctx.hypervisor, task_id)
    if running is None or running.state != RUNNING or domain is None:
        section.fail(f"{task_id} never ran ({running.state if running else 'no status'})")
        agent.kill_task(executor_id, task_id)
        handle.wait(ctx.deadline_s)
        return
    t_kill = now()
    agent.kill_task(executor_id, task_id, grace_period_s=grace_s)
    final = first_state(agent, task_id, (), t_kill + grace_s + ctx.deadline_s)
    gone = wait_for(lambda: True if ctx.hypervisor.state(domain) is None else None, ctx.deadline_s,
                    f"domain {domain} to be gone")
    t_gone = now()
    handle.wait(ctx.deadline_s)
    if final is None or final.state != "TASK_KILLED":
        section.fail(f"{task_id}: {final.state if final else 'no terminal status'} after KILL")
    else:
        section.add("kill_to_killed", final.received_at - t_kill)
    if gone:
        section.add("kill_to_domain_gone", t_gone - t_kill)
    else:
        section.fail(f"domain {domain} still there after KILL")
