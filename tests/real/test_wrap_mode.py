"""Wrap mode end to end: the framework's own executor runs inside a guest and reports to the
agent stand-in itself; the wrapper lives as long as it does and leaves nothing behind."""

from __future__ import annotations

import json
import socket
import sys
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.real.conftest import Leftovers
from vm_isolation.config import Settings, conf_path
from vm_isolation.guest import GuestRequest
from vm_isolation.hostnet import bridge_ipv4
from vm_isolation.hypervisor import LibvirtHypervisor
from vm_isolation.ids import domain_name_for, name_prefix
from vm_isolation.journal import journal_path, read_journal
from vm_isolation.localagent import LocalAgent
from vm_isolation.waiting import Deadline, poll_until
from vm_isolation.wiring import real_launcher

INNER = Path(__file__).parent / "guest" / "inner_executor.py"
BOOT_S = 180.0


@pytest.fixture
def agent(tmp_path: Path, settings: Settings, hypervisor: LibvirtHypervisor) -> Iterator[LocalAgent]:
    """An agent stand-in listening on the host's address on the guests' network."""
    bridge = hypervisor.network(settings.libvirt.network).bridge
    with LocalAgent(tmp_path / "agent", host=bridge_ipv4(bridge)) as agent:
        yield agent


def wrapped(agent: LocalAgent, mode: str, grace_s: float = 5.0, *flags: str) -> tuple[str, Any]:
    executor_id = f"wrapped-{mode}-{uuid.uuid4().hex[:6]}"
    script = Path(sys.executable).parent / "vm-isolation-executor"
    argv = [str(script), "--config", str(conf_path()), "--wrap", *flags, "--", "python3", "inner_executor.py"]
    command = {"value": argv[0], "shell": False, "arguments": argv,
               "environment": {"variables": [{"name": "INNER_MODE", "value": mode}]}}
    return executor_id, agent.launch_executor(executor_id, command, files=[INNER], shutdown_grace_period_s=grace_s)


def task(task_id: str) -> dict[str, Any]:
    return {"name": task_id, "task_id": {"value": task_id},
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}}]}


def test_the_framework_executor_runs_in_the_guest_and_reports_itself(
        agent: LocalAgent, leftovers: Leftovers) -> None:
    """The inner executor subscribes from the VM, finishes the task with the guest's hostname and
    boot id, its result file is copied back, and the wrapper exits 0 leaving nothing."""
    before = leftovers.snapshot()
    eid, h = wrapped(agent, "finish")
    agent.launch_task(eid, task("wrapped-task"))
    final = agent.wait_for_terminal("wrapped-task", BOOT_S)
    assert final.state == "TASK_FINISHED"
    facts = json.loads(final.data or b"{}")
    assert facts["hostname"].startswith(name_prefix(eid))
    assert facts["boot_id"] != Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert facts["cwd"] == "/mnt/mesos/sandbox"
    assert h.wait(60) == 0
    assert json.loads((h.sandbox / "result.txt").read_text())["boot_id"] == facts["boot_id"]
    journal = read_journal(journal_path(h.sandbox))  # everything created was journaled and removed
    assert journal.owner is not None and journal.owner.executor_id == eid and journal.outstanding == []
    leftovers.assert_none_since(before, prefixes=[name_prefix(eid)])


def test_shutdown_reaches_the_inner_executor_and_the_guest_goes(agent: LocalAgent, leftovers: Leftovers) -> None:
    """SHUTDOWN goes to the inner executor (it records it), the wrapper exits and the VM is gone."""
    before = leftovers.snapshot()
    eid, h = wrapped(agent, "wait")
    agent.launch_task(eid, task("wrapped-wait"))
    agent.wait_for_state("wrapped-wait", "TASK_RUNNING", BOOT_S)
    agent.shutdown_executor(eid)
    assert h.wait(30) == 0
    assert (h.sandbox / "got-shutdown").read_text() == "SHUTDOWN received\n"
    leftovers.assert_none_since(before, prefixes=[name_prefix(eid)])


def test_a_crashing_inner_executor_fails_the_wrapper_and_the_task(agent: LocalAgent, leftovers: Leftovers) -> None:
    """An inner executor that exits 3 makes the wrapper exit 3: the agent reports TASK_FAILED
    'Executor terminated' for its task, and nothing is left."""
    before = leftovers.snapshot()
    eid, h = wrapped(agent, "crash")
    agent.launch_task(eid, task("wrapped-crash"))
    final = agent.wait_for_terminal("wrapped-crash", BOOT_S)
    assert h.wait(60) == 3
    assert (final.state, final.reason, final.message) == ("TASK_FAILED", "REASON_EXECUTOR_TERMINATED",
                                                          "Executor terminated")
    leftovers.assert_none_since(before, prefixes=[name_prefix(eid)])


@pytest.fixture
def loopback_agent(tmp_path: Path) -> Iterator[LocalAgent]:
    """An agent stand-in listening on 127.0.0.1 only: unreachable from guests."""
    with LocalAgent(tmp_path / "agent") as agent:
        yield agent


def test_an_unreachable_agent_is_tunnelled_over_ssh_when_asked(
        loopback_agent: LocalAgent, leftovers: Leftovers) -> None:
    """With --tunnel, an agent on 127.0.0.1 is reached through the SSH session and the task finishes."""
    before = leftovers.snapshot()
    eid, h = wrapped(loopback_agent, "finish", 5.0, "--tunnel")
    loopback_agent.launch_task(eid, task("tunnelled"))
    assert loopback_agent.wait_for_terminal("tunnelled", BOOT_S).state == "TASK_FINISHED"
    assert h.wait(60) == 0
    leftovers.assert_none_since(before, prefixes=[name_prefix(eid)])


def test_an_unreachable_agent_without_a_tunnel_fails_with_the_fix(
        loopback_agent: LocalAgent, leftovers: Leftovers) -> None:
    """Without --tunnel the wrapper exits non-zero naming the address it tried and the fix."""
    before = leftovers.snapshot()
    eid, h = wrapped(loopback_agent, "finish")
    loopback_agent.launch_task(eid, task("unreachable"))
    assert h.wait(BOOT_S) != 0
    log = (h.sandbox / "stderr").read_text()
    assert "is not reachable from the guest at" in log and "--ip=" in log and "--tunnel" in log
    assert loopback_agent.wait_for_terminal("unreachable", 30).message == "Executor terminated"
    leftovers.assert_none_since(before, prefixes=[name_prefix(eid)])


def test_a_v0_executor_in_the_guest_and_the_agent_can_reach_each_other(
        settings: Settings, hypervisor: LibvirtHypervisor, leftovers: Leftovers) -> None:
    """What a v0 (libprocess) executor needs, on the real network: the guest connects to the host's
    bridge address, and the host connects to a port the guest listens on at its LIBPROCESS_IP."""
    bridge_ip = bridge_ipv4(hypervisor.network(settings.libvirt.network).bridge)
    before = leftovers.snapshot()
    request = GuestRequest(name=domain_name_for("v0reach"), base_image=settings.images.base("python"))
    launcher = real_launcher(settings, hypervisor)
    with socket.create_server((bridge_ip, 0)) as host_side, launcher.boot(request) as guest, ExitStack() as stack:
        host_port = host_side.getsockname()[1]
        # The host is closed to guests: wrap mode opens the agent's port for its guest only.
        firewall = launcher.firewall
        firewall.open_port(guest.ip, host_port)
        stack.callback(firewall.close_port, guest.ip, host_port)
        code, _, err = guest.remote.run_capture(
            f"python3 -c 'import socket; socket.create_connection((\"{bridge_ip}\", {host_port}), timeout=10)'",
            timeout_s=60)
        assert code == 0, err
        host_side.settimeout(10)
        host_side.accept()[0].close()  # the guest's connection arrived
        guest.remote.run(f"setsid python3 -c 'import socket; s = socket.create_server((\"{guest.ip}\", 5051)); "
                         f"s.accept()' </dev/null >/dev/null 2>&1 &", timeout_s=30)
        connect = lambda: socket.create_connection((guest.ip, 5051), timeout=2)  # noqa: E731
        poll_until(lambda: _tries(connect), Deadline.after(30), what="the guest's listener")
    leftovers.assert_none_since(before, prefixes=[request.name])


def _tries(connect: Any) -> bool | None:
    try:
        connect().close()
        return True
    except OSError:
        return None
