"""Command-executor replacement on a real agent: ``vm-isolation-agent-setup`` makes a launcher
directory whose ``mesos-executor`` is vm-isolation-executor; an agent started with
``--launcher_dir`` on it runs plain command tasks (no ExecutorInfo) in VMs.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from tests.mesos.cluster import MesosCluster
from tests.mesos.conftest import no_containers_left, record_timing
from tests.mesos.framework import run_mesos_execute
from tests.real.conftest import Leftovers
from vm_isolation.ids import name_prefix

SETUP = Path(sys.executable).parent / "vm-isolation-agent-setup"


def test_a_command_task_runs_in_a_vm_under_the_replaced_command_executor(
        new_cluster: MesosCluster, tmp_path: Path, leftovers: Leftovers) -> None:
    """mesos-execute --command (no executor) on an agent whose --launcher_dir was made by
    vm-isolation-agent-setup: STARTING, RUNNING, FINISHED, exit 0, and the task's stdout shows a
    vmiso- hostname; the agent ran our executor with executor id = task id."""
    before = leftovers.snapshot()
    launcher = tmp_path / "launcher"
    setup = [str(SETUP), "--launcher-dir", str(launcher), "--mesos-libexec", str(new_cluster.home.libexec)]
    subprocess.run(setup, check=True, capture_output=True, timeout=30)
    again = subprocess.run(setup, check=True, capture_output=True, text=True, timeout=30)
    assert "nothing changed" in again.stdout
    agent = new_cluster.start_agent(launcher_dir=launcher)
    name = f"cmd-{uuid.uuid4().hex[:6]}"
    run = run_mesos_execute(new_cluster, f"--name={name}", "--command=uname -n; echo command-marker")
    assert (run.returncode, run.states) == (0, ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]), run.stdout
    record_timing("command-executor replacement, mesos-execute --command", run.submitted_to("TASK_RUNNING"))
    framework_id = next(line.split()[-1] for _, line in run.lines if line.startswith("Subscribed with ID"))
    sandbox = agent.executor_directory(framework_id, name)  # the command executor's id is the task id
    out = agent.read_file(f"{sandbox}/stdout")
    assert out.startswith(name_prefix(name)) and out.endswith("\ncommand-marker\n"), out
    err = agent.read_file(f"{sandbox}/stderr")
    assert f"ignoring arguments meant for Mesos's own executor: --launcher_dir={launcher}" in err
    no_containers_left(agent)
    leftovers.assert_none_since(before, prefixes=[name_prefix(name)])
