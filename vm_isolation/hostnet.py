"""Host networking: the only module that imports netifaces.

The address a guest uses to reach services on the host (the Mesos agent) is the host's IPv4
address on the libvirt network's bridge (virbr0 -> 192.168.122.1 on the default network).
"""

from __future__ import annotations

import netifaces

from .errors import NetworkUnavailable


def bridge_ipv4(bridge: str) -> str:
    """The host's first IPv4 address on ``bridge``; NetworkUnavailable if it has none."""
    if bridge not in netifaces.interfaces():
        raise NetworkUnavailable(
            f"the host has no interface {bridge!r}: is the libvirt network started "
            f"(`virsh net-start default`)?"
        )
    for entry in netifaces.ifaddresses(bridge).get(netifaces.AF_INET, []):
        if entry.get("addr"):
            return str(entry["addr"])
    raise NetworkUnavailable(f"interface {bridge!r} has no IPv4 address")


def interface_names() -> set[str]:
    """The host's network devices now (taps of running guests included)."""
    return set(netifaces.interfaces())
