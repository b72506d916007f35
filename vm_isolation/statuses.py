"""Task states and reasons (their values are the Mesos wire strings), and the one function
that maps an outcome or an error to the status a framework sees."""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass, field
from typing import Mapping, Optional

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
    HEALTH_CHECK_STATUS_UPDATED = "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"
    """A TASK_RUNNING that reports a health check result (``healthy``)."""
    CHECK_STATUS_UPDATED = "REASON_TASK_CHECK_STATUS_UPDATED"
    """A TASK_RUNNING that reports a changed check result (``check_status``)."""


@dataclass(frozen=True)
class Outcome:
    state: TaskState
    reason: Optional[Reason]
    message: str


@dataclass(frozen=True)
class ExitStatus:
    """How the task's process ended, from the launcher's exit status."""

    code: int

    @property
    def signal(self) -> Optional[int]:
        """The signal that ended the task, when the shell's 128+N convention says so."""
        if 128 < self.code < 128 + 65:
            return self.code - 128
        return None

    def describe(self) -> str:
        sig = self.signal
        if sig is not None:
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            return f"exit status {self.code} (terminated by {name})"
        return f"exit status {self.code}"


@dataclass(frozen=True)
class RunResult:
    """What happened to one task's guest session, frozen once the session is over."""

    exit: Optional[ExitStatus] = None
    """The command's exit status; None when it never ended on its own (boot failed, guest lost)."""
    error: Optional[BaseException] = None
    """Why the session ended early, when it did."""
    started: bool = False
    """The task's process existed in the guest (its start marker was seen)."""
    kill_reason: Optional[str] = None
    """Why it was killed, when it was (KILL, SHUTDOWN, a failed health check, a budget)."""
    guest_lost: str = ""
    """How the guest went away under a running command, when it did."""
    console_tail: str = ""
    timings: Mapping[str, float] = field(default_factory=dict)


def task_outcome(result: RunResult) -> Outcome:
    """The terminal status of a task from how its session ended: the one place the combination
    of exit, kill, lost guest and error becomes a status."""
    if result.exit is not None and result.error is None:
        if result.kill_reason is not None:
            return Outcome(TaskState.KILLED, None, f"{result.kill_reason}; task ended with {result.exit.describe()}")
        if result.exit.code == 0:
            return Outcome(TaskState.FINISHED, None, "command exited with status 0")
        return Outcome(TaskState.FAILED, Reason.COMMAND_FAILED, f"command exited with {result.exit.describe()}")
    if result.guest_lost and result.kill_reason is None:
        tail = f"\n--- last lines of the guest console ---\n{result.console_tail}" if result.console_tail else ""
        return Outcome(TaskState.FAILED, Reason.COMMAND_FAILED, result.guest_lost + tail)
    if result.kill_reason is not None:
        return Outcome(TaskState.KILLED, None if result.started else Reason.KILLED_DURING_LAUNCH, result.kill_reason)
    return outcome_for_error(result.error if result.error is not None else VmIsolationError("the session ended "
                                                                                             "without a result"))


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
