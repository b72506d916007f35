"""Errors become statuses in one place, with the phase and the console in the message."""

from __future__ import annotations

from vm_isolation.errors import AddressTimeout, ImageError, InvalidTask, LibvirtUnavailable
from vm_isolation.statuses import Reason, TaskState, outcome_for_error


def test_a_guest_failure_names_its_phase_and_quotes_the_console() -> None:
    """AddressTimeout becomes TASK_FAILED / launch failed, naming the phase and the console tail."""
    outcome = outcome_for_error(AddressTimeout("no lease", phase="lease", console_tail="VMISO-HOSTKEY x"))
    assert (outcome.state, outcome.reason) == (TaskState.FAILED, Reason.LAUNCH_FAILED)
    assert "phase lease" in outcome.message and "VMISO-HOSTKEY x" in outcome.message


def test_invalid_tasks_are_task_errors() -> None:
    """InvalidTask becomes TASK_ERROR / REASON_TASK_INVALID."""
    outcome = outcome_for_error(InvalidTask("no command"))
    assert (outcome.state, outcome.reason) == (TaskState.ERROR, Reason.TASK_INVALID)


def test_host_problems_say_the_host_is_not_ready() -> None:
    """Host errors (images, libvirtd) are launch failures that say the host is not ready."""
    for exc in (ImageError("base image missing"), LibvirtUnavailable("libvirtd down")):
        outcome = outcome_for_error(exc)
        assert outcome.state == TaskState.FAILED and "host not ready" in outcome.message


def test_unexpected_errors_still_end_in_a_terminal_status() -> None:
    """Even a bug becomes TASK_FAILED with its type in the message, never silence."""
    outcome = outcome_for_error(KeyError("boom"))
    assert outcome.state == TaskState.FAILED and "KeyError" in outcome.message
    assert all(state.terminal for state in (TaskState.FINISHED, TaskState.FAILED, TaskState.KILLED, TaskState.ERROR))
    assert not TaskState.RUNNING.terminal
