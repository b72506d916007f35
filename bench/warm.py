"""Warm path: LAUNCH -> TASK_RUNNING when the task's guest comes from the warm pool.

A private ``vm-isolation-pool serve`` (its own socket and state directory, ``size = 1``, the
shape of the bench's task) runs for the section. Before each repetition the bench waits (not
timed) until the pool holds an idle guest and samples that idle guest's qemu RSS; then a fresh
executor under the local agent runs ``true`` and the times are taken as in :mod:`coldpath`,
from just before the executor is spawned. A repetition whose task did not get a pooled guest
(``pool`` = 0 in the status data) counts as a failure of the warm measurement.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from vm_isolation.config import conf_path, load_settings
from vm_isolation.localagent import LocalAgent
from vm_isolation.pool import pool_running, pool_status_path

from .agentrun import RUNNING, executor_command, first_state, fresh_id, record_of, task_info
from .common import TASK_MEM_MIB, BenchContext, Section, now, repetitions, wait_for
from .footprint import qemu_pid, rss_mib


def run(ctx: BenchContext) -> Section:
    section = Section("warm")
    memory = max(ctx.settings.vm.memory_floor_mib, TASK_MEM_MIB)
    with tempfile.TemporaryDirectory(prefix="vmiso-bpool-", dir="/tmp") as tmp:
        config = Path(tmp) / "mesos.conf"
        config.write_text(conf_path().read_text() + (
            f"\n[pool]\nsize = 1\nshapes = {ctx.settings.images.default}:1:{memory}\n"
            f"socket = {tmp}/pool.sock\nstate_dir = {tmp}/state\ntake_timeout_s = 10\n"))
        settings = load_settings(config)
        log_file = open(ctx.work_dir / "pool.log", "ab")  # noqa: SIM115 - closed below
        pool = subprocess.Popen([str(Path(sys.executable).parent / "vm-isolation-pool"), "serve", "--config",
                                 str(config)], stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL)
        try:
            with LocalAgent(ctx.work_dir / "agent-warm") as agent:
                used: set[str] = set()
                for _ in repetitions(section, ctx.reps):
                    try:
                        _one(ctx, agent, section, config, settings, used)
                    except Exception as exc:  # noqa: BLE001 - a failed repetition is counted, never fatal
                        section.fail(f"warm path failed: {exc}")
        finally:
            subprocess.run([str(Path(sys.executable).parent / "vm-isolation-pool"), "stop", "--config",
                            str(config)], capture_output=True, timeout=ctx.deadline_s)
            pool.wait(ctx.deadline_s)
            log_file.close()
        if pool_running(settings):
            section.fail("the pool did not stop")
    return section


def _idle_guest(status_file: Path, used: set[str]) -> str | None:
    """An idle guest the pool's status lists, other than those already taken (the status is
    rewritten once a second, so it may still list a guest handed over a moment ago as idle)."""
    try:
        status = json.loads(status_file.read_text())
    except (OSError, ValueError):
        return None
    return next((g["name"] for g in status.get("guests", []) if g.get("state") == "idle" and g["name"] not in used),
                None)


def _one(ctx: BenchContext, agent: LocalAgent, section: Section, config: Path, settings: object,
         used: set[str]) -> None:
    status_file = pool_status_path(settings)  # type: ignore[arg-type]
    if not wait_for(lambda: _idle_guest(status_file, used), ctx.deadline_s, "an idle pool guest", interval_s=0.2):
        section.fail("no idle pool guest within the deadline")
        return
    idle = _idle_guest(status_file, used)
    if idle:
        used.add(idle)  # the pool holds one guest (size 1): this task takes it
    pid = qemu_pid(idle) if idle else None
    rss = rss_mib(pid) if pid else None
    if rss is not None:
        section.add("idle_guest_qemu_rss", rss, unit="MiB")
    executor_id, task_id = fresh_id("exec-warm"), fresh_id("warm")
    t0 = now()
    handle = agent.launch_executor(executor_id, executor_command(config))
    agent.launch_task(executor_id, task_info(task_id, "true"))
    final = first_state(agent, task_id, (), t0 + ctx.deadline_s)
    handle.wait(ctx.deadline_s)
    if final is None or final.state != "TASK_FINISHED":
        section.fail(f"{task_id}: {final.state if final else 'no terminal status'}")
        return
    timings = json.loads(final.data or b"{}")
    if timings.get("pool") != 1.0:
        section.fail(f"{task_id}: the task did not get a pooled guest (cold boot)")
        return
    for state in ("TASK_STARTING", RUNNING):
        record = record_of(agent, task_id, state)
        if record is not None:
            section.add(f"to_{state.removeprefix('TASK_').lower()}", record.received_at - t0)
    for phase in ("handover", "adopt", "ssh", "upload", "total"):
        if phase in timings:
            section.add(f"phase.{phase}", float(timings[phase]))
