"""The agent's bookkeeping for one executor run (the ``Executor`` struct of src/slave/slave.hpp).

A run owns its state (REGISTERING -> RUNNING -> TERMINATING -> TERMINATED), its current
stream, the tasks queued before it subscribed (kept in arrival order, task groups
remembered as groups) and the tasks it was sent, with each one's latest state. It holds no
policy: :mod:`.core` decides what happens; this module only records it.
"""

from __future__ import annotations

import enum
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .records import TERMINAL_STATES
from .stream import EventStream


class RunState(enum.Enum):
    REGISTERING = "REGISTERING"
    RUNNING = "RUNNING"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"


@dataclass(frozen=True)
class Termination:
    """Why the agent is destroying a run (``pendingTermination``): the tasks' final status."""

    state: str
    reason: str
    message: str


@dataclass
class ExecutorRun:
    """One launch of one executor id; replaced by the next launch once TERMINATED."""

    executor_id: str
    container_id: str
    info: dict[str, Any]
    """The ExecutorInfo sent in SUBSCRIBED and put into each TaskInfo."""
    sandbox: Path
    grace_period_s: float
    state: RunState = RunState.REGISTERING
    stream: Optional[EventStream] = None
    process: Optional[subprocess.Popen[bytes]] = None
    queued: dict[str, dict[str, Any]] = field(default_factory=dict)
    """TaskInfo by task id, in arrival order, not yet sent."""
    groups: list[list[str]] = field(default_factory=list)
    """Task ids of each queued task group."""
    launched: dict[str, str] = field(default_factory=dict)
    """Latest state by task id of every task sent to the executor."""
    ever_queued: bool = False
    pending_termination: Optional[Termination] = None
    returncode: Optional[int] = None
    terminated: threading.Event = field(default_factory=threading.Event)
    """Set once the agent has handled the process's exit (updates sent, stream closed)."""

    @property
    def ever_sent_task(self) -> bool:
        return bool(self.launched)

    def owns(self, task_id: str) -> bool:
        return task_id in self.queued or task_id in self.launched

    def queue(self, tasks: list[dict[str, Any]], as_group: bool) -> None:
        for task in tasks:
            self.queued[task["task_id"]["value"]] = task
        if as_group:
            self.groups.append([t["task_id"]["value"] for t in tasks])
        self.ever_queued = True

    def group_of(self, task_id: str) -> Optional[list[str]]:
        return next((g for g in self.groups if task_id in g), None)

    def dequeue(self, task_id: str) -> None:
        """Forget a queued task (delivered, or killed before delivery), and its group entry."""
        self.queued.pop(task_id, None)
        self.groups = [g for g in self.groups if any(t in self.queued for t in g)]

    def take_queue(self) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
        """Empty the queue into (single tasks, task groups), singles first, as ``___run`` sends them."""
        grouped = {t for g in self.groups for t in g}
        singles = [task for tid, task in self.queued.items() if tid not in grouped]
        groups = [[self.queued[t] for t in g] for g in self.groups]
        for task in singles + [t for g in groups for t in g]:
            self.launched[task["task_id"]["value"]] = "TASK_STAGING"
        self.queued.clear()
        self.groups.clear()
        return singles, groups

    def mark_launched(self, tasks: list[dict[str, Any]]) -> None:
        for task in tasks:
            self.launched[task["task_id"]["value"]] = "TASK_STAGING"

    def update_task_state(self, task_id: str, state: str) -> None:
        """Record a task's latest state; a terminal task keeps its terminal state."""
        if self.launched.get(task_id) in TERMINAL_STATES:
            return
        if task_id in self.launched:
            self.launched[task_id] = state
        elif task_id in self.queued and state in TERMINAL_STATES:
            self.dequeue(task_id)

    def unfinished_tasks(self) -> list[str]:
        """Launched tasks not yet terminal, then queued tasks: those an exit must fail."""
        launched = [t for t, s in self.launched.items() if s not in TERMINAL_STATES]
        return launched + list(self.queued)
