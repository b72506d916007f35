"""The values and Protocols at the edge of the host's systems, with no third-party import.

The lifecycle (:mod:`guest`, :mod:`session`, :mod:`reaper`, ...) is written against these; the
adapters (:mod:`hypervisor` for libvirt, :mod:`remote` for paramiko, :mod:`overlay` for qemu-img,
:mod:`leases` for dnsmasq, :mod:`hostfirewall` for nftables) implement them, and
:mod:`wiring` is the one place that picks the adapters. So everything but the adapters is
importable, and unit-testable, on a host without libvirt-python or paramiko.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Protocol

from .domainxml import DomainSpec, Owner
from .waiting import Deadline

# --- values --------------------------------------------------------------------------------

@dataclass(frozen=True)
class NetworkInfo:
    name: str
    bridge: str
    active: bool
    address: str = ""
    """The host's IPv4 address on the network (its first ``<ip address=...>``), '' if none."""


@dataclass(frozen=True)
class RawLease:
    """One DHCP lease as libvirt reports it."""

    mac: str
    ip: str
    hostname: str
    expiry_time: float
    client_id: str


@dataclass(frozen=True)
class OwnedDomain:
    name: str
    state: str
    owner: Owner
    macs: tuple[str, ...]
    disks: tuple[str, ...]


@dataclass(frozen=True)
class Lease:
    mac: str
    ip: str
    hostname: str
    expiry_time: float
    client_id: str
    source: str
    """Where it was read: libvirt-api or status-file."""

    @property
    def key(self) -> tuple[str, float]:
        return (self.ip, self.expiry_time)



# --- what the lifecycle needs of each system ----------------------------------------------

class Hypervisor(Protocol):
    def define(self, spec: DomainSpec) -> None: ...
    def start(self, name: str) -> None: ...
    def state(self, name: str) -> Optional[str]: ...
    def destroy(self, name: str) -> None: ...
    def undefine(self, name: str) -> None: ...
    def require_active_network(self, name: str) -> NetworkInfo: ...
    def set_owner(self, name: str, owner: Owner) -> None: ...
    def owner_of(self, name: str) -> Optional[Owner]: ...


class GuestFirewall(Protocol):
    """The host's firewall for the guests' bridge (see hostfirewall.NftFirewall)."""

    def problems(self, bridge: str) -> list[str]: ...
    def open_port(self, ip: str, port: int) -> None: ...
    def close_port(self, ip: str, port: int) -> None: ...


class Disks(Protocol):
    def create(self, base: Path, overlay_path: Path) -> Path: ...
    def remove(self, overlay_path: Path) -> None: ...


class ClientKeyLike(Protocol):
    @property
    def public_openssh(self) -> str: ...


class RemoteSession(Protocol):
    """What the lifecycle and the task runner need of an SSH session (see remote.SshRemote)."""

    def put(self, data: bytes, remote_path: str, *, mode: int = 0o644) -> None: ...
    def put_file(self, local: Path, remote_path: str, *, mode: Optional[int] = None) -> None: ...
    def get(self, remote_path: str) -> bytes: ...
    def run(self, command: str, *, on_stdout: Optional[Callable[[bytes], None]] = None,
            on_stderr: Optional[Callable[[bytes], None]] = None, stdin: Optional[bytes] = None,
            timeout_s: Optional[float] = None) -> int: ...
    def run_capture(self, command: str, *, timeout_s: Optional[float] = None) -> tuple[int, bytes, bytes]: ...
    def forward_to_host(self, guest_port: int, target_host: str, target_port: int) -> None: ...
    def connect_in_guest(self, port: int, timeout_s: float) -> Any: ...
    def close(self) -> None: ...


class LeaseSource(Protocol):
    """What leases need from the hypervisor."""

    def dhcp_leases(self, network: str, mac: Optional[str] = None) -> list[RawLease]: ...

    def network(self, name: str) -> NetworkInfo: ...



class AddressBook(Protocol):
    """Guests' addresses: their DHCP leases (see leases.Leases)."""

    def all_for(self, network: str, mac: str) -> list[Lease]: ...
    def current(self, network: str, mac: str, *, stale: Iterable[tuple[str, float]] = ()) -> Optional[Lease]: ...
    def wait_for_address(self, network: str, mac: str, deadline: Deadline, *,
                         stale: Iterable[tuple[str, float]] = (),
                         check: Callable[[], None] = lambda: None) -> Lease: ...
    def release(self, network: str, lease: Lease) -> None: ...
