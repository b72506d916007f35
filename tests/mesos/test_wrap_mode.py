"""Wrap mode on a real cluster: a framework's own executor (tests/real/guest/inner_executor.py,
a stdlib v1 HTTP executor) is fetched by the real fetcher, run inside a guest by
``vm-isolation-executor --wrap``, and subscribes to the real agent from there.

The agent listens on the host's address on the guests' network (found from the libvirt
network), so the guest can reach it.
"""

from __future__ import annotations

import json
import shlex
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Any, Callable

from tests.mesos.cluster import Agent, MesosCluster
from tests.mesos.conftest import no_containers_left, record_timing
from tests.mesos.framework import Framework, scalar
from tests.real.conftest import Leftovers
from vm_isolation.ids import name_prefix
from vm_isolation.waiting import Deadline, poll_until

INNER = Path(__file__).resolve().parents[1] / "real" / "guest" / "inner_executor.py"
EXECUTOR = Path(sys.executable).parent / "vm-isolation-executor"
BOOT_S = 180.0


def wrapped_task(task_id: str, executor_id: str, command: dict[str, Any], mode: str,
                 uris: list[dict[str, Any]]) -> dict[str, Any]:
    command = {**command, "uris": uris,
               "environment": {"variables": [{"name": "INNER_MODE", "value": mode}]}}
    return {"name": task_id, "task_id": {"value": task_id},
            "resources": [scalar("cpus", 0.5), scalar("mem", 64)],
            "executor": {"executor_id": {"value": executor_id}, "type": "CUSTOM", "name": "wrapped inner executor",
                         "command": command, "resources": [scalar("cpus", 0.1), scalar("mem", 32)],
                         "shutdown_grace_period": {"nanoseconds": 10_000_000_000}}}


def argv_form(*inner: str) -> dict[str, Any]:
    argv = ["vm-isolation-executor", "--wrap", "--", *inner]
    return {"value": str(EXECUTOR), "shell": False, "arguments": argv}


def test_the_fetched_executor_runs_in_the_guest_and_finishes_its_task(
        stock_agent: Agent, framework: Callable[[str], Framework], leftovers: Leftovers) -> None:
    """inner_executor.py from a file:// URI, `--wrap -- python3 inner_executor.py`: the framework
    sees RUNNING then FINISHED from SOURCE_EXECUTOR, with data proving it ran in the guest; the
    wrapper exits 0 and its guest is gone."""
    before = leftovers.snapshot()
    fw = framework("vmiso-wrap")
    task_id, executor_id = f"wrapped-{uuid.uuid4().hex[:6]}", f"wrap-{uuid.uuid4().hex[:6]}"
    fw.launch(stock_agent.id, [wrapped_task(task_id, executor_id, argv_form("python3", "inner_executor.py"),
                                            "finish", [{"value": f"file://{INNER}"}])])
    final = fw.wait_for_terminal(task_id, BOOT_S)
    assert fw.states(task_id) == ["TASK_RUNNING", "TASK_FINISHED"], fw.updates(task_id)
    assert final.source == "SOURCE_EXECUTOR"
    facts = json.loads(final.data)
    assert facts["hostname"].startswith(name_prefix(executor_id)) and facts["cwd"] == "/mnt/mesos/sandbox"
    assert facts["boot_id"] != Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    record_timing("wrap mode, pymesos scheduler, inner v1 executor", fw.launch_to(task_id, "TASK_RUNNING"))
    no_containers_left(stock_agent)  # it exited by itself, after its terminal update was acknowledged
    sandbox = stock_agent.executor_directory(fw.framework_id, executor_id)
    assert json.loads(stock_agent.read_file(f"{sandbox}/result.txt"))["boot_id"] == facts["boot_id"]
    assert "inner executor exited with exit status 0" in stock_agent.read_file(f"{sandbox}/stderr")
    assert agent_saw_exit(stock_agent, executor_id) == "0"
    leftovers.assert_none_since(before, prefixes=[name_prefix(executor_id)])


def test_hadoops_cd_then_executor_command_runs_in_the_same_directory_in_the_guest(
        stock_agent: Agent, framework: Callable[[str], Framework], leftovers: Leftovers, tmp_path: Path) -> None:
    """The Hadoop recipe: a fetched tarball is extracted to hadoop-x/, the executor command is
    `cd hadoop-* && vm-isolation-executor --wrap --shell 'python3 bin/...'`; the inner executor
    runs in /mnt/mesos/sandbox/hadoop-x and finishes its task."""
    before = leftovers.snapshot()
    tarball = tmp_path / "hadoop-x.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(INNER, arcname="hadoop-x/bin/inner_executor.py")
    fw = framework("vmiso-wrap-hadoop")
    task_id, executor_id = f"hadoop-{uuid.uuid4().hex[:6]}", f"hadoop-exec-{uuid.uuid4().hex[:6]}"
    shell = f"cd hadoop-* && exec {shlex.quote(str(EXECUTOR))} --wrap --shell 'python3 bin/inner_executor.py'"
    fw.launch(stock_agent.id, [wrapped_task(task_id, executor_id, {"value": shell, "shell": True}, "finish",
                                            [{"value": f"file://{tarball}", "extract": True}])])
    final = fw.wait_for_terminal(task_id, BOOT_S)
    assert fw.states(task_id) == ["TASK_RUNNING", "TASK_FINISHED"], fw.updates(task_id)
    assert json.loads(final.data)["cwd"] == "/mnt/mesos/sandbox/hadoop-x"
    record_timing("wrap mode, Hadoop recipe (cd + --shell)", fw.launch_to(task_id, "TASK_RUNNING"))
    no_containers_left(stock_agent)
    sandbox = stock_agent.executor_directory(fw.framework_id, executor_id)
    assert "cwd" in json.loads(stock_agent.read_file(f"{sandbox}/hadoop-x/result.txt"))
    leftovers.assert_none_since(before, prefixes=[name_prefix(executor_id)])


def test_a_framework_teardown_shuts_the_inner_executor_down_and_the_wrapper_exits(
        cluster: MesosCluster, stock_agent: Agent, framework: Callable[[str], Framework], leftovers: Leftovers) -> None:
    """Driver stop without failover (TEARDOWN): the agent sends SHUTDOWN to the inner executor in
    the guest, which records it and exits 0 (it sends no TASK_KILLED: the master marks the task
    KILLED itself); the wrapper copies its files back and exits 0; nothing is left."""
    before = leftovers.snapshot()
    fw = framework("vmiso-wrap-teardown")
    task_id, executor_id = f"wrapwait-{uuid.uuid4().hex[:6]}", f"wrapwait-{uuid.uuid4().hex[:6]}"
    fw.launch(stock_agent.id, [wrapped_task(task_id, executor_id, argv_form("python3", "inner_executor.py"),
                                            "wait", [{"value": f"file://{INNER}"}])])
    fw.wait_for_state(task_id, "TASK_RUNNING", BOOT_S)
    record_timing("wrap mode (second run)", fw.launch_to(task_id, "TASK_RUNNING"))
    framework_id = fw.framework_id
    fw.stop()
    no_containers_left(stock_agent)
    sandbox = stock_agent.executor_directory(framework_id, executor_id)
    assert stock_agent.read_file(f"{sandbox}/got-shutdown") == "SHUTDOWN received\n"
    assert agent_saw_exit(stock_agent, executor_id) == "0"
    assert fw.states(task_id) == ["TASK_RUNNING"]  # the framework is gone: it hears nothing more
    assert cluster.task_state(framework_id, task_id) == "TASK_KILLED"  # the master's own verdict
    leftovers.assert_none_since(before, prefixes=[name_prefix(executor_id)])


def agent_saw_exit(agent: Agent, executor_id: str) -> str:
    """The exit status the agent logged for the executor ("Executor 'X' of framework F exited with status N")."""
    def logged() -> str | None:
        for line in agent.daemon.log.read_text(errors="replace").splitlines():
            if f"Executor '{executor_id}' of framework" in line and " exited with status " in line:
                return line.rsplit(" exited with status ", 1)[1].strip()
        return None
    return poll_until(logged, Deadline.after(30), what=f"the agent's log line for executor {executor_id}'s exit")
