"""Faults injected into real runs: each ends in a terminal status with a specific reason, and
nothing is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.real.conftest import Leftovers, restart_libvirtd
from tests.real.test_executor_e2e import BOOT_S, Run, task
from vm_isolation.config import Settings
from vm_isolation.journal import journal_path, read_journal
from vm_isolation.localagent import LocalAgent
from vm_isolation.ownership import Liveness, liveness
from vm_isolation.reaperwatch import reaper_watch_running
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


def config_with(settings: Settings, tmp_path: Path, old: str, new: str) -> Path:
    """The test configuration with one line replaced."""
    source = Path(settings.source or "/etc/vm-isolation/mesos.conf").read_text()
    assert old in source, old
    conf = tmp_path / "mesos.conf"
    conf.write_text(source.replace(old, new))
    return conf


def broken_image(tmp_path: Path, settings: Settings, how: str) -> Path:
    image = tmp_path / f"{how}.qcow2"
    if how == "missing":
        return image
    if how == "truncated":
        image.write_bytes(settings.images.base("busybox").read_bytes()[:100])
    else:  # a raw disk image where a qcow2 is configured
        image.write_bytes(b"\0" * 65536)
    return image


@pytest.mark.parametrize(("how", "says"), [("missing", "build-image"), ("truncated", "qcow2"),
                                           ("raw", "qemu-img convert")])
def test_an_unusable_base_image_fails_the_task_naming_the_fix(run: Run, tmp_path: Path, settings: Settings,
                                                              how: str, says: str) -> None:
    """A base image that is missing, cut short or not qcow2 gives TASK_FAILED naming what to do,
    before any guest exists."""
    image = broken_image(tmp_path, settings, how)
    eid, h = run.executor(config=config_with(settings, tmp_path, "path = busybox.qcow2", f"path = {image}"))
    run.launch(eid, task(f"image-{how}", "true"))
    final = run.agent.wait_for_terminal(f"image-{how}", 60)
    assert (final.state, final.reason) == ("TASK_FAILED", "REASON_CONTAINER_LAUNCH_FAILED"), final.message
    assert says in (final.message or ""), final.message
    assert h.wait(60) == 0
    run.assert_clean()


@pytest.mark.parametrize(("how", "says"), [("read-only", "not writable"), ("full", "full")])
def test_an_unwritable_overlay_directory_fails_the_task_naming_it(run: Run, tmp_path: Path, settings: Settings,
                                                                  tiny_mount: Path, how: str, says: str) -> None:
    """The overlay directory on a read-only or full filesystem (a real tmpfs): TASK_FAILED
    naming the directory, and nothing written there."""
    if how == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(tiny_mount)], check=True)
    else:
        with open(tiny_mount / "filler", "wb") as fh, pytest.raises(OSError):
            fh.write(b"\0" * (2 << 20))
    conf = config_with(settings, tmp_path, f"overlay_dir = {settings.vm.overlay_dir}", f"overlay_dir = {tiny_mount}")
    eid, h = run.executor(config=conf)
    run.launch(eid, task(f"overlay-{how}", "true"))
    final = run.agent.wait_for_terminal(f"overlay-{how}", 60)
    assert (final.state, final.reason) == ("TASK_FAILED", "REASON_CONTAINER_LAUNCH_FAILED"), final.message
    assert says in (final.message or "") and str(tiny_mount) in (final.message or ""), final.message
    assert h.wait(60) == 0
    assert not [p for p in tiny_mount.iterdir() if p.name.startswith("vmiso-")]
    run.assert_clean()


@pytest.mark.parametrize("when", ["TASK_STARTING", "TASK_RUNNING"])
def test_sigkill_of_the_executor_ends_its_guest_without_anyone_running_the_reaper(
        run: Run, settings: Settings, when: str) -> None:
    """SIGKILL of the executor (while booting, while running) is how the real agent destroys a
    container. The agent reports TASK_FAILED 'Executor terminated'; the guest's qemu belongs to
    libvirtd and would keep running the task, so the host's reaper watcher (started by host
    set-up) sees the owner file's lock gone and removes the domain, overlay, key and lease; the
    journal (found through the dead owner file) covers what existed before the domain did."""
    assert reaper_watch_running(settings), "host set-up (make setup) starts vm-isolation-reap --watch"
    task_id = f"sigkill-{when[5:].lower()}"
    eid, h = run.executor()
    run.launch(eid, task(task_id, "trap '' TERM; sleep 600"))
    run.agent.wait_for_state(task_id, when, BOOT_S)
    if when == "TASK_STARTING":  # wait until the boot created something, so there is work left
        poll_until(lambda: read_journal(journal_path(h.sandbox)).outstanding or None, Deadline.after(30),
                   what="the first journaled resource")
    left = read_journal(journal_path(h.sandbox))
    assert left.owner is not None and left.owner.executor_pid == h.pid
    assert Path(left.owner.owner_file).parent == settings.vm.owner_dir
    assert liveness(Path(left.owner.owner_file)) is Liveness.ALIVE
    if when == "TASK_RUNNING":
        assert {r.kind for r in left.outstanding} == {"overlay", "key_dir", "domain", "lease", "launcher"}
    killed_at = time.monotonic()
    os.kill(h.pid, signal.SIGKILL)
    final = run.agent.wait_for_terminal(task_id, 60)
    assert (final.state, final.reason, final.message) == (
        "TASK_FAILED", "REASON_EXECUTOR_TERMINATED", "Executor terminated")
    poll_until(lambda: True if not [d for d in run.leftovers.hv.owned_domains()
                                    if d.name.startswith(f"vmiso-{task_id}-")] else None,
               Deadline.after(20), interval_s=0.1, what="the dead executor's guest to be reaped")
    print(f"SIGKILL while {when}: domain gone {time.monotonic() - killed_at:.2f} s later")
    run.assert_clean()
    owner_file = Path(left.owner.owner_file)
    poll_until(lambda: True if not owner_file.exists() else None, Deadline.after(10),
               what="the watcher to delete the dead owner file once nothing of it is left")


def test_sigterm_of_the_executor_kills_its_tasks_and_cleans_up(run: Run) -> None:
    """SIGTERM (an operator, a wrapper) is handled like SHUTDOWN: TASK_KILLED, guest gone, exit 0."""
    eid, h = run.executor()
    run.launch(eid, task("sigterm", "sleep 600"))
    run.agent.wait_for_state("sigterm", "TASK_RUNNING", BOOT_S)
    os.kill(h.pid, signal.SIGTERM)
    assert run.agent.wait_for_terminal("sigterm", 60).state == "TASK_KILLED"
    assert h.wait(60) == 0
    run.assert_clean()


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
    conf = config_with(settings, tmp_path, "ssh_timeout_s = 60", "ssh_timeout_s = 8")
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


def test_duplicate_task_ids_and_kills_for_unknown_tasks_never_start_or_stop_the_wrong_guest(run: Run) -> None:
    """The agent answers a KILL for a task it does not know itself (TASK_LOST, 'Cannot find
    executor') and refuses a duplicate id. When a faulty agent passes them on anyway: a second
    LAUNCH of a running task starts no second guest and changes no status, a KILL for an unknown
    task is ignored, and reusing the id of a finished task gives TASK_ERROR naming the fix."""
    eid, h = run.executor()
    run.launch(eid, task("dup", "sleep 600"))
    run.launch(eid, task("once", "true"))
    run.agent.wait_for_state("dup", "TASK_RUNNING", BOOT_S)

    run.agent.kill_task(eid, "nosuch")
    lost = run.agent.wait_for_terminal("nosuch", 10)
    assert (lost.state, lost.reason, lost.message) == (
        "TASK_LOST", "REASON_EXECUTOR_TERMINATED", "Cannot find executor")
    with pytest.raises(ValueError, match="already in use"):
        run.agent.launch_task(eid, task("dup", "echo impostor"))

    assert run.agent.inject_unchecked(eid, {"type": "KILL", "kill": {"task_id": {"value": "nosuch-2"}}})
    assert run.agent.inject_unchecked(eid, {"type": "LAUNCH", "launch": {"task": task("dup", "echo impostor")}})
    poll_until(lambda: "ignoring a second LAUNCH of task 'dup'" in (h.sandbox / "stderr").read_text() or None,
               Deadline.after(10), what="the executor to log the duplicate")
    assert "KILL for unknown task 'nosuch-2'" in (h.sandbox / "stderr").read_text()
    domains = [n for n in run.leftovers.snapshot()["domains"] - run.before["domains"] if n.startswith("vmiso-dup-")]
    assert len(domains) == 1, domains

    assert run.agent.wait_for_terminal("once", BOOT_S).state == "TASK_FINISHED"
    assert run.agent.inject_unchecked(eid, {"type": "LAUNCH", "launch": {"task": task("once", "true")}})
    again = run.agent.wait_for_state("once", "TASK_ERROR", 10)
    assert again.reason == "REASON_TASK_INVALID" and "already used by this executor" in (again.message or "")

    assert run.states("dup") == ["TASK_STARTING", "TASK_RUNNING"]
    run.agent.kill_task(eid, "dup")
    assert run.agent.wait_for_terminal("dup", 30).state == "TASK_KILLED"
    assert "impostor" not in run.task_file(h, "dup", "stdout")
    assert h.wait(60) == 0
    assert run.agent.updates("nosuch-2") == []
    run.assert_clean()
