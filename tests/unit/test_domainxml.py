"""Domain XML: golden output, escaping of hostile owner values, and libvirt's acceptance."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vm_isolation.domainxml import DomainSpec, InterfacePolicy, Owner, parse_owner, render
from vm_isolation.errors import InvalidTask

GOLDEN = Path(__file__).parent / "golden" / "domain.xml"
HOSTILE_OWNER = Owner(
    framework_id="fw-<'&\">-0000",
    executor_id="exec ]]> <!-- x -->",
    task_id="../../$(reboot) `id` ünï\ncode",
    container_id="c" * 4096,
    executor_pid=4242,
    executor_start_time="123456",
    created_at=1732200000.5,
    owner_file="/run/vm-isolation/owners/0123456789abcdef0123456789abcdef.owner",
)


def spec(owner: Owner = HOSTILE_OWNER, domain_type: str = "qemu") -> DomainSpec:
    return DomainSpec(
        name="vmiso-job-1-0123456789", domain_type=domain_type, vcpus=2, memory_mib=256,
        kernel=Path("/var/lib/vm-isolation/images/vmlinux"),
        initrd=Path("/var/lib/vm-isolation/images/initramfs.cpio.gz"),
        cmdline="console=ttyS0 quiet panic=-1 vmiso.hostname=vmiso-job-1-0123456789 "
                "vmiso.authkey=ssh-ed25519:AAAAC3NzaC1lZDI1NTE5AAAAIExample",
        disk=Path("/var/lib/vm-isolation/overlays/vmiso-job-1-0123456789.qcow2"),
        mac="52:54:00:12:34:56", network="default",
        console_log=Path("/var/log/vm-isolation/vmiso-job-1-0123456789.console"), owner=owner,
    )


def test_domain_xml_matches_the_golden_file() -> None:
    """The rendered XML for a fixed spec is exactly the reviewed golden file."""
    assert render(spec()) == GOLDEN.read_text()


def test_a_kernel_without_an_initramfs_gets_no_initrd_element() -> None:
    """initrd None (the fast kernel mounts its root itself): no <initrd>, the rest unchanged."""
    xml = render(dataclasses.replace(spec(), initrd=None))
    assert "<initrd>" not in xml
    assert xml == render(spec()).replace(
        "    <initrd>/var/lib/vm-isolation/images/initramfs.cpio.gz</initrd>\n", "")


def test_hostile_owner_values_round_trip_as_text() -> None:
    """Quotes, markup and newlines in ids stay data: parsing gives back the same values."""
    xml = render(spec())
    ET.fromstring(xml)  # well-formed
    assert parse_owner(xml) == HOSTILE_OWNER


def test_control_characters_are_refused_not_written() -> None:
    """NUL cannot be carried by XML 1.0, so it is an InvalidTask rather than broken XML."""
    with pytest.raises(InvalidTask):
        render(spec(Owner(task_id="nul\0byte")))


def test_kvm_domains_pass_the_host_cpu_through() -> None:
    """Only kvm guests get host-passthrough; emulated guests keep QEMU's default CPU."""
    assert "host-passthrough" in render(spec(domain_type="kvm"))
    assert "host-passthrough" not in render(spec(domain_type="qemu"))


def test_domains_without_our_metadata_have_no_owner() -> None:
    """A domain an operator defined is not ours."""
    assert parse_owner("<domain type='kvm'><name>web</name></domain>") is None
    assert parse_owner("not xml") is None


def test_libvirt_test_driver_accepts_the_xml_and_keeps_the_metadata() -> None:
    """libvirt itself (test:/// driver) parses the XML and returns our owner metadata."""
    pytest.importorskip("libvirt", reason="needs libvirt-python")
    from vm_isolation.hypervisor import LibvirtHypervisor

    hv = LibvirtHypervisor("test:///default")
    s = spec(domain_type="test")
    hv.define(s)
    try:
        owned = {d.name: d for d in hv.owned_domains()}
        assert owned[s.name].owner == HOSTILE_OWNER
        assert owned[s.name].macs == ("52:54:00:12:34:56",)
        hv.start(s.name)
        assert hv.state(s.name) == "running"
        hv.destroy(s.name)
        hv.destroy(s.name)  # idempotent
        assert hv.state(s.name) == "shutoff"
    finally:
        hv.undefine(s.name)
        hv.undefine(s.name)  # idempotent
    assert hv.state(s.name) is None


ISOLATED = InterfacePolicy(isolated_port=True, tap="vmisoaabbcc")


def test_an_isolated_interface_carries_the_port_flag_and_its_own_tap_name() -> None:
    """<port isolated='yes'/> and <target dev='vmiso...'/> (what the address guard's rules match)."""
    iface = ET.fromstring(render(dataclasses.replace(spec(), interface=ISOLATED))).find("devices/interface")
    assert iface is not None
    assert iface.find("port").attrib == {"isolated": "yes"}  # type: ignore[union-attr]
    assert iface.find("target").attrib == {"dev": "vmisoaabbcc"}  # type: ignore[union-attr]
    assert iface.find("filterref") is None


@pytest.mark.parametrize("tap", ["vmiso'<x>", "a" * 16, "", "vm iso"])
def test_a_tap_name_that_is_not_a_device_name_is_refused(tap: str) -> None:
    if not tap:  # empty: libvirt names it
        assert ET.fromstring(render(dataclasses.replace(spec(), interface=InterfacePolicy(tap=tap)))).find(
            "devices/interface/target") is None
        return
    with pytest.raises(InvalidTask, match="not a tap device name"):
        render(dataclasses.replace(spec(), interface=InterfacePolicy(tap=tap)))
