"""Values, wire parsing and bookkeeping for the agent connection (no pymesos here).

:mod:`vm_isolation.mesos` is the adapter over pymesos; this module holds its parts that need
no network and no pymesos, so they stay small and testable on their own:

* the frozen value objects and the :class:`ExecutorEvents` Protocol the executor implements;
* parsing of the JSON payloads of v1 executor events (``Event.*`` in Mesos's
  ``include/mesos/v1/executor/executor.proto``) and building of ``TaskStatus``;
* :class:`UpdateLedger`: what the agent has not acknowledged yet, which the executor must
  re-send when it re-subscribes;
* :class:`Outbox`: updates the agent has not yet *accepted*, in send order.
"""

from __future__ import annotations

import base64
import http.client
import logging
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping, Optional, Protocol, Sequence

from .waiting import SYSTEM_CLOCK, Clock, Deadline

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

NOT_SENDABLE_STATES = frozenset({"TASK_STAGING"})
"""The agent rejects an executor UPDATE in these states (validation.cpp) with HTTP 400."""
_TEMPORARY_HTTP = frozenset({403, 408, 429})
"""Refusals of a call that may succeed later: not subscribed (yet), timeout, throttling."""


# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subscribed:
    """The agent accepted our SUBSCRIBE (first time or after a reconnection)."""

    executor_info: JsonDict
    framework_info: JsonDict
    agent_info: JsonDict
    container_id: str

    @property
    def agent_id(self) -> str:
        """The agent's ID as it reported it ('' when it did not)."""
        return str(self.agent_info.get("id", {}).get("value", ""))


class ExecutorEvents(Protocol):
    """What the executor does when the agent speaks. Implemented by the executor.

    Contract: every method is called on the adapter's single IO thread, one at a time, and
    must return quickly (hand real work, like booting a VM, to a worker thread). While a
    callback runs, no other event is read: not even the ACKNOWLEDGED a worker is waiting for.
    An exception raised by a callback is logged and costs only that event.
    """

    def on_subscribed(self, info: Subscribed) -> None:
        """Subscribed, first time or again after a reconnection."""

    def on_launch(self, task: Mapping[str, Any]) -> None:
        """LAUNCH: ``task`` is the raw TaskInfo JSON (plain dicts and lists)."""

    def on_launch_group(self, tasks: Sequence[Mapping[str, Any]]) -> None:
        """LAUNCH_GROUP: the TaskInfos of the group (those not launched before)."""

    def on_kill(self, task_id: str, grace_s: Optional[float]) -> None:
        """KILL, with the kill policy's grace period in seconds (None when none was given)."""

    def on_shutdown(self) -> None:
        """SHUTDOWN: kill every task, report it, and exit within the shutdown grace period."""

    def on_message(self, data: bytes) -> None:
        """A framework message (best-effort delivery)."""

    def on_error(self, message: str) -> None:
        """The agent reported an error."""

    def on_agent_lost(self, reason: str) -> None:
        """The agent is gone for good: the executor must clean up (destroy VMs) and exit.

        Called at most once per connection.
        """


class CallRefused(Exception):
    """The agent answered a call with a non-2xx HTTP status."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body.strip()[:200]}")
        self.status = status

    @property
    def permanent(self) -> bool:
        """True when sending the same call again cannot succeed."""
        return 400 <= self.status < 500 and self.status not in _TEMPORARY_HTTP


# --- wire parsing ---------------------------------------------------------------------------


def task_id_of(task: JsonDict) -> str:
    """``TaskInfo.task_id.value``; ValueError when the payload has none."""
    try:
        return str(task["task_id"]["value"])
    except (KeyError, TypeError):
        raise ValueError(f"TaskInfo without task_id.value: {sorted(task)}") from None


def parse_subscribed(payload: JsonDict) -> Subscribed:
    """``Event.Subscribed`` -> :class:`Subscribed`; KeyError when a required part is missing."""
    return Subscribed(
        executor_info=payload["executor_info"],
        framework_info=payload["framework_info"],
        agent_info=payload.get("agent_info", {}),
        container_id=str(payload.get("container_id", {}).get("value", "")),
    )


def kill_grace_s(payload: JsonDict) -> Optional[float]:
    """``Event.Kill.kill_policy.grace_period.nanoseconds`` in seconds, or None when unset.

    Mesos renders int64 as a JSON number; a string (proto3 JSON style) is accepted too.
    """
    nanoseconds = payload.get("kill_policy", {}).get("grace_period", {}).get("nanoseconds")
    if nanoseconds is None:
        return None
    return max(0.0, float(nanoseconds) / 1e9)


def decode_uuid(text: str) -> bytes:
    """The raw 16 bytes of a base64 ``uuid`` field."""
    return base64.b64decode(text)


def new_status(
    task_id: str,
    state: str,
    *,
    executor_id: str,
    agent_id: str,
    reason: Optional[str] = None,
    message: Optional[str] = None,
    data: Optional[bytes] = None,
    healthy: Optional[bool] = None,
    check_status: Optional[Mapping[str, Any]] = None,
    now: Callable[[], float] = time.time,
) -> tuple[bytes, JsonDict]:
    """A fresh ``TaskStatus`` as the agent's executor API wants it, and its raw uuid.

    The uuid is 16 random bytes (uuid4), base64 in JSON; the agent rejects anything else.
    ``source`` is SOURCE_EXECUTOR and ``timestamp`` a float (pymesos truncates it to an int).
    ValueError for a state the agent would reject (TASK_STAGING): included in a later
    SUBSCRIBE, such an update would make every re-subscription fail.
    """
    if state in NOT_SENDABLE_STATES or not state.startswith("TASK_"):
        raise ValueError(f"an executor cannot send a status update in state {state!r}")
    raw = uuid.uuid4().bytes
    status: JsonDict = {
        "task_id": {"value": task_id},
        "state": state,
        "source": "SOURCE_EXECUTOR",
        "uuid": base64.b64encode(raw).decode("ascii"),
        "timestamp": float(now()),
        "executor_id": {"value": executor_id},
    }
    if agent_id:
        status["agent_id"] = {"value": agent_id}
    if reason is not None:
        status["reason"] = reason
    if message is not None:
        status["message"] = message
    if data is not None:
        status["data"] = base64.b64encode(data).decode("ascii")
    if healthy is not None:
        status["healthy"] = healthy
    if check_status is not None:
        status["check_status"] = dict(check_status)
    return raw, status


def reconnect_delay_s(attempt: int, backoff_max_s: float, rng: Callable[[], float] = random.random) -> float:
    """How long to wait before re-subscription attempt number ``attempt`` (0-based).

    The first attempt after a disconnection is immediate, every later one waits a random time
    in [0, MESOS_SUBSCRIPTION_BACKOFF_MAX / 4]. Mesos's own library (src/executor/executor.cpp
    ``backoff``) waits up to the whole bound, but that bound is also the agent's
    ``--executor_reregistration_timeout``: a gap as long as the window can miss it, and under
    load it did (1 re-registration timeout in the 40-launch real-cluster soak, bench/SOAK.md).
    A quarter keeps the retries spread while several fall inside the window.
    """
    return 0.0 if attempt == 0 else rng() * backoff_max_s / 4


# --- bookkeeping ----------------------------------------------------------------------------


class UpdateLedger:
    """What the agent has not acknowledged yet: the executor's duty on re-subscription.

    Per the executor API: every sent UPDATE stays here until its ACKNOWLEDGED arrives; every
    launched TaskInfo stays until any update of that task is acknowledged. Both lists go into
    the next SUBSCRIBE. Thread-safe; waiters are woken by :meth:`acknowledged`.
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._tasks: dict[str, JsonDict] = {}
        self._launched: set[str] = set()
        self._updates: dict[bytes, JsonDict] = {}  # insertion order = send order
        self._outcome: dict[bytes, bool] = {}  # True: acknowledged; False: rejected by the agent

    def launched(self, task: JsonDict) -> bool:
        """Record a LAUNCHed TaskInfo; False (and nothing recorded) if that task ID was seen before."""
        task_id = task_id_of(task)
        with self._cond:
            if task_id in self._launched:
                return False
            self._launched.add(task_id)
            self._tasks[task_id] = task
            return True

    def sent(self, raw_uuid: bytes, status: JsonDict) -> None:
        """Record an update handed to the agent (or about to be)."""
        with self._cond:
            self._updates[raw_uuid] = status

    def acknowledged(self, task_id: str, raw_uuid: bytes) -> None:
        """ACKNOWLEDGED arrived: the update is done, and so is its task's TaskInfo."""
        with self._cond:
            self._updates.pop(raw_uuid, None)
            self._tasks.pop(task_id, None)
            self._outcome[raw_uuid] = True
            self._cond.notify_all()

    def rejected(self, raw_uuid: bytes) -> None:
        """The agent refused the update for good (HTTP 4xx): it will never be acknowledged."""
        with self._cond:
            if self._updates.pop(raw_uuid, None) is not None:
                self._outcome[raw_uuid] = False
            self._cond.notify_all()

    def pending(self) -> tuple[list[JsonDict], list[tuple[bytes, JsonDict]]]:
        """Unacknowledged TaskInfos and (uuid, status) updates, in the order they came."""
        with self._cond:
            return list(self._tasks.values()), list(self._updates.items())

    def wait(self, raw_uuid: bytes, timeout_s: float) -> bool:
        """True once the update is acknowledged; False if rejected or still pending at the deadline.

        ValueError for a uuid this ledger never recorded (a caller bug that would otherwise
        look like a timeout).
        """
        deadline = Deadline.after(timeout_s, self._clock)
        with self._cond:
            if raw_uuid not in self._updates and raw_uuid not in self._outcome:
                raise ValueError(f"no status update with uuid {raw_uuid.hex()} was sent")
            while raw_uuid in self._updates and not deadline.expired():
                self._cond.wait(deadline.remaining())
            return self._outcome.get(raw_uuid, False)

    def all_acknowledged(self) -> bool:
        """True when no sent update is waiting for its acknowledgement."""
        with self._cond:
            return not self._updates


class Outbox:
    """Updates the agent has not yet *accepted* (HTTP 202), in send order.

    The sender thread takes them from the head, one at a time, and only while subscribed (the
    agent answers 403 to calls from an unsubscribed executor). Updates that a SUBSCRIBE
    carried in ``unacknowledged_updates`` are dropped when its SUBSCRIBED arrives: the agent
    has them. Thread-safe.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[tuple[bytes, JsonDict]] = deque()
        self._subscribed = False
        self._closed = False
        self._retry_at: Optional[float] = None

    def put(self, raw_uuid: bytes, status: JsonDict) -> None:
        with self._cond:
            self._queue.append((raw_uuid, status))
            self._cond.notify_all()

    def subscribed(self, carried: Collection[bytes]) -> None:
        """SUBSCRIBED arrived for a SUBSCRIBE that carried the updates ``carried``."""
        with self._cond:
            self._queue = deque(item for item in self._queue if item[0] not in carried)
            self._subscribed = True
            self._retry_at = None
            self._cond.notify_all()

    def disconnected(self) -> None:
        with self._cond:
            self._subscribed = False

    def close(self) -> int:
        """Stop the sender; returns how many updates never reached the agent (0 if already closed)."""
        with self._cond:
            if self._closed:
                return 0
            self._closed = True
            self._cond.notify_all()
            return len(self._queue)

    def next(self) -> Optional[tuple[bytes, JsonDict]]:
        """Block until an update may be sent and return the head (left in place); None once closed."""
        with self._cond:
            while not self._closed:
                if not (self._subscribed and self._queue):
                    self._cond.wait()
                    continue
                wait_s = 0.0 if self._retry_at is None else self._retry_at - time.monotonic()
                if wait_s <= 0:
                    self._retry_at = None
                    return self._queue[0]
                self._cond.wait(wait_s)
            return None

    def done(self, raw_uuid: bytes) -> None:
        """The head was accepted (or refused for good): remove it, if a SUBSCRIBE did not already."""
        with self._cond:
            if self._queue and self._queue[0][0] == raw_uuid:
                self._queue.popleft()

    def retry_after(self, delay_s: float) -> None:
        """The head failed for a passing reason: try again after ``delay_s`` or the next SUBSCRIBED."""
        with self._cond:
            self._retry_at = time.monotonic() + delay_s


def deliver_updates(
    outbox: Outbox,
    ledger: UpdateLedger,
    post: Callable[[JsonDict], None],
    retry_delay_s: Callable[[], float],
) -> None:
    """The sender thread: POST the outbox's head until the agent accepts it, in order.

    ``post`` raises :class:`CallRefused`, ``OSError`` or ``http.client.HTTPException``. A
    permanent refusal drops the update (the ledger marks it rejected, so it is not re-sent
    in a SUBSCRIBE that it would make fail); anything else is retried after
    ``retry_delay_s()`` or the next SUBSCRIBED. Returns when the outbox is closed.
    """
    while (item := outbox.next()) is not None:
        raw, status = item
        try:
            post(status)
        except CallRefused as exc:
            if exc.permanent:
                logger.error("agent refused status update %s (%s): %s", raw.hex(), describe(status), exc)
                outbox.done(raw)
                ledger.rejected(raw)
                continue
            failure: Exception = exc
        except (OSError, http.client.HTTPException) as exc:
            failure = exc
        else:
            outbox.done(raw)
            continue
        delay = retry_delay_s()
        logger.warning("status update %s (%s) not delivered yet (%s); retrying in %.1fs",
                       raw.hex(), describe(status), failure, delay)
        outbox.retry_after(delay)


def describe(status: JsonDict) -> str:
    """``task <id> <state>``, for log lines."""
    task: Any = status.get("task_id", {})
    return f"task {task.get('value', '?')} {status.get('state', '?')}"
