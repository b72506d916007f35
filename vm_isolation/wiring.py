"""Building the real objects from Settings: the one place adapters are chosen (every CLI,
host set-up, the benchmarks and the tests' real fixtures build them here)."""

from __future__ import annotations

from .accel import resolve_domain_type
from .config import Settings
from .guest import GuestFactory
from .hostfirewall import NftFirewall, table_for
from .hypervisor import LibvirtHypervisor
from .leases import Leases
from .overlay import QemuImgDisks
from .poolclient import PoolClient
from .reaper import PortTable
from .remote import SshRemote
from .sshkeys import generate_client_key, load_client_key
from .warm import WarmFactory


def real_hypervisor(settings: Settings, *, first_connect_s: float = 0.0) -> LibvirtHypervisor:
    """The libvirt connection of ``[libvirt] uri`` (``first_connect_s``: how long to wait for a
    libvirtd that is restarting; 0 fails at once, for tools an operator runs by hand)."""
    return LibvirtHypervisor(settings.libvirt.uri, first_connect_s=first_connect_s)


def real_leases(hypervisor: LibvirtHypervisor) -> Leases:
    """The guests' DHCP leases, read through libvirt (dnsmasq's status file as the fallback)."""
    return Leases(hypervisor)


def real_launcher(settings: Settings, hypervisor: LibvirtHypervisor | None = None) -> GuestFactory:
    """A GuestFactory on libvirt, qemu-img, dnsmasq leases and paramiko."""
    hv = hypervisor or real_hypervisor(settings)
    return GuestFactory(
        settings,
        hv,
        real_leases(hv),
        domain_type=resolve_domain_type(settings.libvirt.domain_type),
        connect=SshRemote.connect,
        make_key=generate_client_key,
        firewall=NftFirewall(table_for(settings.libvirt.network)),
        disks=QemuImgDisks(),
        load_key=load_client_key,
    )


def guest_factory(settings: Settings, launcher: GuestFactory) -> GuestFactory | WarmFactory:
    """What executors boot through: the warm pool first when ``[pool] size`` is above 0."""
    if not settings.pool.enabled:
        return launcher
    return WarmFactory(launcher, PoolClient(settings.pool.socket, settings.pool.take_timeout_s))


def agent_ports(settings: Settings) -> PortTable | None:
    """The per-guest agent-port openings the reaper closes: the host firewall's when the network
    isolation is enforced (the table of the configured network), none otherwise."""
    return NftFirewall(table_for(settings.libvirt.network)) if settings.network.enforced else None
