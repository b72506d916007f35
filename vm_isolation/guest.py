"""One guest's life: overlay -> define -> start -> lease -> ssh, and teardown in reverse.

:meth:`GuestLauncher.boot` is a context manager. Each phase is a short method; the undo of
every resource is registered on an ``ExitStack`` the moment the resource exists, so teardown
runs in reverse order on every path, errors and cancellation included: the SSH session is
closed, the domain destroyed, its lease released, its definition, overlay and key removed.
Each resource is written to the request's journal (:mod:`journal`) before it is created and
again once it is removed, so a reaper can finish the teardown of an executor that died.

It is written against small Protocols (:class:`Hypervisor`, :class:`Disks`, the SSH connector
and key factory), so the whole state machine is unit-tested on fakes; the real adapters are
:mod:`hypervisor`, :mod:`overlay`, :mod:`remote`.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import shutil
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

from .config import GuestKernel, Settings
from .domainxml import DomainSpec, InterfacePolicy, Owner, TrafficFilter
from .errors import AddressTimeout, FirewallError, GuestDied, GuestError, SshUnavailable, VmIsolationError
from .hosttypes import (
    AddressBook,
    ClientKeyLike,
    Disks,
    GuestFirewall,
    Hypervisor,
    Lease,
    NetworkInfo,
    RemoteSession,
)
from .ids import DomainName, random_mac
from .journal import NO_JOURNAL, ResourceJournal
from .waiting import SYSTEM_CLOCK, Clock, Deadline, WaitTimeout, poll_until

log = logging.getLogger(__name__)
_T = TypeVar("_T")

HOSTKEY_MARKER = "VMISO-HOSTKEY"
READY_MARKER = "VMISO-READY"
READY_GRACE_S = 5.0
"""How long after the host key SSH waits for READY before trying anyway (an image that never
prints it still works, only slower)."""
ERROR_MARKER = "VMISO-ERROR"
CONSOLE_TAIL_LINES = 25
SSH_SLICE_S = 3.0
DIRECT_ROOT_CMDLINE = "root=/dev/vda rw rootfstype=ext4 init=/sbin/vmiso-init"
"""A kernel booted without an initramfs mounts the overlay disk itself and starts the image's init."""


class Phase(enum.StrEnum):
    """The phases of a guest's boot, in order; the values name them in timings and messages."""

    OVERLAY = "overlay"
    DEFINE = "define"
    START = "start"
    LEASE = "lease"
    SSH = "ssh"


class Cancelled(VmIsolationError):
    """The boot was cancelled (the task was killed) before the guest was ready."""


# --- the boundaries this module is written against -------------------------------------------

KeyFactory = Callable[[Path], ClientKeyLike]
Connector = Callable[..., RemoteSession]


# --- values ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class GuestRequest:
    name: DomainName
    base_image: Path
    vcpus: int = 1
    memory_mib: int = 256
    owner: Owner = Owner()
    console_log: Optional[Path] = None
    """Where to keep the serial console; None: the console dir, removed at teardown."""
    journal: ResourceJournal = NO_JOURNAL
    """Where each resource is recorded before it is created (the executor's sandbox journal)."""
    kernel: Optional[GuestKernel] = None
    """What to boot (``settings.images.kernel_for(image)``); None: the fast kernel."""


@dataclass
class Guest:
    """A booted guest with an open SSH session."""

    name: DomainName
    mac: str
    lease: Lease
    remote: RemoteSession
    console_log: Path
    timings: dict[str, float] = field(default_factory=dict)
    journal: ResourceJournal = NO_JOURNAL

    @property
    def ip(self) -> str:
        return self.lease.ip

    def console_tail(self) -> str:
        return console_tail(self.console_log)


def console_tail(path: Path, lines: int = CONSOLE_TAIL_LINES) -> str:
    """The last lines of a console log, printable characters only ('' if unreadable)."""
    try:
        data = path.read_bytes()[-16384:]
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").replace("\r", "")
    clean = "".join(ch for ch in text if ch == "\n" or ch.isprintable())
    return "\n".join(clean.strip("\n").splitlines()[-lines:])


def ready_on_console(path: Path) -> bool:
    """True once the guest's init printed ``VMISO-READY`` (its address is configured). Until
    then a SYN to the address the lease gave is dropped and TCP retries only after its 1 s
    initial RTO: measured on 40-100 % of boots on the development hosts."""
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return False
    return any(line.strip() == READY_MARKER for line in text.splitlines())


def error_on_console(path: Path) -> Optional[str]:
    """What the guest's init reported with ``VMISO-ERROR <what>`` before powering off, if it did."""
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        marker, _, what = line.strip().partition(" ")
        if marker == ERROR_MARKER:
            return what.strip() or "(no detail)"
    return None


def host_key_from_console(path: Path) -> Optional[str]:
    """The first ``VMISO-HOSTKEY <type> <base64>`` the guest's init printed, as "type base64".

    The first one is taken on purpose: init prints it before any task code can run, so a task
    printing a fake line later cannot change which key we trust.
    """
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) == 3 and parts[0] == HOSTKEY_MARKER:
            return f"{parts[1]} {parts[2]}"
    return None


# --- the lifecycle -------------------------------------------------------------------------

ProgressFn = Callable[[str, float], None]


class GuestLauncher:
    """Boots guests from base images and tears them down, leaving nothing behind."""

    def __init__(
        self,
        settings: Settings,
        hypervisor: Hypervisor,
        leases: AddressBook,
        *,
        domain_type: str,
        connect: Connector,
        make_key: KeyFactory,
        firewall: GuestFirewall,
        disks: Disks,
        clock: Clock = SYSTEM_CLOCK,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.hypervisor = hypervisor
        self.leases = leases
        self.domain_type = domain_type
        self._connect = connect
        self._make_key = make_key
        self.firewall = firewall
        self._disks = disks
        self._clock = clock
        self._wallclock = wallclock

    @contextmanager
    def boot(
        self,
        request: GuestRequest,
        *,
        cancel: Optional[threading.Event] = None,
        progress: ProgressFn = lambda phase, seconds: None,
    ) -> Iterator[Guest]:
        """Boot ``request``'s guest; on leaving the block (any way) everything is removed."""
        boot = _Boot(self, request, cancel or threading.Event(), progress)
        with ExitStack() as undo:
            yield boot.run(undo)

    def domain_state(self, name: str) -> Optional[str]:
        """The state of a guest's domain ("running", ...; None once it is gone)."""
        return self.hypervisor.state(name)

    def power_off(self, name: str) -> None:
        """Pull the plug on a guest, from any thread: a boot or session in progress ends at its
        next step, and the :meth:`boot` block that owns the guest still removes everything."""
        self.hypervisor.destroy(name)


class _Boot:
    """The state of one boot; one short method per phase."""

    def __init__(self, launcher: GuestLauncher, request: GuestRequest, cancel: threading.Event,
                 progress: ProgressFn) -> None:
        self.l = launcher
        self.req = request
        self.cancel = cancel
        self.progress = progress
        self.vm = launcher.settings.vm
        self.network = launcher.settings.libvirt.network
        self.mac = random_mac()
        self.console_log = request.console_log or self.vm.console_dir / f"{request.name}.console"
        self.overlay_path = self.vm.overlay_dir / f"{request.name}.qcow2"
        self.key_dir = self.vm.key_dir / request.name
        self.timings: dict[str, float] = {}
        self.lease: Optional[Lease] = None
        self.phase = Phase.OVERLAY
        self.net_info = NetworkInfo(self.network, "", True)

    def run(self, undo: ExitStack) -> Guest:
        self.net_info = self.l.hypervisor.require_active_network(self.network)
        self._require_enforced_policy()
        self._timed(Phase.OVERLAY, lambda: self._overlay(undo))
        key = self._key(undo)
        self._timed(Phase.DEFINE, lambda: self._define(undo, key))
        stale = self._lease_keys_before_start()
        self._timed(Phase.START, lambda: self._start(undo))
        lease = self._timed(Phase.LEASE, lambda: self._wait_lease(stale))
        remote = self._timed(Phase.SSH, lambda: self._ssh(undo, lease, key))
        return Guest(self.req.name, self.mac, lease, remote, self.console_log, self.timings, self.req.journal)

    def _timed(self, phase: Phase, step: Callable[[], _T]) -> _T:
        self._check_cancel()
        self.phase = phase
        started = self.l._clock.monotonic()
        result = step()
        elapsed = self.l._clock.monotonic() - started
        self.timings[phase.value] = round(elapsed, 3)
        log.info("%s: %s done in %.2f s", self.req.name, phase.value, elapsed)
        self.progress(phase.value, elapsed)
        return result

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled(f"boot of {self.req.name} cancelled")

    # --- phases ----------------------------------------------------------------------------
    def _record(self, kind: str, **detail: str) -> None:
        self.req.journal.creating(kind, self.req.name, task_id=self.req.owner.task_id, **detail)

    def _on_undo(self, undo: ExitStack, kind: str, remove: Callable[[], object]) -> None:
        """Register ``remove`` for teardown; once it succeeded the journal says ``kind`` is gone.

        A removal that fails is logged and left in the journal for the reaper: it must neither
        stop the rest of the teardown nor hide the error that ended the guest's life.
        """
        def run() -> None:
            try:
                remove()
            except (VmIsolationError, OSError) as exc:
                log.error("%s: could not remove its %s (%s); vm-isolation-reap will retry",
                          self.req.name, kind, exc)
                return
            self.req.journal.removed(kind, self.req.name)
        undo.callback(run)

    def _overlay(self, undo: ExitStack) -> None:
        self._record("overlay", path=str(self.overlay_path))
        self._on_undo(undo, "overlay", lambda: self.l._disks.remove(self.overlay_path))
        self.l._disks.create(self.req.base_image, self.overlay_path)

    def _key(self, undo: ExitStack) -> ClientKeyLike:
        self._record("key_dir", path=str(self.key_dir))
        self._on_undo(undo, "key_dir", self._remove_key_dir)
        return self.l._make_key(self.key_dir)

    def _define(self, undo: ExitStack, key: ClientKeyLike) -> None:
        if self.req.console_log is None:
            undo.callback(self.console_log.unlink, missing_ok=True)
        self._create_console_log()
        kernel = self.req.kernel or self.l.settings.images.guest_kernel("fast")
        spec = DomainSpec(
            name=self.req.name,
            domain_type=self.l.domain_type,
            vcpus=self.req.vcpus,
            memory_mib=self.req.memory_mib,
            kernel=kernel.path,
            initrd=kernel.initrd,
            cmdline=self._cmdline(key, kernel),
            disk=self.overlay_path,
            mac=self.mac,
            network=self.network,
            console_log=self.console_log,
            owner=replace(self.req.owner, created_at=self.l._wallclock()),
            interface=self._interface_policy(),
        )
        self._record("domain")
        self.l.hypervisor.define(spec)
        self._on_undo(undo, "domain", lambda: self.l.hypervisor.undefine(self.req.name))
        # Registered before start, so it runs after destroy: a dead guest cannot renew it.
        self._record("lease", mac=self.mac, network=self.network)
        self._on_undo(undo, "lease", self._release_lease)

    def _create_console_log(self) -> None:
        """Create the console log ourselves, readable by all (it holds the guest's public host
        key and boot messages, nothing secret): libvirt's DAC labelling then hands the file to
        the qemu user but keeps its mode, so an executor that is not root (the agent's
        --switch_user) can still read the host key from it. Left to qemu, it is root's, 0600."""
        with contextlib.suppress(FileExistsError):
            fd = os.open(self.console_log, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            os.fchmod(fd, 0o644)  # whatever the umask
            os.close(fd)

    def _require_enforced_policy(self) -> None:
        """With isolation on, refuse to boot (before anything exists) on a host that would not
        enforce the guests' network policy."""
        if not self.l.settings.network.enforced:
            return
        missing = self.l.firewall.problems(self.net_info.bridge)
        if missing:
            raise FirewallError(
                f"the host does not enforce the guests' network isolation on {self.net_info.bridge}: "
                f"{'; '.join(missing)}. Run `python -m vm_isolation.hostsetup` as root (it installs the "
                f"nftables table inet vmiso), or set [network] isolation = off where the operator "
                f"isolates the network by other means")

    def _interface_policy(self) -> InterfacePolicy:
        """With ``[network] isolation = on``: an isolated bridge port (no frame between two
        guests) and libvirt's ``clean-traffic`` filter (only the guest's own MAC, and the IP its
        DHCP lease gave it, learnt from the lease dnsmasq on the host's address hands out)."""
        if not self.l.settings.network.enforced:
            return InterfacePolicy()
        parameters = [("CTRL_IP_LEARNING", "dhcp")]
        if self.net_info.address:
            parameters.append(("DHCPSERVER", self.net_info.address))
        return InterfacePolicy(isolated_port=True,
                               traffic_filter=TrafficFilter("clean-traffic", tuple(parameters)))

    def _cmdline(self, key: ClientKeyLike, kernel: GuestKernel) -> str:
        key_type, key_b64 = key.public_openssh.split()[:2]
        # no_timer_check: under software emulation on a busy host the kernel's early check that
        # the IO-APIC timer ticks can fail ("IO-APIC + timer doesn't work!") and panic the guest.
        # acpi=noirq: ACPI PCI interrupt-link set-up runs AML under emulation, ~0.17 s per virtio
        # device; the guests need none of it (measured: ~0.5 s per boot saved).
        root = "" if kernel.initrd is not None else f" {DIRECT_ROOT_CMDLINE}"
        return (f"console=ttyS0 quiet panic=-1 no_timer_check acpi=noirq{root} vmiso.hostname={self.req.name} "
                f"vmiso.authkey={key_type}:{key_b64}")

    def _lease_keys_before_start(self) -> frozenset[tuple[str, float]]:
        return frozenset(lease.key for lease in self.l.leases.all_for(self.network, self.mac))

    def _start(self, undo: ExitStack) -> None:
        undo.callback(self.l.hypervisor.destroy, self.req.name)
        self.l.hypervisor.start(self.req.name)

    def _wait_lease(self, stale: frozenset[tuple[str, float]]) -> Lease:
        deadline = Deadline.after(self.vm.boot_timeout_s, self.l._clock)
        try:
            self.lease = self.l.leases.wait_for_address(
                self.network, self.mac, deadline, stale=stale, check=self._check_alive)
        except WaitTimeout:
            raise AddressTimeout(
                f"{self.req.name} got no DHCP lease on network {self.network!r} within "
                f"{self.vm.boot_timeout_s:g} s (MAC {self.mac}): the guest did not boot or its DHCP "
                f"client got no answer; raise [vm] boot_timeout_s on a slow host",
                phase=Phase.LEASE.value, console_tail=console_tail(self.console_log),
            ) from None
        return self.lease

    def _ssh(self, undo: ExitStack, lease: Lease, key: ClientKeyLike) -> RemoteSession:
        started = self.l._clock.monotonic()
        deadline = Deadline.after(self.vm.ssh_timeout_s, self.l._clock)

        def announced() -> Optional[str]:
            self._check_alive()
            return host_key_from_console(self.console_log)

        try:
            host_key = poll_until(announced, deadline, interval_s=0.02, what="the guest's host key")
        except WaitTimeout:
            raise SshUnavailable(
                f"{self.req.name} never announced its SSH host key on the serial console "
                f"({self.console_log}); is the image built by scripts/build-image.sh?",
                phase=Phase.SSH.value, console_tail=console_tail(self.console_log),
            ) from None
        ready = Deadline.after(min(READY_GRACE_S, deadline.remaining()), self.l._clock)
        def is_ready() -> Optional[bool]:
            self._check_alive()
            return True if ready_on_console(self.console_log) else None

        with contextlib.suppress(WaitTimeout):  # then connect anyway; the SYN retry covers it
            poll_until(is_ready, ready, interval_s=0.02, what="VMISO-READY on the console")
        # Sub-timings of the ssh phase: waiting for the guest's console lines after the lease,
        # then TCP + SSH handshake (which includes libvirt's filter learning the leased address).
        self.timings["ssh.console"] = round(self.l._clock.monotonic() - started, 3)
        try:
            remote = self._connect_in_slices(lease.ip, host_key, key, deadline)
        except GuestError as exc:
            exc.console_tail = exc.console_tail or console_tail(self.console_log)
            raise
        self.timings["ssh.connect"] = round(self.l._clock.monotonic() - started - self.timings["ssh.console"], 3)
        undo.callback(remote.close)
        return remote

    def _connect_in_slices(self, ip: str, host_key: str, key: ClientKeyLike, deadline: Deadline) -> RemoteSession:
        """Connect, in slices of a few seconds so a kill or a dead guest is noticed between them."""
        while True:
            self._check_alive()
            slice_deadline = Deadline.after(min(deadline.remaining(), SSH_SLICE_S), self.l._clock)
            try:
                return self.l._connect(ip, host_key=host_key, client_key=key, deadline=slice_deadline)
            except SshUnavailable:
                if deadline.expired():
                    raise

    # --- checks and undo -------------------------------------------------------------------
    def _check_alive(self) -> None:
        self._check_cancel()
        state = self.l.hypervisor.state(self.req.name)
        if state != "running":
            reported = error_on_console(self.console_log)
            raise GuestDied(
                f"{self.req.name} stopped while booting (state {state or 'gone'})"
                + (f": its init reported {reported!r}" if reported else ""),
                phase=self.phase.value, console_tail=console_tail(self.console_log),
            )

    def _remove_key_dir(self) -> None:
        if self.key_dir.exists():  # key creation may have failed before making it
            shutil.rmtree(self.key_dir)

    def _release_lease(self) -> None:
        lease = self.lease or self.l.leases.current(self.network, self.mac)
        if lease is not None:
            self.l.leases.release(self.network, lease)

