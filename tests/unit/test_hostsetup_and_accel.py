"""Network tuning XML and the choice of domain type."""

from __future__ import annotations

from pathlib import Path

from vm_isolation.accel import resolve_domain_type
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
