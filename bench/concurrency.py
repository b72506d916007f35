"""Concurrency: N tasks launched at once, in one executor or in N executors.

For each N: time from launch until every task is RUNNING and until every one is FINISHED,
and how many did not finish. Failures are counted, never raised.
"""

from __future__ import annotations

from vm_isolation.localagent import ExecutorHandle, LocalAgent

from .agentrun import RUNNING, executor_command, first_state, fresh_id, task_info
from .common import BenchContext, Section, now, repetitions

MODES = ("one-executor", "separate-executors")


def run(ctx: BenchContext, counts: list[int], modes: list[str], reps: int) -> Section:
    section = Section("concurrency")
    section.extra["counts"], section.extra["modes"], section.extra["reps"] = counts, modes, reps
    with LocalAgent(ctx.work_dir / "agent-concurrency") as agent:
        for mode in modes:
            for n in counts:
                for _ in repetitions(section, reps, f"{mode} n={n}"):
                    try:
                        _one(ctx, agent, section, mode, n)
                    except Exception as exc:  # noqa: BLE001 - counted, never fatal
                        section.fail(f"{mode} n={n}: {exc}")
    return section


def _one(ctx: BenchContext, agent: LocalAgent, section: Section, mode: str, n: int) -> None:
    task_ids = [fresh_id(f"conc{n}-{i}") for i in range(n)]
    deadline_at = now() + ctx.deadline_s * max(1, n // 2)
    t0 = now()
    handles = _launch(agent, mode, task_ids)
    running = [first_state(agent, t, (RUNNING,), deadline_at) for t in task_ids]
    finals = [first_state(agent, t, (), deadline_at) for t in task_ids]
    for handle in handles:
        handle.wait(max(60.0, deadline_at - now()))
    key = f"{mode}.n{n}"
    failed = [t for t, f in zip(task_ids, finals, strict=True) if f is None or f.state != "TASK_FINISHED"]
    section.add(f"{key}.failures", float(len(failed)), unit="tasks")
    for t in failed:
        section.fail(f"{key}: task {t} did not finish")
    if all(r is not None and r.state == RUNNING for r in running):
        section.add(f"{key}.all_running", max(r.received_at for r in running if r) - t0)
    if not failed:
        section.add(f"{key}.all_finished", max(f.received_at for f in finals if f) - t0)


def _launch(agent: LocalAgent, mode: str, task_ids: list[str]) -> list[ExecutorHandle]:
    if mode == "one-executor":
        executor_id = fresh_id("exec-conc")
        handle = agent.launch_executor(executor_id, executor_command())
        for task_id in task_ids:
            agent.launch_task(executor_id, task_info(task_id, "true"))
        return [handle]
    handles = []
    for task_id in task_ids:
        executor_id = fresh_id("exec-conc")
        handles.append(agent.launch_executor(executor_id, executor_command()))
        agent.launch_task(executor_id, task_info(task_id, "true"))
    return handles
