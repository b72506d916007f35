"""`make soak` (not in CI): many launches with random KILLs, executor SIGKILLs and a libvirtd
restart, then the reaper; prints the count of each terminal status and of everything left.

    venv/bin/python -m bench.soak [--launches 100] [--parallel 4] [--seed N]
    venv/bin/python -m bench.soak --mesos MESOS_HOME [...]    through a real master and agent

Targets: 0 leftovers (domains, overlays, keys, leases), 0 tasks without a terminal status.
Each task gets its own executor; each is, at random, left to finish (70 %), killed once
RUNNING (15 %), or has its executor SIGKILLed once RUNNING (15 %; the agent then reports
TASK_FAILED "Executor terminated" and the reaper must remove the orphaned guest). Halfway,
libvirtd is restarted under the running guests.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vm_isolation.config import load_settings
from vm_isolation.hypervisor import LibvirtHypervisor
from vm_isolation.journal import journals_under
from vm_isolation.leases import Leases
from vm_isolation.localagent import TERMINAL_STATES, LocalAgent
from vm_isolation.reaper import reap

from .agentrun import executor_command, task_info
from .common import snapshot_leftovers

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 300.0
ACTIONS = (("finish", 0.70), ("kill", 0.15), ("sigkill-executor", 0.15))


def one(agent: LocalAgent, index: int, action: str, rng: random.Random) -> tuple[str, str]:
    """Launch one task with one action; the task's terminal state ('NONE' if none came)
    ('STATE: message' for a task left to finish that did not)."""
    executor_id, task_id = f"soak-{index}-e", f"bench-soak-{index}"
    handle = agent.launch_executor(executor_id, executor_command())
    agent.launch_task(executor_id, task_info(task_id, f"sleep {rng.randint(1, 6)}"))
    try:
        if action != "finish":
            agent.wait_for_state(task_id, {"TASK_RUNNING", *TERMINAL_STATES}, DEADLINE_S)
            if action == "kill":
                agent.kill_task(executor_id, task_id, grace_period_s=1.0)
            elif handle.returncode is None:
                os.kill(handle.pid, signal.SIGKILL)
        record = agent.wait_for_terminal(task_id, DEADLINE_S)
        final = record.state
        if action == "finish" and final != "TASK_FINISHED":
            print(f"soak: {task_id} {final} {record.reason}: {(record.message or '')[:300]}", file=sys.stderr)
    except TimeoutError:
        final = "NONE"
    try:
        handle.wait(120)
    except TimeoutError:
        os.kill(handle.pid, signal.SIGKILL)
    return action, final


def restart_libvirtd() -> None:
    pid = int(Path("/run/libvirtd.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # a script's wait for a daemon to go, not test synchronisation
    subprocess.run([str(REPO / "scripts" / "host-setup.sh")], check=True, capture_output=True)


def soak_leases() -> list[dict[str, Any]]:
    text = Path("/var/lib/libvirt/dnsmasq/virbr0.status").read_text()
    return [e for e in json.loads(text or "[]") if str(e.get("hostname", "")).startswith("vmiso-bench-soak-")]


def run_all(work: Path, plan: list[str], parallel: int, rng: random.Random) -> list[tuple[str, str]]:
    with LocalAgent(work) as agent, ThreadPoolExecutor(parallel) as pool:
        futures = [pool.submit(one, agent, i, action, random.Random(rng.random())) for i, action in enumerate(plan)]
        futures[len(futures) // 2].result()
        print("soak: restarting libvirtd under running guests", file=sys.stderr, flush=True)
        restart_libvirtd()
        return [f.result() for f in futures]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak")
    p.add_argument("--launches", type=int, default=100)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--mesos", type=Path, metavar="MESOS_HOME",
                   help="soak through a real Mesos master and agent from this build (bench/soak_mesos.py)")
    p.add_argument("--agent-restarts", type=int, default=3, help="--mesos: agent restarts under running tasks")
    args = p.parse_args(argv)
    if args.mesos is not None:
        from .soak_mesos import main as soak_mesos

        return soak_mesos(args.mesos, args.launches, args.parallel, args.agent_restarts, args.seed)
    rng = random.Random(args.seed)
    settings = load_settings()
    hv = LibvirtHypervisor(settings.libvirt.uri)
    before = snapshot_leftovers(settings, hv)
    names = [name for name, _ in ACTIONS]
    plan = [rng.choices(names, [weight for _, weight in ACTIONS])[0] for _ in range(args.launches)]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vm-isolation-soak-", dir="/var/tmp") as work:
        results = run_all(Path(work), plan, args.parallel, rng)
        # The agent's work dir holds the sandboxes, and the executors' journals in them.
        report = reap(settings, hv, Leases(hv), orphan_min_age_s=0, journals=journals_under(Path(work)))
    after = snapshot_leftovers(settings, hv)
    leftovers = {k: sorted(after[k] - before[k]) for k in after}
    leases = soak_leases()
    deadline = time.monotonic() + 15  # dnsmasq handles dhcp_release asynchronously
    while leases and time.monotonic() < deadline:
        time.sleep(0.5)
        leases = soak_leases()
    summary: dict[str, Any] = {
        "launches": args.launches, "seed": args.seed, "wall_s": round(time.monotonic() - started, 1),
        "statuses": dict(collections.Counter(final for _, final in results)),
        "by_action": {a: dict(collections.Counter(f for act, f in results if act == a)) for a in names},
        "reaper_removed": len(report.removed), "reaper_errors": report.errors,
        "leftovers": leftovers, "leftover_leases": leases,
        "without_terminal_status": sum(1 for _, final in results if final == "NONE"),
    }
    print(json.dumps(summary, indent=1))
    clean = not any(leftovers.values()) and not leases and summary["without_terminal_status"] == 0
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
