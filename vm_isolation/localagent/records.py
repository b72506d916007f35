"""What the agent's task status update manager keeps: every accepted update, once.

The real manager keeps one stream per task and drops an update whose uuid it has already
received ("Ignoring duplicate status update"); the agent still acknowledges such a
duplicate to the executor. :class:`StatusLog` does the first half and lets tests wait for a
state; acknowledging is :mod:`.core`'s job.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Union

from ..waiting import Deadline
from .wire import b64decode

TERMINAL_STATES = frozenset({
    "TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST", "TASK_DROPPED",
    "TASK_GONE", "TASK_GONE_BY_OPERATOR",
})
"""``protobuf::isTerminalState``."""


@dataclass(frozen=True)
class StatusRecord:
    """One accepted status update, as the agent forwarded it toward the scheduler.

    ``raw`` is the TaskStatus JSON after the agent's fill-ins (``agent_id``, ``source``);
    ``data`` and ``uuid`` are decoded bytes; ``timestamp`` is the status's own (wall clock)
    or the agent's receive time when the executor sent none; ``received_at`` is
    ``time.monotonic()`` when the agent accepted it.
    """

    task_id: str
    state: str
    source: str
    reason: Optional[str]
    message: Optional[str]
    data: Optional[bytes]
    uuid: Optional[bytes]
    timestamp: float
    received_at: float
    raw: dict[str, Any]

    @classmethod
    def from_status(cls, status: dict[str, Any]) -> StatusRecord:
        """Build a record from a (converted) TaskStatus JSON object."""
        return cls(
            task_id=status["task_id"]["value"],
            state=status["state"],
            source=status.get("source", "SOURCE_MASTER"),
            reason=status.get("reason"),
            message=status.get("message"),
            data=b64decode(status["data"]) if "data" in status else None,
            uuid=b64decode(status["uuid"]) if "uuid" in status else None,
            timestamp=float(status.get("timestamp", time.time())),
            received_at=time.monotonic(),
            raw=status,
        )

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def describe(self) -> str:
        """``TASK_FAILED (REASON_EXECUTOR_TERMINATED: Executor terminated)`` for messages."""
        detail = ": ".join(x for x in (self.reason, self.message) if x)
        return f"{self.state} ({detail})" if detail else self.state


class StatusLog:
    """Accepted updates per task, in arrival order, deduplicated by uuid. Thread-safe."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._records: dict[str, list[StatusRecord]] = {}
        self._uuids: dict[str, set[bytes]] = {}

    def add(self, record: StatusRecord) -> bool:
        """Keep ``record`` unless its uuid was already received for its task; say which."""
        with self._changed:
            seen = self._uuids.setdefault(record.task_id, set())
            if record.uuid is not None and record.uuid in seen:
                return False
            if record.uuid is not None:
                seen.add(record.uuid)
            self._records.setdefault(record.task_id, []).append(record)
            self._changed.notify_all()
            return True

    def updates(self, task_id: str) -> list[StatusRecord]:
        with self._changed:
            return list(self._records.get(task_id, ()))

    def wait_for(self, task_id: str, matches: Callable[[StatusRecord], bool], what: str,
                 timeout_s: float) -> StatusRecord:
        """The first record of ``task_id`` that ``matches``; TimeoutError lists the history."""
        deadline = Deadline.after(timeout_s)
        with self._changed:
            while True:
                found = next((r for r in self._records.get(task_id, ()) if matches(r)), None)
                if found is not None:
                    return found
                if deadline.expired():
                    raise TimeoutError(self._timeout_message(task_id, what, timeout_s))
                self._changed.wait(deadline.remaining())

    def _timeout_message(self, task_id: str, what: str, timeout_s: float) -> str:
        history = ", ".join(r.describe() for r in self._records.get(task_id, ())) or "none"
        return f"task {task_id} did not reach {what} within {timeout_s:g} s; its updates so far: {history}"


def state_set(states: Union[str, Iterable[str]]) -> frozenset[str]:
    """Accept one state or any iterable of states."""
    return frozenset([states]) if isinstance(states, str) else frozenset(states)
