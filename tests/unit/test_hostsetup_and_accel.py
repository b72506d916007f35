"""Network tuning XML and the choice of domain type."""

from __future__ import annotations

from pathlib import Path

import pytest

from vm_isolation.accel import resolve_domain_type
from vm_isolation.config import Settings
from vm_isolation.hostsetup import DNSMASQ_NS, tuned_network_xml

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
