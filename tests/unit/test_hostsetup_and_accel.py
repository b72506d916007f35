"""Network tuning XML and the choice of domain type."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vm_isolation import hostfirewall
from vm_isolation.accel import resolve_domain_type
from vm_isolation.config import Settings
from vm_isolation.errors import NotFound
from vm_isolation.hostsetup import DNSMASQ_NS, ensure_firewall, ensure_network, tuned_network_xml
from vm_isolation.hosttypes import NetworkInfo

STOCK = """<network>
  <name>default</name>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
  </ip>
</network>"""


def test_stock_network_gets_stp_off_and_no_ping() -> None:
    """Tuning turns STP off and adds dnsmasq's no-ping option, keeping everything else."""
    tuned = tuned_network_xml(STOCK)
    assert tuned is not None
    assert "stp=\"off\"" in tuned
    assert DNSMASQ_NS in tuned and "no-ping" in tuned
    assert "192.168.122.254" in tuned


def test_tuning_is_idempotent() -> None:
    """An already tuned network needs no change (so it is never restarted needlessly)."""
    once = tuned_network_xml(STOCK)
    assert once is not None
    assert tuned_network_xml(once) is None


def test_explicit_domain_types_are_kept(tmp_path: Path) -> None:
    """kvm and qemu are used as configured."""
    assert resolve_domain_type("kvm", dev_kvm=tmp_path / "none") == "kvm"
    assert resolve_domain_type("qemu") == "qemu"


def test_auto_falls_back_to_qemu_without_kvm_or_under_pvm(tmp_path: Path) -> None:
    """auto: no /dev/kvm, or a kvm_pvm host, means software emulation."""
    assert resolve_domain_type("auto", dev_kvm=tmp_path / "none", sys_module=tmp_path) == "qemu"
    kvm = tmp_path / "kvm"
    kvm.write_text("")
    assert resolve_domain_type("auto", dev_kvm=kvm, sys_module=tmp_path) == "kvm"
    (tmp_path / "kvm_pvm").mkdir()
    assert resolve_domain_type("auto", dev_kvm=kvm, sys_module=tmp_path) == "qemu"


class _Networks:
    """What ensure_network/ensure_firewall ask libvirt, for networks that may not exist."""

    def __init__(self, defined: dict[str, str]) -> None:
        self.defined = dict(defined)

    def network_xml(self, name: str) -> str:
        if name not in self.defined:
            raise NotFound(name)
        return self.defined[name]

    def redefine_network(self, name: str, xml: str, *, restart: bool) -> None:
        self.defined[name] = xml

    def network(self, name: str) -> NetworkInfo:
        return NetworkInfo(name=name, bridge="virbr7" if name != "default" else "virbr0", active=True,
                           address="192.168.7.1")

    def network_has_guests(self, bridge: str) -> bool:
        return False

    def start_network(self, name: str) -> None:
        pass


def test_only_the_default_network_is_defined_by_host_set_up() -> None:
    """An undefined `default` is defined on virbr0; another name is refused with what to do,
    rather than defined on virbr0 as well (which would clash with `default`)."""
    hv = _Networks({})
    ensure_network(hv, "default")  # type: ignore[arg-type]
    assert "virbr0" in hv.defined["default"]
    with pytest.raises(NotFound, match="virsh net-define"):
        ensure_network(hv, "tenants")  # type: ignore[arg-type]
    assert "tenants" not in hv.defined


def test_the_firewall_of_another_network_goes_into_that_networks_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """[libvirt] network = tenants installs table inet vmiso_tenants for its bridge."""
    installed: list[hostfirewall.FirewallPolicy] = []
    monkeypatch.setattr(hostfirewall, "install", installed.append)
    settings = dataclasses.replace(Settings(), libvirt=dataclasses.replace(Settings().libvirt, network="tenants"))
    ensure_firewall(_Networks({}), settings)  # type: ignore[arg-type]
    assert [(p.table, p.bridge, p.address) for p in installed] == [("vmiso_tenants", "virbr7", "192.168.7.1")]
def test_host_set_up_starts_no_pool_unless_the_operator_enabled_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """[pool] size = 0 (the default): ensure_pool starts and installs nothing."""
    from vm_isolation import hostservices

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing may be started or installed")

    monkeypatch.setattr(hostservices.subprocess, "Popen", refuse)
    monkeypatch.setattr(hostservices.subprocess, "run", refuse)
    monkeypatch.setattr(hostservices, "_install_unit", refuse)
    hostservices.ensure_pool(Settings())


def test_the_pool_unit_names_the_venvs_pool_command() -> None:
    """The unit template is shipped and filled in like the reaper's."""
    from vm_isolation.hostservices import POOL_UNIT_NAME, unit_text

    text = unit_text(Path("/opt/vmiso/venv/bin"), POOL_UNIT_NAME)
    assert "ExecStart=/opt/vmiso/venv/bin/vm-isolation-pool serve" in text and "@BINDIR@" not in text


def test_a_built_image_the_configuration_does_not_name_is_reported(tmp_path: Path) -> None:
    """An older mesos.conf (never rewritten by host set-up) lacks an image built since."""
    from dataclasses import replace

    from vm_isolation.config import ImageSettings, Settings
    from vm_isolation.hostsetup import unconfigured_images

    for name in ("busybox", "debian-cloud"):
        (tmp_path / f"{name}.qcow2").write_bytes(b"")
    images = ImageSettings(dir=tmp_path, bases={"busybox": tmp_path / "busybox.qcow2"})
    assert unconfigured_images(replace(Settings(), images=images)) == ["debian-cloud"]
