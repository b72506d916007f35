"""Building the real objects from Settings: the one place adapters are chosen."""

from __future__ import annotations

from .accel import resolve_domain_type
from .config import Settings
from .guest import GuestLauncher
from .hostfirewall import NftFirewall, table_for
from .hypervisor import LibvirtHypervisor
from .leases import Leases
from .reaper import PortTable
from .remote import SshRemote
from .sshkeys import generate_client_key


def real_launcher(settings: Settings, hypervisor: LibvirtHypervisor | None = None) -> GuestLauncher:
    """A GuestLauncher on libvirt, qemu-img, dnsmasq leases and paramiko."""
    hv = hypervisor or LibvirtHypervisor(settings.libvirt.uri)
    return GuestLauncher(
        settings,
        hv,
        Leases(hv),
        domain_type=resolve_domain_type(settings.libvirt.domain_type),
        connect=SshRemote.connect,
        make_key=generate_client_key,
        firewall=NftFirewall(table_for(settings.libvirt.network)),
    )


def agent_ports(settings: Settings) -> PortTable | None:
    """The per-guest agent-port openings the reaper closes: the host firewall's when the network
    isolation is enforced (the table of the configured network), none otherwise."""
    return NftFirewall(table_for(settings.libvirt.network)) if settings.network.enforced else None
