"""The agent's default --switch_user: the executor runs as the framework's user, not root.

A user that host set-up was not told about gets TASK_FAILED naming what it cannot use and the
command that fixes it; a user set up with ``scripts/host-setup.sh --executor-user NAME`` runs
tasks in VMs like root does. The agent's work directory is one every user can traverse (the
sandbox is chowned to the framework's user; a parent under /tmp/pytest-of-root is 0700).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.mesos.cluster import Agent, MesosCluster, MesosHome
from tests.mesos.conftest import no_containers_left
from tests.mesos.framework import Framework, vm_task
from tests.mesos.test_lifecycle import BOOT_S, executor_pid
from tests.real.conftest import Leftovers
from vm_isolation.ids import name_prefix

REPO = Path(__file__).resolve().parents[2]
SET_UP = "vmiso-fw"
NOT_SET_UP = "vmiso-fw-noaccess"


def ensure_user(name: str) -> None:
    if subprocess.run(["id", "-u", name], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)


def can_run_the_venv(user: str) -> str:
    """'' if ``user`` can run this venv's executor; else what stops it."""
    probe = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", sys.executable,
                            "-c", "import vm_isolation.cli.executor"], capture_output=True, text=True)
    return "" if probe.returncode == 0 else probe.stderr.strip()[-300:]


def reach_the_checkout(user: str) -> None:
    """An operator installs vm-isolation where every framework user can run it (/opt/...). A
    checkout may sit under a private directory (/root is 0700): give ``user`` search permission
    (execute only, by an ACL naming that user alone) on each ancestor it cannot traverse."""
    uid = int(subprocess.run(["id", "-u", user], capture_output=True, text=True, check=True).stdout)
    for directory in [*reversed(REPO.parents), REPO, *reversed(Path(sys.executable).resolve().parents)]:
        st = directory.stat()
        if st.st_mode & 0o001 or (st.st_uid == uid and st.st_mode & 0o100):
            continue
        subprocess.run(["setfacl", "-m", f"u:{user}:x", str(directory)], check=True)
        print(f"granted {user} search permission on {directory} (ACL)")


@pytest.fixture(scope="module")
def users() -> None:
    ensure_user(SET_UP)
    ensure_user(NOT_SET_UP)
    subprocess.run([str(REPO / "scripts" / "host-setup.sh"), "--executor-user", SET_UP], check=True,
                   capture_output=True, timeout=600)
    for user in (SET_UP, NOT_SET_UP):  # the latter must start, and then find what it lacks
        reach_the_checkout(user)
    problem = can_run_the_venv(SET_UP)
    assert not problem, (f"user {SET_UP} cannot run {sys.executable} ({problem}): the checkout and its venv "
                         "must be readable by framework users (the Makefile builds the venv on Debian's python3)")


@pytest.fixture(scope="module")
def switching(mesos_home: MesosHome, users: None,
              request: pytest.FixtureRequest) -> Iterator[tuple[MesosCluster, Agent]]:
    """A master and an agent with the default --switch_user, under a directory all may traverse
    (kept, with the daemons' logs, when a test here failed)."""
    base = Path(tempfile.mkdtemp(prefix="vmiso-switch-user-", dir="/var/tmp"))
    base.chmod(0o755)
    cluster = MesosCluster(mesos_home, base)
    failed_before = request.session.testsfailed
    try:
        cluster.start_master()
        yield cluster, cluster.start_agent(attributes="vmiso_way:switch_user")
    finally:
        cluster.stop()
        if request.session.testsfailed == failed_before:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base} (master and agent logs) for the failure above")
    assert cluster.killed_executors == []


def test_a_framework_user_without_access_gets_a_failure_naming_the_fix(
        switching: tuple[MesosCluster, Agent], leftovers: Leftovers) -> None:
    cluster, agent = switching
    before = leftovers.snapshot()
    fw = Framework(cluster.master_address, f"vmiso-noaccess-{uuid.uuid4().hex[:6]}", user=NOT_SET_UP).start()
    try:
        task_id = f"noacc-{uuid.uuid4().hex[:6]}"
        fw.launch(agent.id, [vm_task(task_id, "true")])
        final = fw.wait_for_terminal(task_id, BOOT_S)
        assert (final.state, final.reason) == ("TASK_FAILED", "REASON_CONTAINER_LAUNCH_FAILED"), final
        assert f"runs as user '{NOT_SET_UP}'" in final.message, final.message
        assert f"scripts/host-setup.sh --executor-user {NOT_SET_UP}" in final.message, final.message
        assert "libvirtd's socket" in final.message and "[vm] overlay_dir" in final.message, final.message
    finally:
        fw.stop()
    no_containers_left(agent)
    leftovers.assert_none_since(before, prefixes=[name_prefix(task_id)])


def test_a_framework_user_set_up_by_host_setup_runs_tasks_in_vms(
        switching: tuple[MesosCluster, Agent], leftovers: Leftovers) -> None:
    cluster, agent = switching
    before = leftovers.snapshot()
    fw = Framework(cluster.master_address, f"vmiso-user-{uuid.uuid4().hex[:6]}", user=SET_UP).start()
    try:
        task_id = f"user-{uuid.uuid4().hex[:6]}"
        fw.launch(agent.id, [vm_task(task_id, "sleep 600")])
        fw.wait_for_state(task_id, "TASK_RUNNING", BOOT_S)
        pid = executor_pid(agent, f"{task_id}-executor")
        uid_line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                        if line.startswith("Uid:"))
        assert uid_line.split()[1] == subprocess.run(["id", "-u", SET_UP], capture_output=True, text=True,
                                                     check=True).stdout.strip()
        fw.kill(task_id)
        assert fw.wait_for_terminal(task_id, 60).state == "TASK_KILLED"
        assert fw.states(task_id) == ["TASK_STARTING", "TASK_RUNNING", "TASK_KILLED"]
    finally:
        fw.stop()
    no_containers_left(agent)
    leftovers.assert_none_since(before, prefixes=[name_prefix(task_id)])
