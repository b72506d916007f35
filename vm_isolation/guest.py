"""One guest's life: overlay -> define -> start -> lease -> ssh, and teardown in reverse.

:meth:`GuestFactory.boot` is a context manager. Each phase is a short method; the undo of
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
from typing import Callable, Iterator, Optional, Protocol, TypeVar

from .config import GuestKernel, ImageProfile, Settings
from .console import console_tail, error_on_console, host_key_from_console, ready_on_console
from .domainxml import DomainSpec, InterfacePolicy, Owner
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
from .ids import DomainName, random_mac, tap_for
from .imagekinds import BootPlan, ImageKind, KindContext, kind_for
from .journal import NO_JOURNAL, ResourceJournal
from .launch_script import GUEST_RUN_DIR
from .waiting import SYSTEM_CLOCK, Clock, Deadline, WaitTimeout, poll_until

log = logging.getLogger(__name__)
_T = TypeVar("_T")

READY_GRACE_S = 5.0
"""How long after the host key SSH waits for READY before trying anyway (an image that never
prints it still works, only slower)."""
SSH_SLICE_S = 3.0


class Phase(enum.StrEnum):
    """The phases of a guest's boot, in order; the values name them in timings and messages."""

    OVERLAY = "overlay"
    DEFINE = "define"
    START = "start"
    LEASE = "lease"
    SSH = "ssh"
    ADOPT = "adopt"
    """A pool guest taken over (:meth:`GuestFactory.adopt`): journaled, its owner changed."""
    SEED = "seed"
    """cloud-init images only: the NoCloud seed, made between the key and the define."""


class Cancelled(VmIsolationError):
    """The boot was cancelled (the task was killed) before the guest was ready."""


# --- the boundaries this module is written against -------------------------------------------

KeyFactory = Callable[[Path], ClientKeyLike]
KeyLoader = Callable[[Path], ClientKeyLike]
"""Loads the client key a key directory already holds (an adopted guest's)."""
Connector = Callable[..., RemoteSession]
KindFactory = Callable[[Settings, ImageProfile, Optional[GuestKernel]], ImageKind]


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
    image: str = ""
    """The base image's configured name (what a warm-pool guest's shape is matched on)."""
    kernel: Optional[GuestKernel] = None
    """What to boot (``settings.images.kernel_for(image)``); None: the fast kernel."""
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


# --- the lifecycle -------------------------------------------------------------------------

ProgressFn = Callable[[str, float], None]


class GuestFactory:
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
        kinds: KindFactory = kind_for,
        clock: Clock = SYSTEM_CLOCK,
        wallclock: Callable[[], float] = time.time,
        load_key: Optional[KeyLoader] = None,
    ) -> None:
        self.settings = settings
        self.hypervisor = hypervisor
        self.leases = leases
        self.domain_type = domain_type
        self._connect = connect
        self._make_key = make_key
        self.firewall = firewall
        self._disks = disks
        self._kinds = kinds
        self._clock = clock
        self._wallclock = wallclock
        self._load_key = load_key

    @contextmanager
    def boot(
        self,
        request: GuestRequest,
        *,
        cancel: Optional[threading.Event] = None,
        progress: ProgressFn = lambda phase, seconds: None,
    ) -> Iterator[Guest]:
        """Boot ``request``'s guest; on leaving the block (any way) everything is removed."""
        held = self.hold(request, cancel=cancel, progress=progress)
        try:
            yield held.guest
        finally:
            held.release()

    def hold(self, request: GuestRequest, *, cancel: Optional[threading.Event] = None,
             progress: ProgressFn = lambda phase, seconds: None) -> HeldGuest:
        """Boot ``request``'s guest and keep it until :meth:`HeldGuest.release` (teardown, as
        :meth:`boot`'s block ends) or :meth:`HeldGuest.disown` (its resources now belong to
        someone else: the warm pool's hand-over). A failed boot has removed everything."""
        boot = _Boot(self, request, cancel or threading.Event(), progress)
        undo = ExitStack()
        try:
            guest = boot.run(undo)
        except BaseException:
            undo.close()
            raise
        return HeldGuest(guest, undo, request.journal)

    @contextmanager
    def adopt(
        self,
        offer: Adoptable,
        request: GuestRequest,
        *,
        on_owned: Callable[[], None] = lambda: None,
        cancel: Optional[threading.Event] = None,
        progress: ProgressFn = lambda phase, seconds: None,
    ) -> Iterator[Guest]:
        """Take over a guest another owner booted (a pool guest), then own it as if booted here.

        ``request`` carries the new owner and journal (its name, image and shape are ignored:
        the guest's are ``offer``'s). Every resource is journaled first; then the domain's
        owner metadata is switched to ``request.owner``, and only from that moment is the
        teardown armed, the same chain :meth:`boot` registers (so a failed switch tears down
        nothing: the guest is still its old owner's). ``on_owned`` runs right after the switch
        (the pool is told). On leaving the block everything is removed, exactly as after a boot.
        Raises what a boot raises; :class:`GuestDied` if the guest is gone before the switch.
        """
        adoption = _Adopt(self, offer, request, cancel or threading.Event(), progress, on_owned)
        with ExitStack() as undo:
            yield adoption.run(undo)

    def domain_state(self, name: str) -> Optional[str]:
        """The state of a guest's domain ("running", ...; None once it is gone)."""
        return self.hypervisor.state(name)

    def power_off(self, name: str) -> None:
        """Pull the plug on a guest, from any thread: a boot or session in progress ends at its
        next step, and the :meth:`boot` block that owns the guest still removes everything."""
        self.hypervisor.destroy(name)


class Adoptable(Protocol):
    """What :meth:`GuestFactory.adopt` needs of a guest offered to it (poolwire.Offer has it)."""

    @property
    def name(self) -> DomainName: ...
    @property
    def mac(self) -> str: ...
    @property
    def ip(self) -> str: ...
    @property
    def expiry_time(self) -> float: ...
    @property
    def client_id(self) -> str: ...
    @property
    def host_key(self) -> str: ...


class HeldGuest:
    """A booted guest and the teardown that removes it (see :meth:`GuestFactory.hold`)."""

    KINDS = ("overlay", "key_dir", "domain", "lease")

    def __init__(self, guest: Guest, undo: ExitStack, journal: ResourceJournal) -> None:
        self.guest = guest
        self._undo = undo
        self._journal = journal

    def release(self) -> None:
        """Tear the guest down (reverse order, every step journaled); idempotent."""
        self._undo.close()

    def disown(self) -> None:
        """Forget the guest without removing it: it belongs to someone else now. Its SSH
        session is closed; each resource is journaled as no longer ours."""
        with contextlib.suppress(VmIsolationError, OSError):
            self.guest.remote.close()
        self._undo.pop_all()
        for kind in self.KINDS:
            self._journal.removed(kind, self.guest.name)


class _Boot:
    """The state of one boot; one short method per phase."""

    def __init__(self, launcher: GuestFactory, request: GuestRequest, cancel: threading.Event,
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
        self.kind = launcher._kinds(launcher.settings, request.profile or ImageProfile(path=request.base_image),
                                    request.kernel)
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
        self._undo_overlay(undo)
        self.l._disks.create(self.req.base_image, self.overlay_path)

    def _key(self, undo: ExitStack) -> ClientKeyLike:
        self._record("key_dir", path=str(self.key_dir))
        self._undo_key_dir(undo)
        return self.l._make_key(self.key_dir)

    def _prepare(self, undo: ExitStack, key: ClientKeyLike) -> BootPlan:
        """What the image's kind makes before the domain is defined (a cloud-init seed)."""
        ctx = KindContext(name=self.req.name, client_public_key=key.public_openssh, key_dir=self.key_dir,
                          overlay_dir=self.vm.overlay_dir, record=self._record,
                          on_undo=lambda kind, remove: self._on_undo(undo, kind, remove))
        if self.kind.prepare_phase is None:
            return self.kind.prepare(ctx)
        return self._timed(Phase(self.kind.prepare_phase), lambda: self.kind.prepare(ctx))

    # The undo of each resource, shared by a boot and an adoption (one teardown chain).
    def _undo_overlay(self, undo: ExitStack) -> None:
        self._on_undo(undo, "overlay", lambda: self.l._disks.remove(self.overlay_path))

    def _undo_key_dir(self, undo: ExitStack) -> None:
        self._on_undo(undo, "key_dir", self._remove_key_dir)

    def _undo_console(self, undo: ExitStack) -> None:
        if self.req.console_log is None:
            undo.callback(self._remove_console_log)

    def _undo_domain(self, undo: ExitStack) -> None:
        self._on_undo(undo, "domain", lambda: self.l.hypervisor.undefine(self.req.name))

    def _undo_lease(self, undo: ExitStack) -> None:
        # Registered before the guest runs, so it runs after destroy: a dead guest cannot renew it.
        self._on_undo(undo, "lease", self._release_lease)

    def _undo_running(self, undo: ExitStack) -> None:
        undo.callback(self.l.hypervisor.destroy, self.req.name)

    def _remove_console_log(self) -> None:
        try:
            self.console_log.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("%s: could not remove its console log %s: %s", self.req.name, self.console_log, exc)

    def _define(self, undo: ExitStack, plan: BootPlan) -> None:
        self._undo_console(undo)
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
        self._undo_domain(undo)
        self._record("lease", mac=self.mac, network=self.network)
        self._undo_lease(undo)

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
                f"network's nftables table, inet vmiso for `default`), or set [network] isolation = off "
                f"where the operator isolates the network by other means")

    def _interface_policy(self) -> InterfacePolicy:
        """With ``[network] isolation = on``: an isolated bridge port (no frame between two
        guests) on a tap named for the guest's MAC, which the address guard's rules confine to
        that MAC and the address of its DHCP lease (hostfirewall.guard_ruleset)."""
        if not self.l.settings.network.enforced:
            return InterfacePolicy()
        return InterfacePolicy(isolated_port=True, tap=tap_for(self.mac))

    def _lease_keys_before_start(self) -> frozenset[tuple[str, float]]:
        return frozenset(lease.key for lease in self.l.leases.all_for(self.network, self.mac))

    def _start(self, undo: ExitStack) -> None:
        self._undo_running(undo)
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



class _Adopt(_Boot):
    """The take-over of a guest someone else booted: journal, switch owner, arm teardown, SSH."""

    def __init__(self, launcher: GuestFactory, offer: Adoptable, request: GuestRequest, cancel: threading.Event,
                 progress: ProgressFn, on_owned: Callable[[], None]) -> None:
        super().__init__(launcher, replace(request, name=offer.name, console_log=None), cancel, progress)
        self.offer = offer
        self.on_owned = on_owned
        self.mac = offer.mac
        self.lease = Lease(offer.mac, offer.ip, offer.name, offer.expiry_time, offer.client_id, "pool")
        self.phase = Phase.ADOPT

    def run(self, undo: ExitStack) -> Guest:
        if self.l._load_key is None:
            raise GuestError("this launcher cannot load an existing client key (no load_key given)",
                             phase=Phase.ADOPT.value)
        # As for a boot: never run a task in a guest on a host that no longer enforces the policy.
        self.net_info = self.l.hypervisor.require_active_network(self.network)
        self._require_enforced_policy()
        self._timed(Phase.ADOPT, lambda: self._take_over(undo))
        key = self.l._load_key(self.key_dir)
        assert self.lease is not None
        lease = self.lease
        remote = self._timed(Phase.SSH, lambda: self._adopted_ssh(lease.ip, key))
        undo.callback(remote.close)
        return Guest(self.req.name, self.mac, lease, remote, self.console_log, self.timings, self.req.journal)

    def _take_over(self, undo: ExitStack) -> None:
        # Journaled before the switch: from the switch on, a reaper may judge the guest by this
        # executor's liveness and must find everything it would have to remove.
        self._record("overlay", path=str(self.overlay_path))
        self._record("key_dir", path=str(self.key_dir))
        self._record("domain")
        self._record("lease", mac=self.mac, network=self.network)
        try:
            self._check_cancel()
            self._switch_owner()
        except BaseException:
            for kind in HeldGuest.KINDS:  # never ours: its old owner (or the reaper) removes it
                self.req.journal.removed(kind, self.req.name)
            raise
        self._undo_overlay(undo)
        self._undo_key_dir(undo)
        self._undo_console(undo)
        self._undo_domain(undo)
        self._undo_lease(undo)
        self._undo_running(undo)
        self.on_owned()

    def _switch_owner(self) -> None:
        owner = replace(self.req.owner, created_at=self.l._wallclock())
        if self.l.hypervisor.state(self.req.name) != "running":
            raise GuestDied(f"the pool guest {self.req.name} is gone or stopped before the hand-over",
                            phase=Phase.ADOPT.value)
        try:
            self.l.hypervisor.set_owner(self.req.name, owner)
        except VmIsolationError:
            # The call may have failed after libvirt applied it: then the guest is ours after all.
            if self.l.hypervisor.owner_of(self.req.name) != owner:
                raise
            log.warning("%s: setting the owner reported an error but took effect", self.req.name)

    def _adopted_ssh(self, ip: str, key: ClientKeyLike) -> RemoteSession:
        deadline = Deadline.after(self.vm.ssh_timeout_s, self.l._clock)
        try:
            return self._connect_in_slices(ip, self.offer.host_key, key, deadline)
        except GuestError as exc:
            exc.console_tail = exc.console_tail or console_tail(self.console_log)
            raise
