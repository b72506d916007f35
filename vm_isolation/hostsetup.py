"""Host set-up, the part that needs libvirt-python: tune the guests' network, check the images,
start the reaper watcher (:mod:`hostservices`).

Run as ``python -m vm_isolation.hostsetup`` after ``scripts/host-setup.sh`` (the Makefile does).

The network tuning, measured on the development hosts (README, "Host network"):
  * ``<bridge stp='off'>``: with STP on, every new tap port waits ~4 s (listening + learning)
    before it forwards; libvirt's ``delay='0'`` is overridden by the kernel's 2 s minimum.
  * dnsmasq ``no-ping``: before offering a *new* address dnsmasq probes it for ~3 s, serially;
    4 guests booting at once got their leases after 23 s instead of 8-10 s.
A network that running guests (not necessarily ours) are attached to is never restarted: its
persistent definition is updated and the change takes effect at its next start.

Then the guests' network policy is installed: the nftables table ``inet vmiso`` (for the
``default`` network; ``inet vmiso_<network>`` for another ``[libvirt] network``, see
:func:`hostfirewall.table_for`; ``[network] egress`` and ``allow`` choose its egress rules). Re-running
host set-up re-applies it, e.g. after an operator flushed the ruleset.
"""

from __future__ import annotations

import argparse
import logging
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from . import hostfirewall
from .accel import resolve_domain_type
from .config import Settings, load_settings
from .errors import FirewallError, NotFound, VmIsolationError
from .hostservices import ensure_guard, ensure_pool, ensure_reaper_watch
from .waiting import WaitTimeout

if TYPE_CHECKING:  # the adapter is built by wiring, in main(): tuned_network_xml stays libvirt-free
    from .hypervisor import LibvirtHypervisor

log = logging.getLogger(__name__)

DNSMASQ_NS = "http://libvirt.org/schemas/network/dnsmasq/1.0"
DEFAULT_NETWORK_XML = """<network>
  <name>{name}</name>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='off' delay='0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
  </ip>
</network>
"""


def tuned_network_xml(xml: str) -> Optional[str]:
    """``xml`` with STP off and dnsmasq's ping check disabled, or None if already so."""
    ET.register_namespace("dnsmasq", DNSMASQ_NS)
    root = ET.fromstring(xml)
    changed = False
    bridge = root.find("bridge")
    if bridge is not None and bridge.get("stp", "on") != "off":
        bridge.set("stp", "off")
        changed = True
    options = root.find(f"{{{DNSMASQ_NS}}}options")
    if options is None:
        options = ET.SubElement(root, f"{{{DNSMASQ_NS}}}options")
    values = {opt.get("value") for opt in options.findall(f"{{{DNSMASQ_NS}}}option")}
    if "no-ping" not in values:
        ET.SubElement(options, f"{{{DNSMASQ_NS}}}option", value="no-ping")
        changed = True
    return ET.tostring(root, encoding="unicode") if changed else None


def ensure_network(hv: LibvirtHypervisor, name: str) -> None:
    """Make ``name`` exist, be tuned and be active, without disturbing running guests."""
    try:
        xml = hv.network_xml(name)
    except NotFound:
        if name != "default":
            raise NotFound(f"libvirt network {name!r} is not defined: define it (virsh net-define) or set "
                           "[libvirt] network = default, which host set-up defines on virbr0") from None
        log.info("network %s: not defined; defining it on virbr0 (192.168.122.0/24)", name)
        hv.redefine_network(name, tuned_network_xml(DEFAULT_NETWORK_XML.format(name=name)) or "",
                            restart=False)
        xml = hv.network_xml(name)
    tuned = tuned_network_xml(xml)
    info = hv.network(name)
    if tuned is None:
        log.info("network %s: already tuned (stp off, no-ping)", name)
    elif info.active and hv.network_has_guests(info.bridge):
        hv.redefine_network(name, tuned, restart=False)
        log.warning(
            "network %s: running guests are attached, so it was NOT restarted; the tuning "
            "(stp off, no-ping) takes effect at its next restart. Until then new guests may "
            "wait several seconds longer for their address.", name)
    else:
        hv.redefine_network(name, tuned, restart=True)
        log.info("network %s: tuned (stp off, dnsmasq no-ping)", name)
    hv.start_network(name)
    log.info("network %s: active on %s", name, hv.network(name).bridge)


def ensure_firewall(hv: LibvirtHypervisor, settings: Settings) -> None:
    """Install (or update) the nftables table that confines the guests on the network's bridge
    (:mod:`hostfirewall`); with ``[network] isolation = off`` nothing is installed."""
    if not settings.network.enforced:
        log.warning("[network] isolation = off: no nftables rules installed; guests can reach each "
                    "other, the host and the outside as the network allows")
        return
    info = hv.network(settings.libvirt.network)
    if not info.address:
        raise FirewallError(f"network {info.name} has no IPv4 address on the host: cannot scope the rules")
    hostfirewall.install(hostfirewall.FirewallPolicy(
        bridge=info.bridge, address=info.address, egress=settings.network.egress, allow=settings.network.allow,
        table=hostfirewall.table_for(info.name)))
    hostfirewall.install_guard()


def check_images(settings: Settings) -> list[str]:
    """Problems with the kernels, initramfs and base images the configuration uses (empty: all present)."""
    images = settings.images
    kernels = {images.kernel_for(name) for name in images.bases}
    boot_files = [(k.path, "scripts/build-kernel.sh" if k.kind == "fast" else "scripts/build-image.sh")
                  for k in kernels] + [(k.initrd, "scripts/build-image.sh") for k in kernels if k.initrd]
    paths = [*boot_files, *((p, "scripts/build-image.sh") for p in images.bases.values())]
    return [f"missing: {p} (build it with {tool})" for p, tool in sorted(set(paths)) if not p.exists()]


def unconfigured_images(settings: Settings) -> list[str]:
    """Base images in ``[images] dir`` that no ``[image:NAME]`` names: a host whose configuration
    was written from an older example (host set-up never rewrites it) misses the images added
    since (such as debian-cloud), and tasks naming them fail as unknown images."""
    configured = {path.resolve() for path in settings.images.bases.values()}
    try:
        built = sorted(settings.images.dir.glob("*.qcow2"))
    except OSError:
        return []
    return [path.stem for path in built if path.resolve() not in configured]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vm_isolation.hostsetup",
                                     description="Tune the guests' libvirt network and check images.")
    parser.add_argument("--config", type=Path, help="configuration file (default /etc/vm-isolation/mesos.conf)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="host-setup: %(message)s")
    try:
        settings = load_settings(args.config)
        from .wiring import real_hypervisor

        hv = real_hypervisor(settings)
        ensure_network(hv, settings.libvirt.network)
        ensure_firewall(hv, settings)
        log.info("domain type: %s (configured: %s)",
                 resolve_domain_type(settings.libvirt.domain_type), settings.libvirt.domain_type)
        problems = check_images(settings)
        ensure_reaper_watch(settings)
        ensure_guard(settings)
        ensure_pool(settings)
    except (VmIsolationError, WaitTimeout) as exc:
        log.error("%s", exc)
        return 1
    for name in unconfigured_images(settings):
        log.warning("image %s is built (%s) but %s has no [image:%s] section: add it (see "
                    "conf/mesos.conf.example) so tasks can use it", name, settings.images.dir / f"{name}.qcow2",
                    settings.source or "the configuration", name)
    for problem in problems:
        log.error("%s", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
