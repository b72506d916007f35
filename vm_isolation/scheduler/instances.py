"""One instance's state machine: its phase, its one task, its back-off.

An instance (``web-3``) has at most one task at a time. Its phases, in the order it normally
goes through them::

    PENDING -> LAUNCHING -> STARTING -> RUNNING
       ^                                  |  (terminal status: lost, failed, finished ...)
       +----------- back-off -------------+
    any live phase -> KILLING -> (removed)          (deleted, or scaled away)
    RECONCILING: a recorded task of unknown state (after a restart or re-registration),
                 until the master answers the explicit reconciliation; never relaunched
                 before that answer, so one instance never has two tasks.

The values (:class:`TaskStatus`, :class:`Timings`) are frozen; :class:`Instance` is the
mutable per-instance state that :class:`~vm_isolation.scheduler.core.InstanceScheduler`
owns and changes on its single thread.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass
from typing import Mapping, Optional

from .store import TaskRecord

TERMINAL_STATES = frozenset({"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_LOST", "TASK_ERROR",
                             "TASK_DROPPED", "TASK_GONE", "TASK_GONE_BY_OPERATOR", "TASK_UNKNOWN"})
AGENT_GONE_REASONS = frozenset({"REASON_AGENT_REMOVED", "REASON_AGENT_UNREACHABLE", "REASON_AGENT_DISCONNECTED",
                                "REASON_AGENT_REMOVED_BY_OPERATOR"})


class Phase(enum.StrEnum):
    PENDING = "pending"
    LAUNCHING = "launching"
    STARTING = "starting"
    RUNNING = "running"
    KILLING = "killing"
    RECONCILING = "reconciling"


LIVE_PHASES = frozenset({Phase.LAUNCHING, Phase.STARTING, Phase.RUNNING, Phase.KILLING, Phase.RECONCILING})


@dataclass(frozen=True)
class TaskStatus:
    """A status update as the scheduler needs it (decoded from the driver's JSON)."""

    task_id: str
    state: str
    agent_id: str = ""
    reason: str = ""
    message: str = ""
    source: str = ""
    data: bytes = b""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


def decode_status(raw: Mapping[str, object]) -> TaskStatus:
    agent = raw.get("agent_id")
    return TaskStatus(task_id=str(raw["task_id"]["value"]), state=str(raw.get("state", "")),  # type: ignore[index]
                      agent_id=str(agent.get("value", "")) if isinstance(agent, dict) else "",
                      reason=str(raw.get("reason", "")), message=str(raw.get("message", "")),
                      source=str(raw.get("source", "")), data=_data(raw.get("data")))


def _data(raw: object) -> bytes:
    """TaskStatus.data is base64 in the v1 JSON API; unreadable data is dropped."""
    if not isinstance(raw, str):
        return b""
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        return b""


@dataclass(frozen=True)
class Timings:
    """The scheduler's timers, in seconds."""

    settle_s: float = 2.0
    """After (re)registering, offers are only looked at (their agents noted) for this long, so
    that every VM agent is known before the first instance is placed (spread)."""
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    reconcile_retry_s: float = 10.0
    kill_retry_s: float = 10.0
    launch_timeout_s: float = 60.0
    """A LAUNCHING task with no status this long is asked about (explicit reconciliation)."""
    implicit_reconcile_s: float = 15.0
    """How often the master is asked for every task it has for us (a task no wanted instance
    owns, e.g. one that came back with its agent after being reported lost, is then killed)."""
    known_agent_ttl_s: float = 20.0
    refuse_unusable_s: float = 300.0
    """Decline filter for an agent whose attributes do not qualify."""
    refuse_idle_s: float = 30.0
    """Decline filter for a qualifying agent when nothing is needed."""
    refuse_busy_s: float = 1.0
    """Decline filter for a qualifying agent whose offer did not fit while instances wait."""


def backoff_s(attempts: int, timings: Timings) -> float:
    """Delay before relaunch number ``attempts`` (1 = the first relaunch): base * 2^(n-1), capped."""
    if attempts <= 0:
        return 0.0
    return float(min(timings.backoff_max_s, timings.backoff_base_s * 2 ** min(attempts - 1, 30)))


@dataclass
class Instance:
    name: str
    group: str
    ordinal: int
    phase: Phase = Phase.PENDING
    task_id: str = ""
    agent_id: str = ""
    attempts: int = 0
    not_before: float = 0.0
    last_sent_at: float = 0.0
    """When the launch, kill or reconcile for the current phase was last sent."""
    last_state: str = ""
    message: str = ""

    @property
    def live(self) -> bool:
        return self.phase in LIVE_PHASES

    def record(self) -> Optional[TaskRecord]:
        if not self.task_id:
            return None
        return TaskRecord(self.name, self.task_id, self.agent_id, str(self.phase))

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "phase": str(self.phase), "task_id": self.task_id or None,
                "agent_id": self.agent_id or None, "state": self.last_state or None,
                "attempts": self.attempts, "message": self.message or None}
