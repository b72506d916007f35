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
from typing import Any, Callable, Iterator, Optional, Protocol, TypeVar

from . import overlay
from .config import ImageProfile, Settings
from .domainxml import DomainSpec, InterfacePolicy, Owner, TrafficFilter
from .errors import AddressTimeout, FirewallError, GuestDied, GuestError, SshUnavailable, VmIsolationError
from .hypervisor import NetworkInfo
from .ids import DomainName, random_mac
from .imagekinds import BootPlan, ImageKind, KindContext, kind_for
from .journal import NO_JOURNAL, ResourceJournal
from .launcher import GUEST_RUN_DIR
from .leases import Lease, Leases
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


class Phase(enum.StrEnum):
    """The phases of a guest's boot, in order; the values name them in timings and messages."""

    OVERLAY = "overlay"
    DEFINE = "define"
    START = "start"
    LEASE = "lease"
    SSH = "ssh"
    SEED = "seed"
    """cloud-init images only: the NoCloud seed, made between the key and the define."""


class Cancelled(VmIsolationError):
    """The boot was cancelled (the task was killed) before the guest was ready."""


# --- the boundaries this module is written against -------------------------------------------

class Hypervisor(Protocol):
    def define(self, spec: DomainSpec) -> None: ...
    def start(self, name: str) -> None: ...
    def state(self, name: str) -> Optional[str]: ...
    def destroy(self, name: str) -> None: ...
    def undefine(self, name: str) -> None: ...
    def require_active_network(self, name: str) -> NetworkInfo: ...


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


KeyFactory = Callable[[Path], ClientKeyLike]
Connector = Callable[..., RemoteSession]
KindFactory = Callable[[Settings, ImageProfile], ImageKind]


class QemuImgDisks:
    """:class:`Disks` through qemu-img overlays."""

    def create(self, base: Path, overlay_path: Path) -> Path:
        return overlay.create_overlay(base, overlay_path)

    def remove(self, overlay_path: Path) -> None:
        overlay.remove_overlay(overlay_path)


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
    profile: Optional[ImageProfile] = None
    """The image's kind, login user and boot deadline; None: a direct-kernel ``base_image``."""


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
    user: str = "root"
    """Who the session is logged in as (the image kind's login user)."""
    home: str = "/root"
    """That user's HOME in the guest."""

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
    initial RTO: measured on 40-100 % of boots (shared/reference/boot-spike.md)."""
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return False
    return any(line.strip() == READY_MARKER for line in text.splitlines())


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
        leases: Leases,
        *,
        domain_type: str,
        connect: Connector,
        make_key: KeyFactory,
        firewall: GuestFirewall,
        disks: Optional[Disks] = None,
        kinds: KindFactory = kind_for,
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
        self._disks = disks or QemuImgDisks()
        self._kinds = kinds
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
        self.kind = launcher._kinds(launcher.settings, request.profile or ImageProfile(path=request.base_image))
        self.boot_deadline: Optional[Deadline] = None
        """Start -> SSH, for kinds with their own boot deadline (set when the domain starts)."""

    def run(self, undo: ExitStack) -> Guest:
        self.net_info = self.l.hypervisor.require_active_network(self.network)
        self._require_enforced_policy()
        self._timed(Phase.OVERLAY, lambda: self._overlay(undo))
        key = self._key(undo)
        plan = self._prepare(undo, key)
        self._timed(Phase.DEFINE, lambda: self._define(undo, plan))
        stale = self._lease_keys_before_start()
        self._timed(Phase.START, lambda: self._start(undo))
        lease = self._timed(Phase.LEASE, lambda: self._wait_lease(stale))
        remote = self._timed(Phase.SSH, lambda: self._ssh(undo, lease, key, plan))
        return Guest(self.req.name, self.mac, lease, remote, self.console_log, self.timings, self.req.journal,
                     user=self.kind.user, home=self.kind.home)

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

    def _prepare(self, undo: ExitStack, key: ClientKeyLike) -> BootPlan:
        """What the image's kind makes before the domain is defined (a cloud-init seed)."""
        ctx = KindContext(name=self.req.name, client_public_key=key.public_openssh, key_dir=self.key_dir,
                          overlay_dir=self.vm.overlay_dir, record=self._record,
                          on_undo=lambda kind, remove: self._on_undo(undo, kind, remove))
        if self.kind.prepare_phase is None:
            return self.kind.prepare(ctx)
        return self._timed(Phase(self.kind.prepare_phase), lambda: self.kind.prepare(ctx))

    def _define(self, undo: ExitStack, plan: BootPlan) -> None:
        if self.req.console_log is None:
            undo.callback(self.console_log.unlink, missing_ok=True)
        self._create_console_log()
        spec = DomainSpec(
            name=self.req.name,
            domain_type=self.l.domain_type,
            vcpus=self.req.vcpus,
            memory_mib=self.req.memory_mib,
            kernel=plan.kernel,
            initrd=plan.initrd,
            cmdline=plan.cmdline,
            disk=self.overlay_path,
            mac=self.mac,
            network=self.network,
            console_log=self.console_log,
            owner=replace(self.req.owner, created_at=self.l._wallclock()),
            interface=self._interface_policy(),
            seed=plan.seed,
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

    def _lease_keys_before_start(self) -> frozenset[tuple[str, float]]:
        return frozenset(lease.key for lease in self.l.leases.all_for(self.network, self.mac))

    def _start(self, undo: ExitStack) -> None:
        undo.callback(self.l.hypervisor.destroy, self.req.name)
        if self.kind.boot_timeout_s is not None:
            self.boot_deadline = Deadline.after(self.kind.boot_timeout_s, self.l._clock)
        self.l.hypervisor.start(self.req.name)

    def _wait_lease(self, stale: frozenset[tuple[str, float]]) -> Lease:
        deadline = self.boot_deadline or Deadline.after(self.vm.boot_timeout_s, self.l._clock)
        try:
            self.lease = self.l.leases.wait_for_address(
                self.network, self.mac, deadline, stale=stale, check=self._check_alive)
        except WaitTimeout:
            raise AddressTimeout(
                f"{self.req.name} got no DHCP lease on network {self.network!r} within "
                f"{self._boot_budget()} (MAC {self.mac}): the guest did not boot or its DHCP "
                f"client got no answer; raise {self._boot_budget_key()} on a slow host",
                phase=Phase.LEASE.value, console_tail=console_tail(self.console_log),
            ) from None
        return self.lease

    def _boot_budget(self) -> str:
        if self.kind.boot_timeout_s is not None:
            return f"{self.kind.boot_timeout_s:g} s of the domain's start"
        return f"{self.vm.boot_timeout_s:g} s"

    def _boot_budget_key(self) -> str:
        return ("the image's boot_timeout_s ([image:NAME])" if self.kind.boot_timeout_s is not None
                else "[vm] boot_timeout_s")

    def _ssh(self, undo: ExitStack, lease: Lease, key: ClientKeyLike, plan: BootPlan) -> RemoteSession:
        if plan.host_key is not None:
            return self._ssh_pinned(undo, lease, key, plan.host_key)
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
        try:
            remote = self._connect_in_slices(lease.ip, host_key, key, deadline)
        except GuestError as exc:
            exc.console_tail = exc.console_tail or console_tail(self.console_log)
            raise
        undo.callback(remote.close)
        return remote

    def _ssh_pinned(self, undo: ExitStack, lease: Lease, key: ClientKeyLike, host_key: str) -> RemoteSession:
        """SSH to a guest whose host key was pinned before it booted: connect (retrying while its
        SSH server starts), then let the login user have the sandbox and run directories."""
        deadline = self.boot_deadline or Deadline.after(self.vm.ssh_timeout_s, self.l._clock)
        try:
            remote = self._connect_in_slices(lease.ip, host_key, key, deadline)
        except SshUnavailable as exc:
            raise SshUnavailable(
                f"{self.req.name} accepted no SSH session as {self.kind.user!r} within {self._boot_budget()} "
                f"({exc.args[0] if exc.args else exc}); a {self.kind.name} image boots slowly under emulation: "
                f"raise {self._boot_budget_key()}, and check that the image has cloud-init and an SSH server",
                phase=Phase.SSH.value, console_tail=console_tail(self.console_log)) from None
        except GuestError as exc:
            exc.console_tail = exc.console_tail or console_tail(self.console_log)
            raise
        undo.callback(remote.close)
        setup = self.kind.session_setup(self._session_directories())
        if setup is not None:
            code, _out, err = remote.run_capture(setup, timeout_s=max(deadline.remaining(), 10.0))
            if code != 0:
                raise SshUnavailable(
                    f"{self.req.name}: the login user {self.kind.user!r} cannot create "
                    f"{', '.join(self._session_directories())} (status {code}: "
                    f"{err.decode('utf-8', 'replace').strip()[-300:]}); give it password-less sudo or "
                    f"make those directories writable in the image", phase=Phase.SSH.value)
        return remote

    def _session_directories(self) -> tuple[str, ...]:
        return (self.l.settings.executor.guest_sandbox, GUEST_RUN_DIR)

    def _connect_in_slices(self, ip: str, host_key: str, key: ClientKeyLike, deadline: Deadline) -> RemoteSession:
        """Connect, in slices of a few seconds so a kill or a dead guest is noticed between them."""
        while True:
            self._check_alive()
            slice_deadline = Deadline.after(min(deadline.remaining(), SSH_SLICE_S), self.l._clock)
            try:
                return self.l._connect(ip, host_key=host_key, client_key=key, deadline=slice_deadline,
                                       user=self.kind.user)
            except SshUnavailable:
                if deadline.expired():
                    raise

    # --- checks and undo -------------------------------------------------------------------
    def _check_alive(self) -> None:
        self._check_cancel()
        state = self.l.hypervisor.state(self.req.name)
        if state != "running":
            raise GuestDied(
                f"{self.req.name} stopped while booting (state {state or 'gone'})",
                phase=self.phase.value, console_tail=console_tail(self.console_log),
            )

    def _remove_key_dir(self) -> None:
        if self.key_dir.exists():  # key creation may have failed before making it
            shutil.rmtree(self.key_dir)

    def _release_lease(self) -> None:
        lease = self.lease or self.l.leases.current(self.network, self.mac)
        if lease is not None:
            self.l.leases.release(self.network, lease)

