"""Executor cold path: a fresh executor under the local agent, one task running ``true``.

Times are from just before the agent spawns the executor (which must start, subscribe and
receive the LAUNCH) to the agent accepting TASK_STARTING, TASK_RUNNING and TASK_FINISHED;
the per-phase breakdown is the JSON the executor puts in the terminal status's data.
"""

from __future__ import annotations

import json

from vm_isolation.localagent import LocalAgent

from .agentrun import RUNNING, executor_command, first_state, fresh_id, record_of, task_info
from .common import BenchContext, Section, now, repetitions

STATES = ("TASK_STARTING", RUNNING, "TASK_FINISHED")


def run(ctx: BenchContext) -> Section:
    section = Section("coldpath")
    with LocalAgent(ctx.work_dir / "agent-coldpath") as agent:
        for _ in repetitions(section, ctx.reps):
            try:
                _one(ctx, agent, section)
            except Exception as exc:  # noqa: BLE001 - a failed repetition is counted, never fatal
                section.fail(f"cold path failed: {exc}")
    return section


def _one(ctx: BenchContext, agent: LocalAgent, section: Section) -> None:
    executor_id, task_id = fresh_id("exec-cold"), fresh_id("cold")
    t0 = now()
    handle = agent.launch_executor(executor_id, executor_command())
    agent.launch_task(executor_id, task_info(task_id, "true"))
    final = first_state(agent, task_id, (), t0 + ctx.deadline_s)
    handle.wait(ctx.deadline_s)  # the executor exits once its terminal update is acknowledged
    if final is None or final.state != "TASK_FINISHED":
        section.fail(f"{task_id}: {final.state if final else 'no terminal status'} "
                     f"{final.message if final else ''}")
        return
    for state in STATES:
        record = record_of(agent, task_id, state)
        if record is not None:
            section.add(f"to_{state.removeprefix('TASK_').lower()}", record.received_at - t0)
    timings = json.loads(final.data or b"{}")
    for phase, seconds in timings.items():
        if phase != "exit_status":
            section.add(f"phase.{phase}", float(seconds))
    if "total" in timings:
        # Executor start, SUBSCRIBE, LAUNCH delivery and status round trips: time not spent on the guest.
        section.add("outside_task_worker", final.received_at - t0 - float(timings["total"]))
