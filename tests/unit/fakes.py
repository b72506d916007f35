"""Fakes of our own boundaries (not of libvirt or paramiko), all in this one module: they record
calls and refuse anything they were not prepared for (a FakeRemote without a handler refuses
every command; ``answer_zero`` is the explicit 'every command succeeds')."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from vm_isolation.domainxml import DomainSpec, Owner
from vm_isolation.errors import NetworkUnavailable, NotFound
from vm_isolation.hosttypes import NetworkInfo, RawLease


class FakeHypervisor:
    """Domains as a dict; a started domain 'boots' by writing its host key to the console and
    (unless told otherwise) getting a lease."""

    def __init__(self, *, gives_lease: bool = True, dies_on_start: bool = False,
                 network_active: bool = True) -> None:
        self.calls: list[tuple[str, str]] = []
        self.domains: dict[str, str] = {}
        self.specs: dict[str, DomainSpec] = {}
        self.leases: list[RawLease] = []
        self.gives_lease = gives_lease
        self.dies_on_start = dies_on_start
        self.network_active = network_active
        self.lock = threading.Lock()

    def require_active_network(self, name: str) -> NetworkInfo:
        info = self.network(name)
        if not info.active:
            raise NetworkUnavailable(f"network {name} inactive")
        return info

    def network(self, name: str) -> NetworkInfo:
        """One network, ``default`` on virbr0 (as the contract suite's libvirt test node)."""
        if name != "default":
            raise NetworkUnavailable(f"libvirt network {name!r} does not exist")
        return NetworkInfo(name, "virbr0", self.network_active, "192.168.122.1")

    def define(self, spec: DomainSpec) -> None:
        self.calls.append(("define", spec.name))
        self.domains[spec.name] = "shutoff"
        self.specs[spec.name] = spec

    def start(self, name: str) -> None:
        self.calls.append(("start", name))
        spec = self.specs[name]
        if self.dies_on_start:
            spec.console_log.write_text("VMISO-ERROR no root disk\n")
            self.domains[name] = "shutoff"
            return
        self.domains[name] = "running"
        spec.console_log.write_text("Linux booting\nVMISO-HOSTKEY ssh-ed25519 AAAAhostkey\nVMISO-READY\n")
        if self.gives_lease:
            self.leases.append(RawLease(spec.mac, "192.168.122.50", name, 2e9, "01:" + spec.mac))

    def state(self, name: str) -> Optional[str]:
        return self.domains.get(name)

    def destroy(self, name: str) -> None:
        self.calls.append(("destroy", name))
        if name in self.domains:
            self.domains[name] = "shutoff"

    def undefine(self, name: str) -> None:
        self.calls.append(("undefine", name))
        self.domains.pop(name, None)

    def dhcp_leases(self, network: str, mac: Optional[str] = None) -> list[RawLease]:
        return [lease for lease in self.leases if mac is None or lease.mac == mac]

    def set_owner(self, name: str, owner: Owner) -> None:
        self.calls.append(("set_owner", name))
        if name not in self.domains:
            raise NotFound(f"no domain {name}")
        self.specs[name] = replace(self.specs[name], owner=owner)

    def owner_of(self, name: str) -> Optional[Owner]:
        return self.specs[name].owner if name in self.domains else None


class FakeDisks:
    def __init__(self) -> None:
        self.existing: set[Path] = set()

    def create(self, base: Path, overlay_path: Path) -> Path:
        if not base.name.endswith(".qcow2"):
            raise NotFound(f"no base {base}")
        self.existing.add(overlay_path)
        return overlay_path

    def remove(self, overlay_path: Path) -> None:
        self.existing.discard(overlay_path)


@dataclass
class FakeKey:
    directory: Path
    public_openssh: str = "ssh-ed25519 AAAAclientkey"


def fake_key_factory(directory: Path) -> FakeKey:
    directory.mkdir(mode=0o700, parents=True)
    (directory / "id_ed25519").write_text("PRIVATE")
    return FakeKey(directory)


LAUNCH = r"umask 077; cat > /tmp/vmiso-launch-(\w+)\.sh \|\| exit 121; exec /bin/sh /tmp/vmiso-launch-\1\.sh"
"""The command that writes and runs a task's launcher (guestrun.launch_command); group 1: its nonce."""

Handler = Callable[["FakeRemote", str, Callable[[bytes], None], Callable[[bytes], None]], int]


def _unprepared(command: str) -> int:
    raise AssertionError(f"FakeRemote: no handler for {command!r}: give the fake a handler that expects it")


def answer_zero(remote: FakeRemote, command: str, out: Callable[[bytes], None], err: Callable[[bytes], None]) -> int:
    """A handler for tests that only need commands to succeed (say so explicitly)."""
    return 0


@dataclass
class FakeRemote:
    """An SSH session that runs scripted commands."""

    host: str
    host_key: str
    closed: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    stdins: dict[str, bytes] = field(default_factory=dict)
    """What each command was given on stdin (the launch command: the launcher script)."""
    handler: Callable[[FakeRemote, str, Callable[[bytes], None], Callable[[bytes], None]], int] = (
        lambda r, c, o, e: _unprepared(c))

    def put(self, data: bytes, remote_path: str, *, mode: int = 0o644) -> None:
        self.files[remote_path] = data

    def put_file(self, local: Path, remote_path: str, *, mode: Optional[int] = None) -> None:
        self.files[remote_path] = local.read_bytes()

    def get(self, remote_path: str) -> bytes:
        return self.files[remote_path]

    def run(self, command: str, *, on_stdout: Optional[Callable[[bytes], None]] = None,
            on_stderr: Optional[Callable[[bytes], None]] = None, stdin: Optional[bytes] = None,
            timeout_s: Optional[float] = None) -> int:
        self.commands.append(command)
        if stdin is not None:
            self.stdins[command] = stdin
        return self.handler(self, command, on_stdout or (lambda b: None), on_stderr or (lambda b: None))

    def run_capture(self, command: str, *, timeout_s: Optional[float] = None) -> tuple[int, bytes, bytes]:
        out: list[bytes] = []
        err: list[bytes] = []
        code = self.run(command, on_stdout=out.append, on_stderr=err.append, timeout_s=timeout_s)
        return code, b"".join(out), b"".join(err)

    def close(self) -> None:
        self.closed = True


class FakeConnector:
    """Opens FakeRemotes (with ``handler``: by default they refuse every command)."""

    def __init__(self, error: Optional[Exception] = None, handler: Optional[Handler] = None) -> None:
        self.error = error
        self.handler = handler
        self.sessions: list[FakeRemote] = []

    def __call__(self, host: str, *, host_key: str, client_key: object, deadline: object,
                 user: str = "root") -> FakeRemote:
        if self.error is not None:
            raise self.error
        remote = FakeRemote(host, host_key) if self.handler is None else FakeRemote(host, host_key,
                                                                                   handler=self.handler)
        self.sessions.append(remote)
        return remote


class FakeFirewall:
    """The host firewall: a set of openings; ``missing`` lists what problems() reports."""

    def __init__(self, missing: tuple[str, ...] = ()) -> None:
        self.missing = list(missing)
        self.opened: set[tuple[str, int]] = set()
        self.calls: list[tuple[str, str, int]] = []

    def problems(self, bridge: str) -> list[str]:
        return list(self.missing)

    def open_port(self, ip: str, port: int) -> None:
        self.calls.append(("open", ip, port))
        self.opened.add((ip, port))

    def close_port(self, ip: str, port: int) -> None:
        self.calls.append(("close", ip, port))
        self.opened.discard((ip, port))

    def opened_ports(self) -> set[tuple[str, int]]:
        return set(self.opened)


class FakeClock:
    """A clock whose sleep only advances its own time (for tests)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Set already: True at once; otherwise the whole wait passes (in fake time)."""
        if event.is_set():
            return True
        self.sleep(seconds)
        return event.is_set()
