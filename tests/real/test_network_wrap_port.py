"""Wrap mode's per-guest opening of the agent's port, through the real wrapper
(vm-isolation-executor --wrap under the agent stand-in), on a network of the test's own
(tests/real/ownnet.py; the wrapper is pointed at it by VM_ISOLATION_LIBVIRT_NETWORK):

* the inner executor subscribes through the opening (control), another guest on the same
  network cannot connect to that port;
* after the wrapper's teardown, and after the reaper has cleaned up behind a SIGKILLed wrapper,
  no per-guest state is left: no element in the network's table, its rules as before, nothing
  of the guest's port or address in the address guard's table.

The wrapper's owner files live in a directory of the test: the host's reaper watcher counts
such owners as alive and leaves the SIGKILLed wrapper's guest to this test's reap.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.real.ownnet import (
    OwnNetwork,
    guard_binds,
    guard_forgot,
    interfaces,
    own_network,
    table_elements,
    table_rules,
    tcp_reaches,
)
from vm_isolation import hostfirewall
from vm_isolation.config import Settings, conf_path
from vm_isolation.guest import Guest, GuestRequest
from vm_isolation.hypervisor import LibvirtHypervisor
from vm_isolation.ids import domain_name_for, name_prefix
from vm_isolation.journal import journal_path
from vm_isolation.leases import Leases
from vm_isolation.localagent import LocalAgent
from vm_isolation.localagent.agent import ExecutorHandle
from vm_isolation.reaper import Kind, reap
from vm_isolation.waiting import Deadline, poll_until
from vm_isolation.wiring import agent_ports

INNER = Path(__file__).parent / "guest" / "inner_executor.py"
BOOT_S = 180.0


@pytest.fixture(scope="module")
def net(settings: Settings, hypervisor: LibvirtHypervisor) -> Iterator[OwnNetwork]:
    with own_network(settings, hypervisor) as own:
        yield own


@pytest.fixture
def agent(tmp_path: Path, net: OwnNetwork) -> Iterator[LocalAgent]:
    """The agent stand-in listening on the host's address on the test's network."""
    with LocalAgent(tmp_path / "agent", host=net.address) as agent:
        yield agent


@pytest.fixture
def other_guest(net: OwnNetwork) -> Iterator[Guest]:
    """Guest B on the same network, to try the opened port from."""
    leftovers = net.leftovers()
    before = leftovers.snapshot()
    req = GuestRequest(name=domain_name_for("wrapother"), base_image=net.settings.images.base("busybox"))
    with net.launcher().boot(req) as guest:
        mac = guest.mac
        yield guest
    leftovers.assert_none_since(before, {mac}, prefixes=[req.name])


def launch_wrapped(agent: LocalAgent, net: OwnNetwork, owner_dir: Path) -> tuple[str, ExecutorHandle]:
    """The inner executor in `wait` mode (its task runs until SHUTDOWN), wrapped, on our network."""
    owner_dir.mkdir(exist_ok=True)
    owner_dir.chmod(0o1777)
    executor_id = f"wrapport-{uuid.uuid4().hex[:6]}"
    script = Path(sys.executable).parent / "vm-isolation-executor"
    argv = [str(script), "--config", str(conf_path()), "--wrap", "--", "python3", "inner_executor.py"]
    command = {"value": argv[0], "shell": False, "arguments": argv,
               "environment": {"variables": [{"name": "INNER_MODE", "value": "wait"}]}}
    env = {"VM_ISOLATION_LIBVIRT_NETWORK": net.name, "VM_ISOLATION_VM_OWNER_DIR": str(owner_dir)}
    handle = agent.launch_executor(executor_id, command, extra_env=env, files=[INNER], shutdown_grace_period_s=5.0)
    task: dict[str, Any] = {"name": executor_id, "task_id": {"value": executor_id},
                            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}}]}
    agent.launch_task(executor_id, task)
    agent.wait_for_state(executor_id, "TASK_RUNNING", BOOT_S)
    return executor_id, handle


def wrap_guest(net: OwnNetwork, executor_id: str) -> tuple[str, str, str]:
    """(domain, IP, host-side device) of the wrapper's guest."""
    [domain] = [d for d in net.hv.owned_domains() if d.name.startswith(name_prefix(executor_id))]
    [(mac, dev)] = interfaces(net.settings.libvirt.uri, domain.name).items()
    [lease] = Leases(net.hv).all_for(net.name, mac)
    return domain.name, lease.ip, dev


def test_only_the_wrapped_guest_reaches_the_agent_port_and_teardown_leaves_no_rule(
        net: OwnNetwork, agent: LocalAgent, other_guest: Guest, tmp_path: Path) -> None:
    """While the wrapped executor's task runs (it subscribed from its guest through the opening:
    the control), the table holds exactly one opening, for that guest and the agent's port, and
    guest B cannot connect to the port. After SHUTDOWN the wrapper exits 0 and the opening, the
    guest's address-guard bindings and the guest are gone; the table's rules are as installed."""
    leftovers = net.leftovers()
    before, rules = leftovers.snapshot(), table_rules(net.table)
    port = int(agent.endpoint.rsplit(":", 1)[1])
    executor_id, handle = launch_wrapped(agent, net, tmp_path / "owners")
    name, ip, dev = wrap_guest(net, executor_id)
    assert hostfirewall.opened_ports(net.table) == {(ip, port)}
    assert guard_binds(dev, ip)
    assert not tcp_reaches(other_guest, net.address, port)
    assert tcp_reaches(other_guest, net.address, 53)  # control: B reaches what it may
    agent.shutdown_executor(executor_id)
    assert handle.wait(60) == 0
    assert table_elements(net.table) == [] and table_rules(net.table) == rules
    assert net.hv.state(name) is None
    poll_until(lambda: True if guard_forgot(dev, ip) else None, Deadline.after(10),
               what=f"the address guard to forget {dev} and {ip}")
    leftovers.assert_none_since(before, prefixes=[name_prefix(executor_id)])


def test_the_reaper_closes_a_killed_wrappers_opening_and_its_guest_leaves_no_binding(
        net: OwnNetwork, agent: LocalAgent, tmp_path: Path) -> None:
    """The agent SIGKILLs a wrapper: its guest and opening stay (no teardown ran). The reaper
    (given the network's table, as vm-isolation-reap is by wiring.agent_ports) removes the guest
    and closes the opening; no element, binding or extra rule is left."""
    owner_dir = tmp_path / "owners"
    settings = dataclasses.replace(net.settings, vm=dataclasses.replace(net.settings.vm, owner_dir=owner_dir))
    leftovers = net.leftovers()
    before, rules = leftovers.snapshot(), table_rules(net.table)
    port = int(agent.endpoint.rsplit(":", 1)[1])
    executor_id, handle = launch_wrapped(agent, net, owner_dir)
    name, ip, dev = wrap_guest(net, executor_id)
    os.kill(handle.pid, signal.SIGKILL)
    assert handle.wait(30) == -signal.SIGKILL
    assert net.hv.state(name) == "running" and hostfirewall.opened_ports(net.table) == {(ip, port)}
    assert guard_binds(dev, ip)
    report = reap(settings, net.hv, Leases(net.hv), only_executor_id=executor_id,
                  journals=[journal_path(handle.sandbox)], ports=agent_ports(settings))
    assert report.ok, report.errors
    assert {f.kind for f in report.found} >= {Kind.DOMAIN, Kind.AGENT_PORT}
    assert net.hv.state(name) is None
    assert table_elements(net.table) == [] and table_rules(net.table) == rules
    poll_until(lambda: True if guard_forgot(dev, ip) else None, Deadline.after(10),
               what=f"the address guard to forget {dev} and {ip}")
    leftovers.assert_none_since(before, prefixes=[name_prefix(executor_id)])
