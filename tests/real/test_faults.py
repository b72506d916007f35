"""Faults injected into real runs: each ends in a terminal status with a specific reason, and
nothing is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.real.conftest import Leftovers
from tests.real.test_executor_e2e import BOOT_S, Run, task
from vm_isolation.config import Settings
from vm_isolation.localagent import LocalAgent
from vm_isolation.waiting import Deadline, poll_until


@pytest.fixture
def run(tmp_path: Path, leftovers: Leftovers) -> Iterator[Run]:
    with LocalAgent(tmp_path / "agent") as agent:
        yield Run(agent, leftovers)


def test_a_guest_powered_off_from_outside_fails_the_task(run: Run, settings: Settings) -> None:
    """`virsh destroy` of a running task's guest gives TASK_FAILED naming the lost guest."""
    eid, h = run.executor()
    run.launch(eid, task("poweroff", "sleep 600"))
    running = run.agent.wait_for_state("poweroff", "TASK_RUNNING", BOOT_S)
    domain = running.message.rsplit(" ", 1)[-1] if running.message else ""
    assert domain.startswith("vmiso-poweroff-")
    subprocess.run(["virsh", "-c", settings.libvirt.uri, "destroy", domain], check=True, capture_output=True)
    final = run.agent.wait_for_terminal("poweroff", 90)
    assert (final.state, final.reason) == ("TASK_FAILED", "REASON_COMMAND_EXECUTOR_FAILED")
    assert "stopped while the command ran" in (final.message or "")
    assert h.wait(60) == 0
    run.assert_clean()


def test_a_missing_base_image_fails_the_task_with_the_fix(run: Run, tmp_path: Path, settings: Settings) -> None:
    """A configured base image that does not exist gives TASK_FAILED naming the build command."""
    conf = tmp_path / "mesos.conf"
    source = Path(settings.source or "/etc/vm-isolation/mesos.conf").read_text()
    conf.write_text(source.replace("path = busybox.qcow2", f"path = {tmp_path}/missing.qcow2"))
    eid, h = run.executor(config=conf)
    info = task("noimage", "true")
    run.launch(eid, info)
    final = run.agent.wait_for_terminal("noimage", 60)
    assert (final.state, final.reason) == ("TASK_FAILED", "REASON_CONTAINER_LAUNCH_FAILED"), final.message
    assert "build-image" in (final.message or "")
    assert h.wait(60) == 0
    run.assert_clean()


def reap_cli(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "vm-isolation-reap"
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("when", ["TASK_STARTING", "TASK_RUNNING"])
def test_sigkill_of_the_executor_leaves_work_for_the_reaper_which_removes_it(run: Run, when: str) -> None:
    """SIGKILL of the executor (while booting, while running): the agent reports TASK_FAILED
    'Executor terminated', and vm-isolation-reap then removes the guest, overlay, key and lease."""
    task_id = f"sigkill-{when[5:].lower()}"
    eid, h = run.executor()
    run.launch(eid, task(task_id, "sleep 600"))
    run.agent.wait_for_state(task_id, when, BOOT_S)
    os.kill(h.pid, signal.SIGKILL)
    final = run.agent.wait_for_terminal(task_id, 60)
    assert (final.state, final.reason, final.message) == (
        "TASK_FAILED", "REASON_EXECUTOR_TERMINATED", "Executor terminated")
    listed = reap_cli("--dry-run", "--json")
    assert listed.returncode == 0, listed.stderr
    if when == "TASK_RUNNING":  # the guest outlived its executor (qemu is libvirtd's child)
        found = [f["name"] for f in json.loads(listed.stdout)["found"] if f["kind"] == "domain"]
        assert any(name.startswith(f"vmiso-{task_id}-") for name in found), found
    reaped = reap_cli("--json")
    assert reaped.returncode == 0, reaped.stderr
    assert json.loads(reaped.stdout)["errors"] == []
    run.assert_clean()


def test_sigterm_of_the_executor_kills_its_tasks_and_cleans_up(run: Run) -> None:
    """SIGTERM (an operator, a wrapper) is handled like SHUTDOWN: TASK_KILLED, guest gone, exit 0."""
    eid, h = run.executor()
    run.launch(eid, task("sigterm", "sleep 600"))
    run.agent.wait_for_state("sigterm", "TASK_RUNNING", BOOT_S)
    os.kill(h.pid, signal.SIGTERM)
    assert run.agent.wait_for_terminal("sigterm", 60).state == "TASK_KILLED"
    assert h.wait(60) == 0
    run.assert_clean()


def restart_libvirtd() -> None:
    pid = int(Path("/run/libvirtd.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    poll_until(lambda: None if Path(f"/proc/{pid}").exists() else True, Deadline.after(30),
               what="libvirtd to stop")
    setup = Path(__file__).resolve().parents[2] / "scripts" / "host-setup.sh"
    subprocess.run([str(setup)], check=True, capture_output=True, timeout=120)


def test_a_libvirtd_restart_under_a_running_task_is_survived(run: Run) -> None:
    """libvirtd restarts while a task runs: the guest keeps running, the executor reconnects, the
    task finishes and teardown still removes everything."""
    eid, h = run.executor()
    run.launch(eid, task("libvirtd-restart", "sleep 12; echo survived"))
    run.agent.wait_for_state("libvirtd-restart", "TASK_RUNNING", BOOT_S)
    restart_libvirtd()
    final = run.agent.wait_for_terminal("libvirtd-restart", 90)
    assert final.state == "TASK_FINISHED", final.message
    assert h.wait(60) == 0
    run.assert_clean()


def test_a_guest_that_never_answers_ssh_fails_in_phase_ssh(run: Run, tmp_path: Path, settings: Settings) -> None:
    """With the guests' SSH port dropped by the host firewall, the task fails naming phase ssh
    and the guest's console, and nothing is left."""
    conf = tmp_path / "mesos.conf"
    source = Path(settings.source or "/etc/vm-isolation/mesos.conf").read_text()
    conf.write_text(source.replace("ssh_timeout_s = 60", "ssh_timeout_s = 8"))
    rule = ["OUTPUT", "-o", "virbr0", "-p", "tcp", "--dport", "22", "-m", "comment",
            "--comment", "vm-isolation-test", "-j", "DROP"]
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        eid, h = run.executor(config=conf)
        run.launch(eid, task("nossh", "true"))
        final = run.agent.wait_for_terminal("nossh", BOOT_S)
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True)
    assert (final.state, final.reason) == ("TASK_FAILED", "REASON_CONTAINER_LAUNCH_FAILED")
    assert "phase ssh" in (final.message or "") and "VMISO-HOSTKEY" in (final.message or "")
    assert h.wait(60) == 0
    run.assert_clean()
