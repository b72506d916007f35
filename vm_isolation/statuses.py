"""Task states and reasons (their values are the Mesos wire strings), and the one function
that maps an outcome or an error to the status a framework sees."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from .errors import (
    GuestError,
    HostError,
    InvalidTask,
    LibvirtUnavailable,
    VmIsolationError,
)


class TaskState(enum.StrEnum):
    STARTING = "TASK_STARTING"
    RUNNING = "TASK_RUNNING"
    KILLING = "TASK_KILLING"
    FINISHED = "TASK_FINISHED"
    FAILED = "TASK_FAILED"
    KILLED = "TASK_KILLED"
    ERROR = "TASK_ERROR"
    DROPPED = "TASK_DROPPED"
    """Never started: the executor was already exiting (see Executor's linger)."""

    @property
    def terminal(self) -> bool:
        return self in (TaskState.FINISHED, TaskState.FAILED, TaskState.KILLED, TaskState.ERROR,
                        TaskState.DROPPED)


class Reason(enum.StrEnum):
    """The Mesos TaskStatus.Reason values this executor uses."""

    COMMAND_FAILED = "REASON_COMMAND_EXECUTOR_FAILED"
    """The task's command ran and exited non-zero (what Mesos's command executor reports)."""
    LAUNCH_FAILED = "REASON_CONTAINER_LAUNCH_FAILED"
    """The guest could not be booted or reached: the message names the phase."""
    TASK_INVALID = "REASON_TASK_INVALID"
    """The TaskInfo cannot be run as given: the message says what to change."""
    KILLED_DURING_LAUNCH = "REASON_TASK_KILLED_DURING_LAUNCH"
    """Killed before its command started."""
    EXECUTOR_TERMINATED = "REASON_EXECUTOR_TERMINATED"
    """The executor shut down (SHUTDOWN, agent lost) while the task was live."""


@dataclass(frozen=True)
class Outcome:
    state: TaskState
    reason: Optional[Reason]
    message: str


def outcome_for_error(exc: BaseException) -> Outcome:
    """The terminal status for a task that ended with ``exc``: the one place errors become statuses."""
    if isinstance(exc, InvalidTask):
        return Outcome(TaskState.ERROR, Reason.TASK_INVALID, f"invalid task: {exc}")
    if isinstance(exc, GuestError) and exc.phase == "run":
        # The command had started: the guest went away (powered off, crashed) or SSH was lost.
        return Outcome(TaskState.FAILED, Reason.COMMAND_FAILED, f"lost the guest while the command ran: {exc}")
    if isinstance(exc, GuestError):
        return Outcome(TaskState.FAILED, Reason.LAUNCH_FAILED, f"guest failed in phase {exc.phase}: {exc}")
    if isinstance(exc, (HostError, LibvirtUnavailable)):
        return Outcome(TaskState.FAILED, Reason.LAUNCH_FAILED, f"host not ready: {exc}")
    if isinstance(exc, VmIsolationError):
        return Outcome(TaskState.FAILED, Reason.LAUNCH_FAILED, str(exc))
    return Outcome(TaskState.FAILED, Reason.LAUNCH_FAILED,
                   f"internal error in vm-isolation-executor: {type(exc).__name__}: {exc}")
