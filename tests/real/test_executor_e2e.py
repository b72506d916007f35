"""The executor end to end: local agent stand-in -> vm-isolation-executor (real pymesos) -> real guests.

Every test ends by asserting that no domain, overlay or key it created is left.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.real.conftest import Leftovers
from vm_isolation.config import conf_path
from vm_isolation.ids import name_prefix
from vm_isolation.journal import journal_path, read_journal
from vm_isolation.localagent import LocalAgent
from vm_isolation.taskinfo import task_dir_name

BOOT_S = 180.0  # generous deadline for a boot under software emulation on a loaded CI host


def executor_command(config: Path | None = None) -> dict[str, Any]:
    script = Path(sys.executable).parent / "vm-isolation-executor"
    argv = [str(script), "--config", str(config or conf_path())]
    # No linger: these executors get no task after their last (the linger has its own test).
    return {"value": argv[0], "shell": False, "arguments": argv, "environment": {"variables": [
        {"name": "VM_ISOLATION_EXECUTOR_LINGER_S", "value": "0"}]}}


def task(task_id: str, command: str, **extra: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"name": task_id, "task_id": {"value": task_id},
                            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 1}},
                                          {"name": "mem", "type": "SCALAR", "scalar": {"value": 192}}],
                            "command": {"value": command, "shell": True}}
    info.update(extra)
    return info


class Run:
    """One agent stand-in with helpers to start executors and check the aftermath."""

    def __init__(self, agent: LocalAgent, leftovers: Leftovers) -> None:
        self.agent = agent
        self.leftovers = leftovers
        self.before = leftovers.snapshot()
        self.task_ids: list[str] = []

    def executor(self, config: Path | None = None, **kw: Any) -> tuple[str, Any]:
        executor_id = f"e2e-{uuid.uuid4().hex[:8]}"
        return executor_id, self.agent.launch_executor(executor_id, executor_command(config), **kw)

    def states(self, task_id: str) -> list[str]:
        return [u.state for u in self.agent.updates(task_id)]

    def task_file(self, handle: Any, task_id: str, name: str) -> str:
        return (handle.sandbox / "tasks" / task_dir_name(task_id) / name).read_text(errors="replace")

    def launch(self, executor_id: str, info: dict[str, Any]) -> None:
        self.task_ids.append(info["task_id"]["value"])
        self.agent.launch_task(executor_id, info)

    def assert_clean(self) -> None:
        self.leftovers.assert_none_since(self.before, prefixes=[name_prefix(t) for t in self.task_ids])


@pytest.fixture
def run(tmp_path: Path, leftovers: Leftovers) -> Iterator[Run]:
    with LocalAgent(tmp_path / "agent") as agent:
        yield Run(agent, leftovers)


@pytest.fixture
def run_checkpointed(tmp_path: Path, leftovers: Leftovers) -> Iterator[Run]:
    with LocalAgent(tmp_path / "agent", checkpoint=True) as agent:
        yield Run(agent, leftovers)


def test_a_command_finishes_and_its_output_lands_in_the_sandbox(run: Run, tmp_path: Path) -> None:
    """STARTING, RUNNING, FINISHED in order; stdout holds the guest's hostname and the fetched
    file uploaded into the guest's sandbox; data holds the phase timings."""
    fetched = tmp_path / "fetched.txt"
    fetched.write_text("fetched-by-the-agent\n")
    eid, h = run.executor(files=[fetched])
    run.launch(eid, task("hello", "echo out-$(hostname); cat fetched.txt; echo err-line >&2"))
    final = run.agent.wait_for_terminal("hello", BOOT_S)
    assert run.states("hello") == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    out = run.task_file(h, "hello", "stdout")
    assert out.startswith("out-vmiso-hello-")
    assert out.endswith("\nfetched-by-the-agent\n")
    assert (h.sandbox / "stdout").read_text().count("out-vmiso-hello-") == 1
    err = run.task_file(h, "hello", "stderr")
    assert "lease done" in err and "err-line" in err
    assert "VMISO-HOSTKEY" in run.task_file(h, "hello", "console.log")
    timings = json.loads(final.data or b"{}")
    assert {"overlay", "define", "start", "lease", "ssh", "upload", "run"} <= set(timings)
    assert h.wait(60) == 0
    journal = read_journal(journal_path(h.sandbox))
    assert journal.owner is not None and journal.owner.executor_pid == h.pid
    assert journal.outstanding == [] and journal.problems == []
    run.assert_clean()


def test_a_failing_command_reports_its_exit_status(run: Run) -> None:
    """exit 3 gives TASK_FAILED whose message carries the status 3."""
    eid, h = run.executor()
    run.launch(eid, task("three", "exit 3"))
    final = run.agent.wait_for_terminal("three", BOOT_S)
    assert final.state == "TASK_FAILED"
    assert final.reason == "REASON_COMMAND_EXECUTOR_FAILED"
    assert "exit status 3" in (final.message or "")
    assert h.wait(60) == 0
    run.assert_clean()


def test_a_task_without_a_command_is_a_task_error(run: Run) -> None:
    """No command: TASK_ERROR saying what to set, and no guest is booted."""
    eid, h = run.executor()
    run.launch(eid, {"name": "nocmd", "task_id": {"value": "nocmd"}})
    final = run.agent.wait_for_terminal("nocmd", 60)
    assert (final.state, final.reason) == ("TASK_ERROR", "REASON_TASK_INVALID")
    assert "no command" in (final.message or "")
    assert h.wait(60) == 0
    run.assert_clean()


def test_kill_while_booting_lands(run: Run) -> None:
    """A KILL that arrives before the command starts ends in TASK_KILLED without RUNNING."""
    eid, h = run.executor()
    run.launch(eid, task("early", "sleep 600"))
    run.agent.wait_for_state("early", "TASK_STARTING", 60)
    run.agent.kill_task(eid, "early")
    final = run.agent.wait_for_terminal("early", 60)
    assert final.state == "TASK_KILLED"
    assert "TASK_RUNNING" not in run.states("early")
    assert h.wait(60) == 0
    run.assert_clean()


def test_kill_while_running_lands_and_removes_the_guest(run: Run) -> None:
    """KILL of a running sleep gives TASK_KILLED and leaves no domain, overlay or key."""
    eid, h = run.executor()
    run.launch(eid, task("sleeper", "sleep 600"))
    run.agent.wait_for_state("sleeper", "TASK_RUNNING", BOOT_S)
    run.agent.kill_task(eid, "sleeper", grace_period_s=1.0)
    final = run.agent.wait_for_terminal("sleeper", 60)
    assert final.state == "TASK_KILLED"
    assert h.wait(60) == 0
    run.assert_clean()


def test_two_tasks_run_at_once_and_shutdown_kills_both(run: Run) -> None:
    """Two tasks in one executor both reach RUNNING; SHUTDOWN kills both and the executor exits."""
    eid, h = run.executor(shutdown_grace_period_s=10.0)
    run.launch(eid, task("one", "sleep 600"))
    run.launch(eid, task("two", "sleep 600"))
    run.agent.wait_for_state("one", "TASK_RUNNING", BOOT_S)
    run.agent.wait_for_state("two", "TASK_RUNNING", BOOT_S)
    run.agent.shutdown_executor(eid)
    assert run.agent.wait_for_terminal("one", 30).state == "TASK_KILLED"
    assert run.agent.wait_for_terminal("two", 30).state == "TASK_KILLED"
    assert h.wait(30) == 0
    run.assert_clean()


HOSTILE = ["it's \"q\"", "$(touch /tmp/pwned)", "`id`", "a;b", "line1\nline2", "../../etc/passwd", "ünï ✓"]


def test_hostile_ids_and_environment_values_pass_through_literally(run: Run) -> None:
    """Quotes, $(...), backticks, newlines and ../ in the task id and env arrive as data."""
    eid, h = run.executor()
    task_id = "../../$(reboot) `id` 'q\"\nx"
    variables = [{"name": f"V{i}", "value": v} for i, v in enumerate(HOSTILE)]
    command = "printf '%s\\0' " + " ".join(f'"$V{i}"' for i in range(len(HOSTILE))) + ' "$MESOS_TASK_ID"'
    info = task(task_id, command)
    info["command"]["environment"] = {"variables": variables}
    run.launch(eid, info)
    final = run.agent.wait_for_terminal(task_id, BOOT_S)
    assert final.state == "TASK_FINISHED", final.message
    out = (h.sandbox / "tasks" / task_dir_name(task_id) / "stdout").read_bytes().decode()
    assert out.split("\0") == [*HOSTILE, task_id, ""]
    assert not Path("/tmp/pwned").exists()
    assert h.wait(60) == 0
    run.assert_clean()


def test_without_checkpointing_a_lost_agent_makes_the_executor_clean_up_and_exit(run: Run) -> None:
    """Checkpoint off: when the agent's stream drops, the executor destroys its guest and exits non-zero."""
    eid, h = run.executor()
    run.launch(eid, task("orphan", "sleep 600"))
    run.agent.wait_for_state("orphan", "TASK_RUNNING", BOOT_S)
    run.agent.drop_stream(eid)
    assert h.wait(60) != 0
    run.assert_clean()


def test_with_checkpointing_the_executor_resubscribes_and_the_task_finishes(run_checkpointed: Run) -> None:
    """Checkpoint on: after the stream drops the executor re-subscribes and the task still finishes."""
    run = run_checkpointed
    eid, h = run.executor()
    run.launch(eid, task("survivor", "sleep 3; echo done"))
    run.agent.wait_for_state("survivor", "TASK_RUNNING", BOOT_S)
    run.agent.drop_stream(eid)
    final = run.agent.wait_for_terminal("survivor", 60)
    assert final.state == "TASK_FINISHED"
    subscribes = [c for c in run.agent.calls_received(eid) if c.get("type") == "SUBSCRIBE"]
    assert len(subscribes) >= 2
    assert h.wait(60) == 0
    run.assert_clean()
