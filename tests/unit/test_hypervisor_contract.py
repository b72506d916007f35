"""One contract, two hypervisors: what the lifecycle relies on holds for the fake it is
unit-tested on and for the libvirt adapter (on libvirt's own test driver, a private
``test:///<file>.xml`` node per test, so nothing touches libvirtd or another test)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.unit.fakes import FakeHypervisor
from vm_isolation.domainxml import DomainSpec, Owner
from vm_isolation.errors import NetworkUnavailable, NotFound
from vm_isolation.hosttypes import Hypervisor

NAME = "vmiso-contract-0123456789"
NODE = """<node>
  <network>
    <name>default</name>
    <bridge name="virbr0"/>
    <ip address="192.168.122.1" netmask="255.255.255.0">
      <dhcp><range start="192.168.122.2" end="192.168.122.254"/></dhcp>
    </ip>
  </network>
</node>
"""


def _spec(tmp_path: Path, domain_type: str) -> DomainSpec:
    return DomainSpec(
        name=NAME, domain_type=domain_type, vcpus=1, memory_mib=128,
        kernel=tmp_path / "vmlinux", initrd=tmp_path / "initrd", cmdline="console=ttyS0",
        disk=tmp_path / f"{NAME}.qcow2", mac="52:54:00:12:34:56", network="default",
        console_log=tmp_path / f"{NAME}.console", owner=Owner(task_id="contract"),
    )


def _fake(tmp_path: Path) -> tuple[Hypervisor, str]:
    return FakeHypervisor(), "qemu"


def _libvirt(tmp_path: Path) -> tuple[Hypervisor, str]:
    pytest.importorskip("libvirt", reason="the libvirt side of the contract needs libvirt-python")
    from vm_isolation.hypervisor import LibvirtHypervisor

    node = tmp_path / "node.xml"
    node.write_text(NODE)
    return LibvirtHypervisor(f"test://{node}"), "test"


@pytest.fixture(params=[_fake, _libvirt], ids=["fake", "libvirt-test-driver"])
def hv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Hypervisor, DomainSpec]]:
    make: Callable[[Path], tuple[Hypervisor, str]] = request.param
    hypervisor, domain_type = make(tmp_path)
    (tmp_path / f"{NAME}.console").touch()
    yield hypervisor, _spec(tmp_path, domain_type)


def test_a_domain_goes_defined_running_stopped_gone(hv: tuple[Hypervisor, DomainSpec]) -> None:
    """define -> shutoff, start -> running, destroy -> shutoff, undefine -> gone (None)."""
    hypervisor, spec = hv
    assert hypervisor.state(NAME) is None
    hypervisor.define(spec)
    assert hypervisor.state(NAME) == "shutoff"
    hypervisor.start(NAME)
    assert hypervisor.state(NAME) == "running"
    hypervisor.destroy(NAME)
    assert hypervisor.state(NAME) == "shutoff"
    hypervisor.undefine(NAME)
    assert hypervisor.state(NAME) is None


def test_teardown_of_what_is_not_there_is_fine(hv: tuple[Hypervisor, DomainSpec]) -> None:
    """Teardown runs on every path, so destroying a stopped or absent domain and undefining an
    absent one are no-ops, not errors."""
    hypervisor, spec = hv
    hypervisor.destroy(NAME)
    hypervisor.undefine(NAME)
    hypervisor.define(spec)
    hypervisor.destroy(NAME)
    hypervisor.undefine(NAME)
    hypervisor.undefine(NAME)
    assert hypervisor.state(NAME) is None


def test_the_guests_network_names_its_bridge_and_host_address(hv: tuple[Hypervisor, DomainSpec]) -> None:
    hypervisor, _ = hv
    info = hypervisor.require_active_network("default")
    assert (info.name, info.bridge, info.active, info.address) == ("default", "virbr0", True, "192.168.122.1")


def test_an_unknown_network_is_a_named_error(hv: tuple[Hypervisor, DomainSpec]) -> None:
    hypervisor, _ = hv
    with pytest.raises(NetworkUnavailable, match="no-such-net"):
        hypervisor.require_active_network("no-such-net")


def test_the_owner_can_be_switched_on_a_running_domain_and_read_back(hv: tuple[Hypervisor, DomainSpec]) -> None:
    """set_owner replaces the owner (the pool's hand-over), hostile text included; owner_of
    reads it back, None once the domain is gone; set_owner of an absent domain is NotFound."""
    hypervisor, spec = hv
    hypervisor.define(spec)
    hypervisor.start(NAME)
    assert hypervisor.owner_of(NAME) == spec.owner
    new = Owner(executor_id="e<&>'\"$(x)", task_id="t\n2", executor_pid=42, owner_file="/run/o/x.owner",
                created_at=5.5)
    hypervisor.set_owner(NAME, new)
    assert hypervisor.owner_of(NAME) == new
    hypervisor.destroy(NAME)
    hypervisor.undefine(NAME)
    assert hypervisor.owner_of(NAME) is None
    with pytest.raises(NotFound):
        hypervisor.set_owner(NAME, new)
