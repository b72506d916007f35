"""Executor cold path: a fresh executor under the local agent, one task running ``true``.

Times are from just before the agent spawns the executor (which must start, subscribe and
receive the LAUNCH) to the agent accepting TASK_STARTING, TASK_RUNNING and TASK_FINISHED;
the per-phase breakdown is the JSON the executor puts in the terminal status's data. Each
repetition runs the configured kernel, then the comparison kernel (:mod:`bench.kernels`: the
executor reads the bench's config copy and the task is labelled with its comparison image).
"""

from __future__ import annotations

import json

from vm_isolation.localagent import LocalAgent

from .agentrun import RUNNING, executor_command, first_state, fresh_id, record_of, task_info
from .common import BenchContext, Section, now, repetitions
from .kernels import KernelRun, runs

STATES = ("TASK_STARTING", RUNNING, "TASK_FINISHED")


def run(ctx: BenchContext) -> Section:
    section = Section("coldpath")
    kernels = runs(ctx.settings, ctx.work_dir, ctx.compare_kernel)
    section.extra["kernels"] = {k.prefix: {"kind": k.kernel.kind, "path": str(k.kernel.path)} for k in kernels}
    with LocalAgent(ctx.work_dir / "agent-coldpath") as agent:
        for _ in repetitions(section, ctx.reps):
            for kernel in kernels:
                try:
                    _one(ctx, agent, section, kernel)
                except Exception as exc:  # noqa: BLE001 - a failed repetition is counted, never fatal
                    section.fail(f"{kernel.kernel.kind} kernel: cold path failed: {exc}")
    return section


def _one(ctx: BenchContext, agent: LocalAgent, section: Section, kernel: KernelRun) -> None:
    executor_id, task_id = fresh_id("exec-cold"), fresh_id("cold")
    t0 = now()
    handle = agent.launch_executor(executor_id, executor_command(kernel.config))
    agent.launch_task(executor_id, task_info(task_id, "true", image=kernel.image))
    final = first_state(agent, task_id, (), t0 + ctx.deadline_s)
    handle.wait(ctx.deadline_s)  # the executor exits once its terminal update is acknowledged
    if final is None or final.state != "TASK_FINISHED":
        section.fail(f"{task_id} ({kernel.kernel.kind} kernel): {final.state if final else 'no terminal status'} "
                     f"{final.message if final else ''}")
        return
    p = kernel.prefix
    for state in STATES:
        record = record_of(agent, task_id, state)
        if record is not None:
            section.add(f"{p}to_{state.removeprefix('TASK_').lower()}", record.received_at - t0)
    timings = json.loads(final.data or b"{}")
    for phase, seconds in timings.items():
        if phase != "exit_status":
            section.add(f"{p}phase.{phase}", float(seconds))
    if "total" in timings:
        # Executor start, SUBSCRIBE, LAUNCH delivery and status round trips: time not spent on the guest.
        section.add(f"{p}outside_task_worker", final.received_at - t0 - float(timings["total"]))
