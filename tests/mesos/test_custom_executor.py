"""Generic mode on a real cluster: a framework's TaskInfo names vm-isolation-executor as its
custom executor and carries the command in ``data``; each task runs in its own real guest.

Two frameworks drive it: a pymesos scheduler written here, and the stock ``mesos-execute
--task=file://...``. Every test ends with no container on the agent and no domain, overlay,
key or lease of its tasks left.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Callable

from tests.mesos.cluster import Agent, MesosCluster
from tests.mesos.conftest import no_containers_left, record_timing
from tests.mesos.framework import Framework, run_mesos_execute, vm_task
from tests.real.conftest import Leftovers
from vm_isolation.ids import name_prefix
from vm_isolation.taskinfo import task_dir_name

BOOT_S = 180.0


def test_a_task_finishes_and_its_output_is_readable_through_the_agent(
        stock_agent: Agent, framework: Callable[[str], Framework], leftovers: Leftovers) -> None:
    """STARTING -> RUNNING -> FINISHED as the framework sees them; the task's stdout (guest
    hostname and a marker) is in the sandbox stdout and tasks/<task>/stdout via /files/read."""
    before = leftovers.snapshot()
    fw = framework("vmiso-generic")
    task_id = f"gen-{uuid.uuid4().hex[:6]}"
    fw.launch(stock_agent.id, [vm_task(task_id, "echo host=$(uname -n); echo generic-marker")])
    final = fw.wait_for_terminal(task_id, BOOT_S)
    assert fw.states(task_id) == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"], fw.updates(task_id)
    assert final.source == "SOURCE_EXECUTOR"
    assert {"overlay", "lease", "ssh", "run"} <= set(json.loads(final.data))
    record_timing("generic mode, pymesos scheduler", fw.launch_to(task_id, "TASK_RUNNING"))
    sandbox = stock_agent.executor_directory(fw.framework_id, f"{task_id}-executor")
    task_out = stock_agent.read_file(f"{sandbox}/tasks/{task_dir_name(task_id)}/stdout")
    first, *rest = task_out.splitlines()
    assert first.startswith(f"host={name_prefix(task_id)}") and rest == ["generic-marker"], task_out
    assert "generic-marker" in stock_agent.read_file(f"{sandbox}/stdout")
    fw.stop()
    no_containers_left(stock_agent)
    leftovers.assert_none_since(before, prefixes=[name_prefix(task_id)])


def test_a_failing_task_and_a_killed_task_report_what_happened(
        stock_agent: Agent, framework: Callable[[str], Framework], leftovers: Leftovers) -> None:
    """exit 3 ends in TASK_FAILED whose message carries the status; killTask of a running
    sleep ends in TASK_KILLED (both tasks boot at once, each in its own executor)."""
    before = leftovers.snapshot()
    fw = framework("vmiso-generic-fail-kill")
    failing, killed = f"fail-{uuid.uuid4().hex[:6]}", f"kill-{uuid.uuid4().hex[:6]}"
    fw.launch(stock_agent.id, [vm_task(failing, "exit 3"), vm_task(killed, "sleep 600")])
    fw.wait_for_state(killed, "TASK_RUNNING", BOOT_S)
    fw.kill(killed)
    fail = fw.wait_for_terminal(failing, BOOT_S)
    assert fw.states(failing) == ["TASK_STARTING", "TASK_RUNNING", "TASK_FAILED"]
    assert fail.reason == "REASON_COMMAND_EXECUTOR_FAILED" and "exit status 3" in fail.message
    kill = fw.wait_for_terminal(killed, 60)
    assert fw.states(killed) == ["TASK_STARTING", "TASK_RUNNING", "TASK_KILLED"]
    assert kill.source == "SOURCE_EXECUTOR"
    fw.stop()
    no_containers_left(stock_agent)
    leftovers.assert_none_since(before, prefixes=[name_prefix(failing), name_prefix(killed)])


def test_mesos_execute_runs_a_custom_executor_task_from_a_file(
        cluster: MesosCluster, stock_agent: Agent, tmp_path: Path, leftovers: Leftovers) -> None:
    """``mesos-execute --task=file://...`` with executor + data (and the agent_id placeholder its
    parser insists on) prints STARTING, RUNNING, FINISHED and exits 0."""
    before = leftovers.snapshot()
    task_id = f"mx-{uuid.uuid4().hex[:6]}"
    info = vm_task(task_id, "uname -n; echo mesos-execute-marker")
    # NOTE: mesos-execute's --help says agent_id "need not to be set", but without it the
    # flag fails to load ("Missing required fields: agent_id"); it overwrites the value.
    info["agent_id"] = {"value": ""}
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(info))
    run = run_mesos_execute(cluster, f"--task=file://{task_file}")
    assert (run.returncode, run.states) == (0, ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]), run.stdout
    assert f"running in guest {name_prefix(task_id)}" in run.stdout
    record_timing("generic mode, mesos-execute --task", run.submitted_to("TASK_RUNNING"))
    no_containers_left(stock_agent)
    leftovers.assert_none_since(before, prefixes=[name_prefix(task_id)])
