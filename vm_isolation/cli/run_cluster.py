"""``vm-isolation-run --master HOST:PORT``: one task through a real Mesos master, in a guest
on a VM agent (the cluster counterpart of the local mode in :mod:`.run`).

A short-lived framework (no checkpointing, failover timeout 0) takes the first offer of an
agent with the required attributes that fits, launches the task in generic mode, prints each
status, fetches the task's stdout from the agent's sandbox (``/files/read``) and tears itself
down. Exit status as in local mode.
"""

from __future__ import annotations

import argparse
import json
import queue
import time
import urllib.parse
import urllib.request
import uuid
from typing import Any, Optional

from ..scheduler.mesos_driver import MesosDriver
from ..scheduler.model import InvalidSpec, parse_group
from ..scheduler.oneshot import OneShot
from ..scheduler.placement import Need, parse_constraints
from ..scheduler.taskinfo import ExecutorCommand, task_info
from ..taskinfo import task_dir_name
from .common import task_exit_status

HTTP_TIMEOUT_S = 10.0
KILL_WAIT_S = 60.0


def run_on_master(args: argparse.Namespace, env: dict[str, str], executor: ExecutorCommand,
                  say: Any) -> int:
    try:
        spec = parse_group({"name": "run", "command": args.command, "cpus": args.cpus, "mem": args.mem,
                            "image": args.image or "busybox", "env": env})
        required = parse_constraints(args.attribute or ["vt_enabled:1"])
    except (InvalidSpec, ValueError) as exc:
        say(str(exc))
        return 2
    task_id = f"vm-isolation-run-{uuid.uuid4().hex[:8]}"
    task = task_info(spec, 0, task_id, "", executor, dict(spec.env))
    task["name"] = "vm-isolation-run"
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    info = {"user": "root", "name": "vm-isolation-run", "checkpoint": False, "failover_timeout": 0.0}
    driver = MesosDriver(args.master, info, lambda kind, payload: events.put((kind, payload)))
    run = OneShot(driver, task, Need(task_id, "run", spec.cpus, spec.mem), required)
    framework_id = ""
    t0 = time.monotonic()
    driver.start()
    say(f"task {task_id}: waiting for an offer from an agent with {required}")
    killed_at: Optional[float] = None
    try:
        while run.final is None:
            now = time.monotonic()
            if killed_at is None and now - t0 > args.timeout:
                if run.agent_id is None:
                    say(f"no usable offer within {args.timeout:g} s (is an agent with {required} registered "
                        "and does it have the resources?)")
                    break
                say(f"no terminal status within {args.timeout:g} s: killing the task")
                driver.kill(task_id, run.agent_id or "")
                killed_at = now
            if killed_at is not None and now - killed_at > KILL_WAIT_S:
                break
            try:
                kind, payload = events.get(timeout=0.5)
            except queue.Empty:
                continue
            if kind == "registered":
                framework_id = str(payload)
            elif kind == "offers":
                had = run.agent_id
                run.on_offers(payload)
                if had is None and run.agent_id is not None:
                    say(f"launched on agent {run.agent_id} ({run.hostname})")
            elif kind == "status":
                run.on_status(payload)
                if payload.task_id == task_id:
                    detail = f" {payload.reason}" if payload.reason else ""
                    say(f"[{time.monotonic() - t0:7.2f} s] {payload.state}{detail}: {payload.message}")
            elif kind == "error":
                say(f"the master refused the framework: {payload}")
                return 1
    finally:
        if run.final is not None and run.agent_id and framework_id and "://" not in args.master:
            _print_stdout(args.master, framework_id, run.agent_id, task_id, say)
        driver.stop(teardown=True)
    return 124 if run.final is None else task_exit_status(run.final.state, run.final.data)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as resp:
        return json.loads(resp.read())


def _print_stdout(master: str, framework_id: str, agent_id: str, task_id: str, say: Any) -> None:
    """The task's stdout from the agent's sandbox (best effort: says why when it cannot)."""
    try:
        slaves = _get(f"http://{master}/master/state")["slaves"]
        pid = next(str(s["pid"]) for s in slaves if s["id"] == agent_id)
        agent = f"http://{pid.partition('@')[2]}"
        state = _get(f"{agent}/state")
        frameworks = state.get("frameworks", []) + state.get("completed_frameworks", [])
        executors = [e for f in frameworks if f.get("id") == framework_id
                     for e in f.get("executors", []) + f.get("completed_executors", [])]
        directory = next(str(e["directory"]) for e in executors if e.get("id") == f"{task_id}.executor")
        query = urllib.parse.urlencode({"path": f"{directory}/tasks/{task_dir_name(task_id)}/stdout",
                                        "offset": 0, "length": 1024 * 1024})
        out = str(_get(f"{agent}/files/read?{query}")["data"])
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        say(f"could not fetch the task's stdout from the agent: {exc!r}")
        return
    say(f"task stdout ({len(out)} characters):")
    print(out, end="", flush=True)


