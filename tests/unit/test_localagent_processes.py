"""The local agent launching, watching and killing real executor processes (slave.cpp, launch.cpp, launcher.cpp)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.unit.test_localagent_client import SLEEPER, WAIT_S, ExecutorClient, python_command, task_info
from vm_isolation.localagent import LaunchError, LocalAgent
from vm_isolation.waiting import Deadline, poll_until

ENV_COMMAND = {"value": "env", "shell": False, "arguments": ["env"]}
"""Prints the environment to the sandbox's stdout; ``env`` is found through the default PATH."""
AGENT_VARIABLES = {
    "LIBPROCESS_PORT", "MESOS_FRAMEWORK_ID", "MESOS_EXECUTOR_ID", "MESOS_DIRECTORY", "MESOS_SANDBOX",
    "MESOS_SLAVE_ID", "MESOS_SLAVE_PID", "MESOS_AGENT_ENDPOINT", "MESOS_CHECKPOINT", "MESOS_HTTP_COMMAND_EXECUTOR",
    "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD", "PATH",
}


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[LocalAgent]:
    with LocalAgent(tmp_path / "agent") as running:
        yield running


def printed_environment(sandbox: Path) -> dict[str, str]:
    lines = (sandbox / "stdout").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def wait_for(probe: Any, what: str) -> Any:
    return poll_until(probe, Deadline.after(WAIT_S), interval_s=0.01, what=what)


def read_pid_file(path: Path) -> int:
    text = wait_for(lambda: path.read_text().strip() or None if path.exists() else None, f"{path.name}")
    return int(text)


Play = Callable[[str, str], ExecutorClient]


@pytest.fixture
def play(agent: LocalAgent) -> Iterator[Play]:
    """``play(executor_id, task_id)``: be the executor: subscribe, take the task, report TASK_RUNNING."""
    clients: list[ExecutorClient] = []

    def subscribe_and_run(executor_id: str, task_id: str) -> ExecutorClient:
        agent.launch_task(executor_id, task_info(task_id))
        client = ExecutorClient(agent.endpoint, agent.framework_id, executor_id)
        clients.append(client)
        client.subscribe().events(2)
        assert client.update(task_id, "TASK_RUNNING")[0] == 202
        return client

    yield subscribe_and_run
    for client in clients:
        client.close()


# --- environment and command ------------------------------------------------------------------


def test_the_executor_gets_only_agent_variables_extra_env_and_command_environment(
        agent: LocalAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is inherited; MESOS_* beat extra_env; CommandInfo.environment beats both; secrets are skipped."""
    monkeypatch.setenv("LEAK_CHECK", "from-the-test-process")
    monkeypatch.delenv("LIBPROCESS_IP", raising=False)
    command = {**ENV_COMMAND, "environment": {"variables": [
        {"name": "FROM_COMMAND", "value": "c"},
        {"name": "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD", "value": "200ms"},
        {"name": "A_SECRET", "type": "SECRET", "secret": {"type": "REFERENCE"}},
    ]}}
    handle = agent.launch_executor("e-env", command, extra_env={"VM_ISOLATION_CONF": "/etc/vm.conf",
                                                                "MESOS_SLAVE_ID": "not-this"})
    assert handle.wait(WAIT_S) == 0
    env = printed_environment(handle.sandbox)
    assert set(env) == AGENT_VARIABLES | {"VM_ISOLATION_CONF", "FROM_COMMAND"}
    assert env["MESOS_SLAVE_ID"] == agent.agent_id
    assert env["MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD"] == "200ms"
    assert (env["MESOS_CHECKPOINT"], env["MESOS_HTTP_COMMAND_EXECUTOR"], env["LIBPROCESS_PORT"]) == ("0", "0", "0")
    assert env["MESOS_AGENT_ENDPOINT"] == agent.endpoint
    assert env["MESOS_SLAVE_PID"] == f"slave(1)@{agent.endpoint}"
    assert env["MESOS_DIRECTORY"] == env["MESOS_SANDBOX"] == str(handle.sandbox)
    assert env["MESOS_FRAMEWORK_ID"] == agent.framework_id and env["MESOS_EXECUTOR_ID"] == "e-env"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_a_checkpointing_agent_adds_recovery_variables_and_passes_libprocess_ip(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoint=True: MESOS_CHECKPOINT=1 plus RECOVERY_TIMEOUT/SUBSCRIPTION_BACKOFF_MAX; the grace period
    comes from ExecutorInfo.shutdown_grace_period; the agent's own LIBPROCESS_IP is passed on."""
    monkeypatch.setenv("LIBPROCESS_IP", "127.0.0.1")
    with LocalAgent(tmp_path / "agent", checkpoint=True) as agent:
        handle = agent.launch_executor("e-ckpt", ENV_COMMAND, executor_info_extra={
            "shutdown_grace_period": {"nanoseconds": 90 * 10**9}})
        assert handle.wait(WAIT_S) == 0
        env = printed_environment(handle.sandbox)
    assert (env["MESOS_CHECKPOINT"], env["MESOS_RECOVERY_TIMEOUT"], env["MESOS_SUBSCRIPTION_BACKOFF_MAX"]) == (
        "1", "15mins", "2secs")
    assert env["MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD"] == "90secs"
    assert env["LIBPROCESS_IP"] == "127.0.0.1"


def test_shell_commands_run_under_sh_c_and_ignore_arguments(agent: LocalAgent) -> None:
    """shell=true execs /bin/sh -c value with argv[0] 'sh'; arguments are not passed."""
    handle = agent.launch_executor("e-sh", {"value": 'echo "$0|$1|$(pwd)"', "shell": True, "arguments": ["x", "y"]})
    assert handle.wait(WAIT_S) == 0
    assert (handle.sandbox / "stdout").read_text() == f"sh||{handle.sandbox}\n"


def test_argv_commands_exec_value_with_arguments0_as_argv0(agent: LocalAgent) -> None:
    """shell=false execs value with the arguments as argv, arguments[0] becoming argv[0]."""
    code = "import sys; sys.stdout.write(repr(open('/proc/self/cmdline', 'rb').read()))"
    command = {"value": sys.executable, "shell": False, "arguments": ["custom-argv0", "-c", code]}
    handle = agent.launch_executor("e-argv", command)
    assert handle.wait(WAIT_S) == 0
    assert (handle.sandbox / "stdout").read_text() == repr(b"custom-argv0\0-c\0" + code.encode() + b"\0")


def test_the_sandbox_has_the_agent_layout_the_given_files_and_the_output(agent: LocalAgent, tmp_path: Path) -> None:
    """runs/<container_id> under slaves/frameworks/executors, a runs/latest link, copied files, stdout/stderr."""
    given = tmp_path / "payload.txt"
    given.write_text("fetched")
    handle = agent.launch_executor("e-box", {"value": "cat payload.txt; echo oops >&2"}, files=[given])
    assert handle.wait(WAIT_S) == 0
    assert handle.sandbox == (agent.work_dir / "slaves" / agent.agent_id / "frameworks" / agent.framework_id
                              / "executors" / "e-box" / "runs" / handle.container_id)
    assert os.readlink(handle.sandbox.parent / "latest") == handle.container_id
    assert (handle.sandbox / "stdout").read_text() == "fetched"
    assert (handle.sandbox / "stderr").read_text() == "oops\n"


def test_a_program_that_cannot_be_started_raises_and_frees_the_executor_id(agent: LocalAgent) -> None:
    """LaunchError names the program; the executor id can be launched again afterwards."""
    with pytest.raises(LaunchError, match="/nonexistent/executor"):
        agent.launch_executor("e-bad", {"value": "/nonexistent/executor", "shell": False})
    assert agent.launch_executor("e-bad", {"value": "true"}).wait(WAIT_S) == 0


# --- watching and killing ---------------------------------------------------------------------


def test_executor_exit_fails_every_unfinished_task(agent: LocalAgent, play: Play) -> None:
    """When the process exits, launched non-terminal and queued tasks get TASK_FAILED 'Executor terminated'."""
    handle = agent.launch_executor("e-exit", SLEEPER)
    client = play("e-exit", "running")
    agent.launch_task("e-exit", task_info("done"))
    client.readers[-1].next_of_type("LAUNCH")
    client.update("done", "TASK_FINISHED")
    silent = agent.launch_executor("e-silent", SLEEPER)
    agent.launch_task("e-silent", task_info("queued"))
    os.kill(handle.pid, signal.SIGTERM)
    os.kill(silent.pid, signal.SIGKILL)
    assert (handle.wait(WAIT_S), silent.wait(WAIT_S)) == (-signal.SIGTERM, -signal.SIGKILL)
    for task_id in ("running", "queued"):
        failed = agent.updates(task_id)[-1]
        assert (failed.state, failed.source, failed.reason, failed.message) == (
            "TASK_FAILED", "SOURCE_SLAVE", "REASON_EXECUTOR_TERMINATED", "Executor terminated")
    assert [u.state for u in agent.updates("done")] == ["TASK_FINISHED"]
    assert {e["type"] for e in client.readers[-1].read_to_end()} <= {"ACKNOWLEDGED"}  # ...and then the end.


def test_an_executor_that_never_subscribes_is_killed_at_the_registration_timeout(tmp_path: Path) -> None:
    """After registration_timeout_s the process tree is killed and its tasks fail with the timeout reason."""
    with LocalAgent(tmp_path / "agent", registration_timeout_s=0.3) as agent:
        handle = agent.launch_executor("e-slow", SLEEPER)
        agent.launch_task("e-slow", task_info("t"))
        failed = agent.wait_for_terminal("t", WAIT_S)
        assert handle.wait(WAIT_S) == -signal.SIGKILL
    assert (failed.state, failed.reason, failed.message) == (
        "TASK_FAILED", "REASON_EXECUTOR_REGISTRATION_TIMEOUT", "Executor did not register within 300ms")


def test_shutdown_sends_shutdown_then_sigkills_the_process_group_after_the_grace_period(
        agent: LocalAgent, play: Play) -> None:
    """SHUTDOWN reaches the executor; after the grace period the whole group, grandchild included, is SIGKILLed."""
    handle = agent.launch_executor("e-stop", {"value": "sleep 30 & echo $! > grandchild.pid; wait"},
                                   shutdown_grace_period_s=0.3)
    client = play("e-stop", "t")
    grandchild = read_pid_file(handle.sandbox / "grandchild.pid")
    started = time.monotonic()
    agent.shutdown_executor("e-stop")
    assert client.readers[-1].next_of_type("SHUTDOWN") == {"type": "SHUTDOWN"}
    assert handle.wait(WAIT_S) == -signal.SIGKILL
    assert time.monotonic() - started >= 0.3
    wait_for(lambda: not alive(grandchild) or None, "the grandchild to die")
    failed = agent.updates("t")[-1]
    assert (failed.state, failed.reason, failed.message) == (
        "TASK_FAILED", "REASON_EXECUTOR_TERMINATED", "Executor terminated")


def test_the_rest_of_the_executors_session_dies_with_it(agent: LocalAgent) -> None:
    """When the executor exits by itself, what it left in its process group is destroyed too."""
    handle = agent.launch_executor("e-orphan", {"value": "sleep 30 & echo $! > grandchild.pid; exit 3"})
    assert handle.wait(WAIT_S) == 3
    grandchild = read_pid_file(handle.sandbox / "grandchild.pid")
    wait_for(lambda: not alive(grandchild) or None, "the grandchild to die")


def test_an_executor_that_exits_by_itself_keeps_its_reported_states(agent: LocalAgent, play: Play) -> None:
    """A finished task is not failed by a later clean exit; new tasks for the exited executor are lost."""
    code = "import os, signal; signal.pause()"
    handle = agent.launch_executor("e-clean", python_command(code))
    play("e-clean", "t").update("t", "TASK_FINISHED")
    agent.wait_for_state("t", "TASK_FINISHED", WAIT_S)
    os.kill(handle.pid, signal.SIGINT)
    assert handle.wait(WAIT_S) != 0
    assert [u.state for u in agent.updates("t")] == ["TASK_RUNNING", "TASK_FINISHED"]
    agent.launch_task("e-clean", task_info("late"))
    late = agent.updates("late")[-1]
    assert (late.state, late.message) == ("TASK_LOST", "Executor terminated")


def test_launching_a_running_executor_id_again_is_refused(agent: LocalAgent) -> None:
    """One run per executor id at a time: a second launch while the first lives raises ValueError."""
    agent.launch_executor("e-twice", SLEEPER)
    with pytest.raises(ValueError, match="already running"):
        agent.launch_executor("e-twice", SLEEPER)


def test_stopping_the_agent_kills_executors_still_running(tmp_path: Path) -> None:
    """Leaving the with-block kills every live executor tree, so no process outlives the agent."""
    with LocalAgent(tmp_path / "agent") as agent:
        handle = agent.launch_executor("e-left", SLEEPER)
    assert handle.returncode == -signal.SIGKILL
