"""A small pymesos scheduler for the tests: takes offers, launches TaskInfos, records statuses.

Every status update the framework receives is kept with the monotonic time it arrived, and
each launch with the time it was sent, so tests can assert the sequence and report
LAUNCH -> TASK_RUNNING as the framework saw it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from pymesos import MesosSchedulerDriver, Scheduler, encode_data

import vm_isolation.mesos  # noqa: F401  (its import undoes pymesos's import-time SIGINT/logging changes)
from tests.mesos.cluster import MesosCluster
from vm_isolation.waiting import Deadline, poll_until

TERMINAL = frozenset({"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_LOST", "TASK_ERROR", "TASK_DROPPED",
                      "TASK_GONE", "TASK_GONE_BY_OPERATOR", "TASK_UNKNOWN"})


def scalar(name: str, value: float) -> dict[str, Any]:
    return {"name": name, "type": "SCALAR", "scalar": {"value": value}}


def _scalar(resources: list[Any], name: str) -> float:
    return sum(float(r.get("scalar", {}).get("value", 0)) for r in resources if r.get("name") == name)


def _needed(tasks: list[dict[str, Any]]) -> dict[str, float]:
    """cpus and mem of ``tasks`` and of each distinct executor they name."""
    executors = {t["executor"]["executor_id"]["value"]: t["executor"] for t in tasks if "executor" in t}
    everything = [r for t in tasks for r in t.get("resources", [])]
    everything += [r for e in executors.values() for r in e.get("resources", [])]
    return {name: _scalar(everything, name) for name in ("cpus", "mem")}


EXECUTOR = Path(sys.executable).parent / "vm-isolation-executor"


def command_data(command: dict[str, Any]) -> str:
    """TaskInfo.data for generic mode: base64 of a JSON CommandInfo."""
    return str(encode_data(json.dumps(command).encode()))


def vm_task(task_id: str, command: str, *, executor_id: Optional[str] = None, grace_s: Optional[float] = None,
            env: Optional[dict[str, str]] = None, cpus: float = 0.5, **extra: Any) -> dict[str, Any]:
    """A generic-mode TaskInfo in the shape a real master accepts: ``executor`` (this venv's
    vm-isolation-executor) + ``data`` (the CommandInfo), no ``command``; ``env`` goes to the
    executor's environment, ``extra`` into the TaskInfo (health_check, ...)."""
    executor: dict[str, Any] = {
        "executor_id": {"value": executor_id or f"{task_id}-executor"}, "type": "CUSTOM", "name": "vm-isolation",
        "command": {"value": str(EXECUTOR), "shell": False, "arguments": ["vm-isolation-executor"],
                    "environment": {"variables": [{"name": k, "value": v} for k, v in (env or {}).items()]}},
        "resources": [scalar("cpus", 0.1), scalar("mem", 32)]}
    if grace_s is not None:
        executor["shutdown_grace_period"] = {"nanoseconds": int(grace_s * 1e9)}
    return {"name": task_id, "task_id": {"value": task_id}, "resources": [scalar("cpus", cpus), scalar("mem", 128)],
            "executor": executor, "data": command_data({"value": command, "shell": True}), **extra}


@dataclass(frozen=True)
class Update:
    state: str
    reason: str
    message: str
    data: bytes
    source: str
    at: float


class Framework(Scheduler):  # type: ignore[misc]  # pymesos ships no types
    """One registered framework; :meth:`stop` tears it down (no failover)."""

    def __init__(self, master: str, name: str, *, checkpoint: bool = False, capabilities: tuple[str, ...] = (),
                 user: str = "root") -> None:
        self._lock = threading.Lock()
        self._offers: dict[str, Any] = {}
        self._updates: dict[str, list[Update]] = {}
        self._raw: dict[str, list[Any]] = {}
        self.launched_at: dict[str, float] = {}
        self.framework_id = ""
        self.on_update: Optional[Callable[[str, str], None]] = None
        """Called on pymesos's thread with (task id, state) after each update is recorded."""
        info: dict[str, Any] = {"user": user, "name": name, "checkpoint": checkpoint, "failover_timeout": 0.0}
        if capabilities:
            info["capabilities"] = [{"type": c} for c in capabilities]
        self.driver = MesosSchedulerDriver(self, info, master, use_addict=False)
        self._stopped = False

    # --- pymesos callbacks (its IO thread) ---------------------------------------------------
    def registered(self, driver: Any, framework_id: Any, master_info: Any) -> None:
        self.framework_id = str(framework_id["value"])

    def resourceOffers(self, driver: Any, offers: list[Any]) -> None:  # noqa: N802 (pymesos's name)
        with self._lock:
            self._offers.update({str(o["id"]["value"]): o for o in offers})

    def offerRescinded(self, driver: Any, offer_id: Any) -> None:  # noqa: N802
        with self._lock:
            self._offers.pop(str(offer_id["value"]), None)

    def statusUpdate(self, driver: Any, status: Any) -> None:  # noqa: N802
        update = Update(state=str(status["state"]), reason=str(status.get("reason", "")),
                        message=str(status.get("message", "")),
                        data=base64.b64decode(status["data"]) if status.get("data") else b"",
                        source=str(status.get("source", "")), at=time.monotonic())
        task_id = str(status["task_id"]["value"])
        with self._lock:
            self._updates.setdefault(task_id, []).append(update)
            self._raw.setdefault(task_id, []).append(dict(status))
        if self.on_update is not None:
            self.on_update(task_id, update.state)

    # --- the test's side --------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> Framework:
        self.driver.start()
        poll_until(lambda: self.framework_id or None, Deadline.after(timeout_s), what="the framework to register")
        return self

    def launch(self, agent_id: str, tasks: list[dict[str, Any]], timeout_s: float = 30.0) -> None:
        """Launch ``tasks`` (TaskInfo JSON without agent_id) on the next offer from ``agent_id``."""
        need = _needed(tasks)
        offer = poll_until(lambda: self._take_offer(agent_id, need), Deadline.after(timeout_s),
                           what=f"an offer from agent {agent_id} with {need}")
        now = time.monotonic()
        for task in tasks:
            task["agent_id"] = {"value": agent_id}
            self.launched_at[task["task_id"]["value"]] = now
        self.driver.launchTasks([offer["id"]], tasks, filters={"refuse_seconds": 0.5})

    def _take_offer(self, agent_id: str, need: dict[str, float]) -> Optional[Any]:
        """An offer of ``agent_id`` holding ``need``; smaller ones of it are declined, so the
        master offers their resources again together with what is freed meanwhile."""
        small = []
        with self._lock:
            for offer_id, offer in list(self._offers.items()):
                if offer["agent_id"]["value"] != agent_id:
                    continue
                if all(_scalar(offer.get("resources", []), name) >= amount for name, amount in need.items()):
                    return self._offers.pop(offer_id)
                small.append(self._offers.pop(offer_id)["id"])
        if small:
            self.driver.declineOffer(small, filters={"refuse_seconds": 0.1})
        return None

    def kill(self, task_id: str) -> None:
        self.driver.killTask({"value": task_id})

    def raw_updates(self, task_id: str) -> list[Any]:
        """The TaskStatus objects as received (healthy, check_status, ...)."""
        with self._lock:
            return list(self._raw.get(task_id, []))

    def updates(self, task_id: str) -> list[Update]:
        with self._lock:
            return list(self._updates.get(task_id, []))

    def states(self, task_id: str) -> list[str]:
        return [u.state for u in self.updates(task_id)]

    def wait_for_state(self, task_id: str, state: str, timeout_s: float) -> Update:
        """The first ``state`` update; AssertionError at once if the task ended without one."""
        def seen() -> Optional[Update]:
            updates = self.updates(task_id)
            found = next((u for u in updates if u.state == state), None)
            if found is None and state not in TERMINAL:
                ended = next((u for u in updates if u.state in TERMINAL), None)
                assert ended is None, f"task {task_id} ended {ended} before reaching {state}"
            return found
        return poll_until(seen, Deadline.after(timeout_s), what=f"{state} for task {task_id}")

    def wait_for_terminal(self, task_id: str, timeout_s: float) -> Update:
        def seen() -> Optional[Update]:
            return next((u for u in self.updates(task_id) if u.state in TERMINAL), None)
        return poll_until(seen, Deadline.after(timeout_s), what=f"a terminal status for task {task_id}")

    def launch_to(self, task_id: str, state: str) -> float:
        """Seconds from sending the LAUNCH to receiving ``state`` for ``task_id``."""
        return self.wait_for_state(task_id, state, 0).at - self.launched_at[task_id]

    def stop(self) -> None:
        """Driver stop without failover: pymesos sends TEARDOWN, the master removes the framework."""
        if self._stopped:
            return
        self._stopped = True
        self.driver.stop(failover=False)
        self.driver.join()


@dataclass
class MesosExecuteRun:
    """What ``mesos-execute`` printed on stdout, each line with the time it arrived."""

    returncode: int
    lines: list[tuple[float, str]]

    @property
    def stdout(self) -> str:
        return "".join(line for _, line in self.lines)

    @property
    def states(self) -> list[str]:
        return [line.split()[3] for _, line in self.lines if line.startswith("Received status update")]

    def submitted_to(self, state: str) -> float:
        """Seconds from its 'Submitted task' line to its line for ``state``."""
        submitted = next(at for at, line in self.lines if line.startswith("Submitted task"))
        return next(at for at, line in self.lines if line.startswith(f"Received status update {state} ")) - submitted


def run_mesos_execute(cluster: MesosCluster, *flags: str, timeout_s: float = 180.0) -> MesosExecuteRun:
    """Run the stock CLI framework against the cluster's master until it exits."""
    argv = [str(cluster.home.execute), f"--master={cluster.master_address}", *flags]
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        assert proc.stdout is not None
        reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line) for line in proc.stdout or ()),
                                  daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(10)
    return MesosExecuteRun(code, lines)
