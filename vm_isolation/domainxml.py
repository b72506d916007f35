"""Domain XML from small config objects that hold no policy.

The document is built with ElementTree, so every value is escaped by construction; values
that XML 1.0 cannot carry at all (NUL and most control characters) are refused with
InvalidTask instead of producing a document libvirt would reject. No libvirt import here:
the XML is tested against golden files and libvirt's ``test:///`` driver.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Optional

from .errors import InvalidTask


def escape(text: str) -> str:
    """``text`` as XML character data (``&``, ``<``, ``>``), as xml.sax.saxutils.escape does; kept here
    because importing xml.sax pulls in urllib.request, http.client and email (~25 ms and a few MiB
    in every executor)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

OWNER_NS = "https://github.com/vm-isolation/xmlns/owner/1"
OWNER_PREFIX = "vmiso"
# With `from __future__ import annotations` dataclass field types are the annotation strings.
_FROM_TEXT = {"int": int, "float": float}
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_TAP = re.compile(r"[A-Za-z0-9_-]{1,15}")


@dataclass(frozen=True)
class Owner:
    """Who created a domain, recorded in its ``<metadata>`` so a reaper can find orphans."""

    framework_id: str = ""
    executor_id: str = ""
    task_id: str = ""
    container_id: str = ""
    executor_pid: int = 0
    executor_start_time: str = ""
    """The owning process's start time (from /proc/PID/stat), to detect a reused pid."""
    created_at: float = 0.0
    """Unix time the domain was defined."""
    owner_file: str = ""
    """The owning executor's lock file (:mod:`ownership`): alive while it is locked."""

    def for_task(self, task_id: str, container_id: str = "") -> Owner:
        """This owner's record for one of its tasks' guests (its container id, if given, wins)."""
        return replace(self, task_id=task_id, container_id=container_id or self.container_id)


@dataclass(frozen=True)
class InterfacePolicy:
    """How the guest's interface is confined on its network; the default confines nothing."""

    isolated_port: bool = False
    """``<port isolated='yes'/>``: the bridge forwards nothing between two isolated ports."""
    tap: str = ""
    """The tap device's name (``<target dev>``), when it must be ours: the address guard's
    rules match our guests' taps by name (hostfirewall.tap_for); empty: libvirt's vnetN."""


@dataclass(frozen=True)
class DomainSpec:
    name: str
    domain_type: str
    vcpus: int
    memory_mib: int
    kernel: Optional[Path]
    """Direct kernel boot (with ``initrd`` and ``cmdline``); None: boot from ``disk``'s own
    bootloader, with the firmware's messages on the serial console."""
    initrd: Optional[Path]
    """None: no ``<initrd>`` (a kernel that mounts its root itself)."""
    cmdline: str
    disk: Path
    mac: str
    network: str
    console_log: Path
    owner: Owner
    interface: InterfacePolicy = InterfacePolicy()
    seed: Optional[Path] = None
    """A read-only raw second disk (vdb): a NoCloud ``cidata`` volume."""


def render(spec: DomainSpec) -> str:
    """The libvirt domain XML for ``spec``."""
    _check_xml_safe(spec)
    root = ET.Element("domain", type=spec.domain_type)
    ET.SubElement(root, "name").text = spec.name
    root.append(_metadata(spec.owner))
    ET.SubElement(root, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(root, "vcpu").text = str(spec.vcpus)
    os_el = ET.SubElement(root, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    if spec.kernel is not None:
        ET.SubElement(os_el, "kernel").text = str(spec.kernel)
        if spec.initrd is not None:
            ET.SubElement(os_el, "initrd").text = str(spec.initrd)
        ET.SubElement(os_el, "cmdline").text = spec.cmdline
    else:
        ET.SubElement(os_el, "boot", dev="hd")
        ET.SubElement(os_el, "bios", useserial="yes")
    features = ET.SubElement(root, "features")
    ET.SubElement(features, "acpi")
    if spec.domain_type == "kvm":
        ET.SubElement(root, "cpu", mode="host-passthrough")
    ET.SubElement(root, "clock", offset="utc")
    # A guest that powers off, reboots or crashes is gone: nothing restarts it behind our back.
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(root, event).text = "destroy"
    root.append(_devices(spec))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _metadata(owner: Owner) -> ET.Element:
    metadata = ET.Element("metadata")
    metadata.append(_owner_element(owner))
    return metadata


def _owner_element(owner: Owner) -> ET.Element:
    # libvirt keeps the element's namespace prefix as written; register it for readable XML.
    ET.register_namespace(OWNER_PREFIX, OWNER_NS)
    owner_el = ET.Element(f"{{{OWNER_NS}}}owner")
    for field in fields(owner):
        ET.SubElement(owner_el, f"{{{OWNER_NS}}}{field.name}").text = str(getattr(owner, field.name))
    return owner_el


def owner_xml(owner: Owner) -> str:
    """The ``<vmiso:owner>`` element alone, for replacing a defined domain's owner
    (``virDomainSetMetadata``: the hand-over of a pool guest to an executor)."""
    # NOTE: libvirt declares the prefix on the element itself (and fails with "failed to create
    # a new XML namespace" if the element already declares it), so the element is written in
    # the default namespace: its children are then in the owner namespace too.
    parts = []
    for field in fields(owner):
        value = str(getattr(owner, field.name))
        if _XML_INVALID.search(value):
            raise InvalidTask(f"{field.name} contains control characters (such as NUL) that cannot be recorded")
        parts.append(f"<{field.name}>{escape(value)}</{field.name}>")
    return f'<owner xmlns="{OWNER_NS}">{"".join(parts)}</owner>'


def _devices(spec: DomainSpec) -> ET.Element:
    devices = ET.Element("devices")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2")
    ET.SubElement(disk, "source", file=str(spec.disk))
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    if spec.seed is not None:
        seed = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(seed, "driver", name="qemu", type="raw")
        ET.SubElement(seed, "source", file=str(spec.seed))
        ET.SubElement(seed, "target", dev="vdb", bus="virtio")
        ET.SubElement(seed, "readonly")
    iface = ET.SubElement(devices, "interface", type="network")
    ET.SubElement(iface, "source", network=spec.network)
    ET.SubElement(iface, "mac", address=spec.mac)
    ET.SubElement(iface, "model", type="virtio")
    if spec.interface.tap:
        if not _TAP.fullmatch(spec.interface.tap):
            raise InvalidTask(f"{spec.interface.tap!r} is not a tap device name")
        ET.SubElement(iface, "target", dev=spec.interface.tap)
    if spec.interface.isolated_port:
        ET.SubElement(iface, "port", isolated="yes")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(spec.console_log))
    ET.SubElement(serial, "target", port="0")
    rng = ET.SubElement(devices, "rng", model="virtio")
    ET.SubElement(rng, "backend", model="random").text = "/dev/urandom"
    ET.SubElement(devices, "controller", type="usb", model="none")
    ET.SubElement(devices, "memballoon", model="none")
    return devices


def parse_owner(domain_xml: str) -> Optional[Owner]:
    """The Owner recorded in a domain's XML, or None for domains we did not create."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        return None
    owner_el = root.find(f"metadata/{{{OWNER_NS}}}owner")
    if owner_el is None:
        return None
    values: dict[str, object] = {}
    for field in fields(Owner):
        text = owner_el.findtext(f"{{{OWNER_NS}}}{field.name}", default="")
        convert = _FROM_TEXT.get(str(field.type))
        try:
            values[field.name] = convert(text or "0") if convert else text
        except ValueError:
            return None
    return Owner(**values)  # type: ignore[arg-type]


def _check_xml_safe(spec: DomainSpec) -> None:
    for field in fields(spec.owner):
        value = getattr(spec.owner, field.name)
        if isinstance(value, str) and _XML_INVALID.search(value):
            raise InvalidTask(
                f"{field.name} contains control characters (such as NUL) that cannot be "
                f"recorded: use printable characters"
            )
    for value in (spec.name, spec.cmdline, spec.network, spec.mac):
        if _XML_INVALID.search(value):
            raise InvalidTask("a domain value contains control characters")


# --- reading a domain's XML back (what the reaper and the adapter need of it) ---------------

def interface_macs(xml: str) -> tuple[str, ...]:
    """The MAC addresses of a domain's interfaces, lower case."""
    return tuple(el.get("address", "").lower() for el in ET.fromstring(xml).iterfind("devices/interface/mac"))


def interface_bridges(xml: str) -> tuple[str, ...]:
    """The bridges a domain's interfaces are attached to (as a running domain's XML says)."""
    return tuple(el.get("bridge", "") for el in ET.fromstring(xml).iterfind("devices/interface/source")
                 if el.get("bridge"))


def disk_files(xml: str) -> tuple[str, ...]:
    """The files behind a domain's disks."""
    return tuple(el.get("file", "") for el in ET.fromstring(xml).iterfind("devices/disk/source") if el.get("file"))
