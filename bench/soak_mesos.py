"""`make soak SOAK_ARGS='--mesos ../shared/mesos'` (not in CI): the soak through a real Mesos
master and agent instead of the local stand-in.

    venv/bin/python -m bench.soak --mesos MESOS_HOME [--launches 40] [--parallel 3]
                                  [--agent-restarts 3] [--seed N]

A checkpointing pymesos framework (tests/mesos/framework.py) launches generic-mode tasks, each in
its own executor; each is, at random, left to finish (70 %), killed once RUNNING (15 %), or has
its executor SIGKILLed once RUNNING (15 %: what the agent's destroy does; the agent reports
TASK_FAILED and the host's reaper watcher must end the guest by itself). Meanwhile the agent is
SIGKILLed and restarted (--recover=reconnect) ``--agent-restarts`` times under running tasks.
Nobody runs the reaper by hand. At the end: every status counted, re-registration timeouts,
how long each SIGKILLed executor's guest took to disappear, and what is left (target: 0
leftovers, 0 tasks without a terminal status).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tests.mesos.cluster import Agent, MesosCluster, MesosHome
from tests.mesos.framework import TERMINAL, Framework, vm_task
from vm_isolation.config import load_settings
from vm_isolation.hypervisor import LibvirtHypervisor
from vm_isolation.ids import name_prefix
from vm_isolation.reaperwatch import reaper_watch_running
from vm_isolation.waiting import Deadline, WaitTimeout, poll_until

from .common import new_leftovers, snapshot_leftovers

ACTIONS = (("finish", 0.70), ("kill", 0.15), ("sigkill-executor", 0.15))
DEADLINE_S = 300.0
TICK_S = 0.2


@dataclass
class Launch:
    index: int
    action: str
    task_id: str
    launched_at: float = 0.0
    acted: bool = False
    killed_at: Optional[float] = None
    guest_gone_s: Optional[float] = None
    final: str = ""
    reasons: list[str] = field(default_factory=list)
    detail: str = ""
    """For an end the action did not ask for: source, reason and message of the terminal status."""


def _guests(hv: LibvirtHypervisor, task_id: str) -> list[str]:
    return [d.name for d in hv.owned_domains() if d.name.startswith(name_prefix(task_id))]


def run(home: Path, launches: int, parallel: int, agent_restarts: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    settings = load_settings()
    if not reaper_watch_running(settings):
        raise SystemExit("soak --mesos: no vm-isolation-reap --watch runs on this host; start it with "
                         "`venv/bin/python -m vm_isolation.hostsetup` (make setup does)")
    hv = LibvirtHypervisor(settings.libvirt.uri)
    before = snapshot_leftovers(settings, hv)
    names = [name for name, _ in ACTIONS]
    plan = [Launch(i, rng.choices(names, [w for _, w in ACTIONS])[0], f"bench-soak-m{seed % 10000}-{i}")
            for i in range(launches)]
    restart_after = {round((k + 1) * launches / (agent_restarts + 1)) for k in range(agent_restarts)}
    restarts_done = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vm-isolation-soak-mesos-", dir="/var/tmp") as work:
        cluster = MesosCluster(MesosHome(home.resolve()), Path(work))
        try:
            cluster.start_master()
            agent = cluster.start_agent(resources=f"cpus:{parallel * 2};mem:{parallel * 1024}")
            fw = Framework(cluster.master_address, f"vmiso-soak-{seed}", checkpoint=True).start()
            pending, live = list(plan), list[Launch]()
            while pending or live:
                while pending and len(live) < parallel:
                    item = pending.pop(0)
                    command = f"sleep {rng.randint(1, 5)}" if item.action == "finish" else "sleep 600"
                    fw.launch(agent.id, [vm_task(item.task_id, command)], timeout_s=120)
                    item.launched_at = time.monotonic()
                    live.append(item)
                    if item.index in restart_after and live:
                        _restart_under(cluster, agent, fw, live)
                        restarts_done += 1
                for item in list(live):
                    if _step(item, agent, fw, hv, rng):
                        live.remove(item)
                time.sleep(TICK_S)  # the soak's pacing between polls of many tasks, not test synchronisation
            fw.stop()
        finally:
            cluster.stop()
    leftovers: dict[str, list[str]] = {}
    try:
        poll_until(lambda: True if not new_leftovers(before, snapshot_leftovers(settings, hv)) else None,
                   Deadline.after(30), what="nothing of the soak left")
    except WaitTimeout:
        leftovers = new_leftovers(before, snapshot_leftovers(settings, hv))
    gone = [i.guest_gone_s for i in plan if i.guest_gone_s is not None]
    return {
        "mode": "mesos", "launches": launches, "parallel": parallel, "seed": seed,
        "wall_s": round(time.monotonic() - started, 1), "agent_restarts": restarts_done,
        "statuses": dict(collections.Counter(i.final for i in plan)),
        "by_action": {a: dict(collections.Counter(i.final for i in plan if i.action == a)) for a in names},
        "reregistration_timeouts": sum(1 for i in plan for r in i.reasons if "REREGISTRATION" in r),
        "sigkill_guest_gone_s": ({"n": len(gone), "min": round(min(gone), 2),
                                  "median": round(statistics.median(gone), 2), "max": round(max(gone), 2)}
                                 if gone else {"n": 0}),
        "sigkill_guest_never_gone": sum(1 for i in plan if i.killed_at is not None and i.guest_gone_s is None),
        "leftovers": leftovers, "killed_stray_executors": cluster.killed_executors,
        "without_terminal_status": sum(1 for i in plan if not i.final),
        "unexpected_ends": [i.detail for i in plan if i.detail],
    }


def _step(item: Launch, agent: Agent, fw: Framework, hv: LibvirtHypervisor, rng: random.Random) -> bool:
    """Advance one launch; True once it is over (terminal, and a SIGKILLed one's guest gone)."""
    updates = fw.updates(item.task_id)
    item.reasons = [u.reason for u in updates if u.reason]
    end = next((u for u in updates if u.state in TERMINAL), None)
    terminal = end.state if end is not None else ""
    expected = {"finish": "TASK_FINISHED", "kill": "TASK_KILLED", "sigkill-executor": "TASK_FAILED"}[item.action]
    if end is not None and end.state != expected:
        item.detail = f"{item.task_id} ({item.action}): {end.state} {end.source} {end.reason}: {end.message[:200]}"
    running = any(u.state == "TASK_RUNNING" for u in updates)
    if not item.acted and running and not terminal and item.action != "finish":
        item.acted = True
        if item.action == "kill":
            fw.kill(item.task_id)
        else:
            pid = agent.executor_pid(f"{item.task_id}-executor")
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                item.killed_at = time.monotonic()
    if item.killed_at is not None and item.guest_gone_s is None and not _guests(hv, item.task_id):
        item.guest_gone_s = time.monotonic() - item.killed_at
    if terminal:
        item.final = terminal
        if item.killed_at is None or item.guest_gone_s is not None:
            return True
    return time.monotonic() - item.launched_at > DEADLINE_S


def _restart_under(cluster: MesosCluster, agent: Agent, fw: Framework, live: list[Launch]) -> None:
    """Restart the agent under running tasks, once every task in flight reached its executor
    (RUNNING or ended): a LAUNCH still on its way when the agent dies is never checkpointed, and
    Mesos rightly reports it TASK_LOST ("task unknown to the agent"), which says nothing of us."""
    def settled() -> Optional[bool]:
        states = [set(fw.states(i.task_id)) for i in live]
        return True if all(s & ({"TASK_RUNNING"} | TERMINAL) for s in states) else None

    with contextlib.suppress(WaitTimeout):
        poll_until(settled, Deadline.after(120), what="the tasks in flight to reach their executors")
    print(f"soak: restarting the agent under {len(live)} task(s)", flush=True)
    cluster.restart_agent(agent)


def main(home: Path, launches: int, parallel: int, agent_restarts: int, seed: int) -> int:
    summary = run(home, launches, parallel, agent_restarts, seed)
    print(json.dumps(summary, indent=1))
    clean = (not summary["leftovers"] and summary["without_terminal_status"] == 0
             and summary["sigkill_guest_never_gone"] == 0)
    return 0 if clean else 1
