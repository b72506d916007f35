"""The reaper: removes what vm-isolation left behind when an executor died without teardown.

A guest's teardown runs on every path the executor lives through, but not when the executor is
SIGKILLed, OOM-killed or loses its host mid-boot. Then the host keeps a running domain, its
overlay, its SSH key directory and its DHCP lease. :func:`reap` finds and removes them:

* **orphaned domains**: owner metadata present (:func:`domainxml.parse_owner`), a name
  :func:`ids.is_our_domain_name` accepts, and an owning executor that is gone: its pid is dead,
  a zombie, or alive but started at another time than ``executor_start_time`` (pid reused).
  Each is destroyed and undefined, the leases of its MACs released, and its overlay
  ``<overlay_dir>/<name>.qcow2``, seed ``<overlay_dir>/<name>.seed.iso`` (cloud-init images)
  and key directory ``<key_dir>/<name>`` deleted.
* **journal entries** (:mod:`journal`): an executor records each resource in its sandbox
  before creating it. For a journal whose owner is gone, every overlay, seed, key directory and
  DHCP lease it created and never removed is removed, unless a domain of that name is still
  defined (then the domain's own metadata decides). This covers a crash between creating the
  overlay and defining the domain, without waiting ``orphan_min_age_s``, and leases whose
  domain is already gone.
* **orphaned files**: ``<overlay_dir>/vmiso-*.qcow2``, ``<overlay_dir>/vmiso-*.seed.iso`` and
  ``<key_dir>/vmiso-*`` with no
  defined domain of that name, older than ``orphan_min_age_s`` (a booting guest's overlay and
  key exist a few milliseconds before its domain is defined).

What it never touches: a domain that records no owner pid (vm-isolation-boot's); a domain
without our metadata or with a foreign name; a domain whose owner is alive; any path outside
``overlay_dir``/``key_dir`` (a domain's disk list is read from libvirt, which anyone with the
socket can write, so only the exact paths we would have created are deleted); names
:func:`is_our_domain_name` rejects.

It is written against small Protocols (:class:`DomainTable`, :class:`LeaseBook`,
:class:`ProcessTable`) so it is unit-tested on fakes; the real adapters are
:class:`~vm_isolation.hypervisor.LibvirtHypervisor`, :class:`~vm_isolation.leases.Leases` and
:class:`~vm_isolation.procinfo.ProcProcessTable`.

Liveness: an executor holds a lock on its owner file (:mod:`ownership`) for as long as it
lives, and records that file's path in the domain's metadata and its journal; the lock is what
is asked, so owners in other pid namespaces are judged right. Only records without an owner
file (written before it existed) fall back to the pid and its start time, which are judged in
*this* pid namespace. **Dead owner files** in ``[vm] owner_dir`` point at their journals: those
are replayed like the ones given (so a watcher finds a crashed executor's journal without
knowing the agent's work directory), and the owner file is deleted once nothing is left.
"""

from __future__ import annotations

import enum
import functools
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol

from .config import Settings
from .domainxml import Owner
from .errors import VmIsolationError
from .hosttypes import Lease, OwnedDomain
from .ids import is_our_domain_name
from .journal import JOURNAL_DIR, JOURNAL_FILE, read_journal
from .ownership import Liveness, is_owner_file_path, liveness, owner_files, read_owner_file
from .procinfo import ProcProcessTable

log = logging.getLogger(__name__)

DEFAULT_ORPHAN_MIN_AGE_S = 300.0
OVERLAY_SUFFIX = ".qcow2"
SEED_SUFFIX = ".seed.iso"
"""A cloud-init guest's NoCloud seed, next to its overlay (imagekinds.cloudinit.seed_path)."""


# --- the boundaries this module is written against -------------------------------------------

class DomainTable(Protocol):
    """What the reaper needs of the hypervisor (LibvirtHypervisor has it)."""

    def owned_domains(self) -> list[OwnedDomain]: ...
    def state(self, name: str) -> Optional[str]: ...
    def owner_of(self, name: str) -> Optional[Owner]: ...
    def destroy(self, name: str) -> None: ...
    def undefine(self, name: str) -> None: ...


class LeaseBook(Protocol):
    """What the reaper needs of the leases (Leases has it)."""

    def all_for(self, network: str, mac: str) -> list[Lease]: ...
    def release(self, network: str, lease: Lease) -> None: ...


class PortTable(Protocol):
    """The host firewall's per-guest openings (hostfirewall.NftFirewall has it)."""

    def opened_ports(self) -> set[tuple[str, int]]: ...
    def close_port(self, ip: str, port: int) -> None: ...


class ProcessTable(Protocol):
    def is_alive(self, pid: int, start_time: str) -> bool:
        """True if ``pid`` runs and (when ``start_time`` is known) started at ``start_time``."""
        ...


# --- the report ------------------------------------------------------------------------------

class Kind(enum.StrEnum):
    DOMAIN = "domain"
    OVERLAY = "overlay"
    SEED = "seed"
    KEY_DIR = "key_dir"
    LEASE = "lease"
    AGENT_PORT = "agent_port"


@dataclass(frozen=True)
class Leftover:
    """One thing the reaper found, and why it counts as left over."""

    kind: Kind
    name: str
    reason: str
    path: str = ""
    """The file or directory (overlays and key directories); the IP (leases); "ip:port" (agent ports)."""
    macs: tuple[str, ...] = ()
    owner: Optional[dict[str, Any]] = None
    """The domain's Owner metadata, as a dict."""


@dataclass
class ReapReport:
    """What :func:`reap` found, removed, left alone and failed at."""

    dry_run: bool
    found: list[Leftover] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    """One line per action taken: "destroyed vmiso-...", "deleted /path", "released IP (MAC)"."""
    kept: list[str] = field(default_factory=list)
    """Domains of ours left alone, with why (owner alive, other executor, too young)."""
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- reaping ---------------------------------------------------------------------------------

def reap(
    settings: Settings,
    hypervisor: DomainTable,
    leases: LeaseBook,
    *,
    processes: Optional[ProcessTable] = None,
    only_executor_id: Optional[str] = None,
    only_framework_id: Optional[str] = None,
    orphan_files: Optional[bool] = None,
    orphan_min_age_s: float = DEFAULT_ORPHAN_MIN_AGE_S,
    journals: Iterable[Path] = (),
    owner_dir_pass: bool = True,
    dry_run: bool = False,
    wallclock: Callable[[], float] = time.time,
    ports: Optional[PortTable] = None,
) -> ReapReport:
    """Find (and unless ``dry_run``, remove) every leftover of a dead executor.

    ``only_executor_id``/``only_framework_id`` restrict the domains considered to one
    executor's (what an executor calls at start-up); ``orphan_files`` (default: only when no
    such restriction is given) also scans the overlay and key directories for files of no
    domain; ``journals`` are sandbox journals to finish the teardown of; ``owner_dir_pass``
    also replays the journals of dead owner files and deletes those files; ``ports`` (the host
    firewall) lets journaled agent-port openings be closed, and with ``orphan_files`` every
    opening whose IP no defined domain of ours holds. Never raises for one leftover: failures
    are collected in ``report.errors``.
    """
    report = ReapReport(dry_run=dry_run)
    procs = processes or ProcProcessTable()
    try:
        domains = hypervisor.owned_domains()
    except VmIsolationError as exc:
        report.errors.append(f"cannot list domains: {exc}")
        return report
    for domain in domains:
        leftover = _judge_domain(settings, domain, procs, only_executor_id, only_framework_id, report)
        if leftover is not None:
            report.found.append(leftover)
            if not dry_run:
                _remove_domain(settings, hypervisor, leases, leftover, report)
    dead_owners = (_dead_owner_files(settings, only_executor_id, only_framework_id, report)
                   if owner_dir_pass else {})
    journal_errors: dict[Path, int] = {}
    replay = [*journals, *(j for j in dead_owners.values() if j is not None)]
    openings = _Openings(settings, hypervisor, leases, ports, report)
    for journal in dict.fromkeys(replay):
        errors_before = len(report.errors)
        for leftover, remove in _from_journal(settings, hypervisor, leases, journal, procs, report, openings):
            report.found.append(leftover)
            if not dry_run:
                remove()
        journal_errors[journal] = len(report.errors) - errors_before
    if not dry_run:
        for owner_file, replayed in dead_owners.items():
            if replayed is None or journal_errors.get(replayed) == 0:
                _delete(owner_file, report)
    if orphan_files if orphan_files is not None else (only_executor_id is None and only_framework_id is None):
        listed = {d.name for d in domains}
        seen = {leftover.path for leftover in report.found if leftover.path}
        for leftover in _orphan_files(settings, hypervisor, orphan_min_age_s, wallclock(), listed, report):
            if leftover.path in seen:
                continue
            report.found.append(leftover)
            if not dry_run:
                _remove_orphan_file(settings, hypervisor, leftover, report)
        for leftover, remove in openings.orphans():
            report.found.append(leftover)
            if not dry_run:
                remove()
    return report


def owner_alive(settings: Settings, owner: Owner, procs: ProcessTable) -> bool:
    """Whether ``owner`` still runs: its owner file's lock, or (older records) its pid."""
    if owner.owner_file:
        path = Path(owner.owner_file)
        if not is_owner_file_path(path, settings.vm.owner_dir):
            log.debug("owner file %r is not in %s: its owner counts as alive", owner.owner_file,
                      settings.vm.owner_dir)
            return True
        return liveness(path) is not Liveness.DEAD
    return procs.is_alive(owner.executor_pid, owner.executor_start_time)


def _dead_owner_files(settings: Settings, only_executor_id: Optional[str], only_framework_id: Optional[str],
                      report: ReapReport) -> dict[Path, Optional[Path]]:
    """Owner files whose owner is gone, each with the journal it names (None: no usable one)."""
    dead: dict[Path, Optional[Path]] = {}
    try:
        candidates = owner_files(settings.vm.owner_dir)
    except OSError as exc:
        report.errors.append(f"cannot list {settings.vm.owner_dir}: {exc}")
        return dead
    for path in candidates:
        if liveness(path) is not Liveness.DEAD:
            continue
        try:
            record = read_owner_file(path)
        except FileNotFoundError:
            continue  # removed meanwhile (by its owner's clean exit, or another reaper)
        except OSError as exc:
            report.errors.append(f"cannot read the owner file {path}: {exc}")
            continue
        if only_executor_id is not None and record.executor_id != only_executor_id:
            continue
        if only_framework_id is not None and record.framework_id != only_framework_id:
            continue
        journal = Path(record.journal) if record.journal else None
        if journal is not None and (journal.name != JOURNAL_FILE or journal.parent.name != JOURNAL_DIR
                                    or not journal.is_file() or journal.is_symlink()):
            journal = None  # not a journal (or its sandbox was garbage-collected): nothing to replay
        dead[path] = journal
    return dead


def _judge_domain(settings: Settings, domain: OwnedDomain, procs: ProcessTable, only_executor_id: Optional[str],
                  only_framework_id: Optional[str], report: ReapReport) -> Optional[Leftover]:
    """A Leftover if ``domain`` is ours and its owner is gone; None (noted in kept) otherwise."""
    if not is_our_domain_name(domain.name):
        return None  # owner metadata but a name we never produce: not ours to judge
    owner = domain.owner
    if only_executor_id is not None and owner.executor_id != only_executor_id:
        return None
    if only_framework_id is not None and owner.framework_id != only_framework_id:
        return None
    if owner.executor_pid <= 0 and not owner.owner_file:
        # vm-isolation-boot and direct GuestFactory users record no owner: their liveness
        # cannot be judged, so they are never reaped automatically.
        report.kept.append(f"{domain.name}: no owner pid or owner file recorded; remove it by hand if it is stale")
        return None
    if owner_alive(settings, owner, procs):
        report.kept.append(f"{domain.name}: owner {_describe(owner)} is alive")
        return None
    reason = f"owner executor {owner.executor_id!r} ({_describe(owner)}) is gone"
    return Leftover(Kind.DOMAIN, domain.name, reason, macs=domain.macs, owner=asdict(owner))


def _remove_domain(settings: Settings, hypervisor: DomainTable, leases: LeaseBook, leftover: Leftover,
                   report: ReapReport) -> None:
    name = leftover.name
    try:
        # Asked again right before destroying: a warm-pool guest may have been handed over to a
        # live executor since the listing (its owner metadata switched), and is then not ours.
        current = hypervisor.owner_of(name)
        if current is not None and asdict(current) != leftover.owner:
            report.kept.append(f"{name}: its owner changed since it was judged (now {_describe(current)})")
            return
        hypervisor.destroy(name)
        hypervisor.undefine(name)
    except VmIsolationError as exc:
        # Its disk may still be in use: leave its files for the next run.
        report.errors.append(f"{name}: cannot remove domain: {exc}")
        return
    report.removed.append(f"destroyed and undefined {name}")
    log.info("reaped domain %s (%s)", name, leftover.reason)
    _release_leases(settings.libvirt.network, leases, name, leftover.macs, report)
    _delete(_overlay_path(settings, name), report)
    _delete(_seed_path(settings, name), report)
    _delete(_key_path(settings, name), report)
    _delete(settings.vm.console_dir / f"{name}.console", report)  # a pool guest's (or vm-isolation-boot's)


def _release_leases(network: str, leases: LeaseBook, name: str, macs: Iterable[str], report: ReapReport) -> None:
    for mac in macs:
        try:
            found = leases.all_for(network, mac)
        except VmIsolationError as exc:
            report.errors.append(f"{name}: cannot release the lease of {mac}: {exc}")
            continue
        for lease in found:
            _release_lease(network, leases, name, mac, lease, report)


def _release_lease(network: str, leases: LeaseBook, name: str, mac: str, lease: Lease, report: ReapReport) -> None:
    try:
        leases.release(network, lease)
    except VmIsolationError as exc:
        report.errors.append(f"{name}: cannot release the lease of {mac}: {exc}")
        return
    report.removed.append(f"released lease {lease.ip} ({mac}) of {name}")


def _describe(owner: Owner) -> str:
    pid = f"pid {owner.executor_pid}, started {owner.executor_start_time or '?'}"
    return f"{pid}, owner file {owner.owner_file}" if owner.owner_file else pid


def _overlay_path(settings: Settings, name: str) -> Path:
    return settings.vm.overlay_dir / f"{name}{OVERLAY_SUFFIX}"


def _key_path(settings: Settings, name: str) -> Path:
    return settings.vm.key_dir / name


def _seed_path(settings: Settings, name: str) -> Path:
    return settings.vm.overlay_dir / f"{name}{SEED_SUFFIX}"


def _file_path(settings: Settings, kind: Kind, name: str) -> Path:
    """The one path vm-isolation creates for a file resource of ``kind`` of guest ``name``."""
    if kind is Kind.OVERLAY:
        return _overlay_path(settings, name)
    if kind is Kind.SEED:
        return _seed_path(settings, name)
    return _key_path(settings, name)


def _from_journal(settings: Settings, hypervisor: DomainTable, leases: LeaseBook, path: Path,
                  procs: ProcessTable, report: ReapReport,
                  openings: _Openings) -> Iterator[tuple[Leftover, Callable[[], None]]]:
    """What ``path`` says its dead owner created and never removed, each with its removal."""
    try:
        journal = read_journal(path)
    except OSError as exc:
        report.errors.append(f"cannot read the journal {path}: {exc.strerror or exc}")
        return
    for problem in journal.problems:
        log.warning("%s", problem)
    owner = journal.owner
    if owner is None or (owner.executor_pid <= 0 and not owner.owner_file):
        report.kept.append(f"{path}: records no owner; left alone")
        return
    if owner_alive(settings, owner, procs):
        report.kept.append(f"{path}: owner {_describe(owner)} is alive")
        return
    for res in journal.outstanding:
        if res.kind in ("domain", "launcher") or not is_our_domain_name(res.domain):
            continue  # a defined domain is judged by its metadata; a launcher lives in the overlay
        if _defined(hypervisor, res.domain, report):
            report.kept.append(f"{path}: {res.kind} of {res.domain} left to its domain, which is defined")
            continue
        reason = f"recorded in {path} by executor {_describe(owner)} (gone); no domain {res.domain} is defined"
        if res.kind == "lease":
            yield from _journal_leases(settings, leases, res.domain, res.mac, res.network, reason, report)
            continue
        if res.kind == "agent_port":
            yield from openings.from_journal(res.domain, res.address, reason)
            continue
        kind = {"overlay": Kind.OVERLAY, "seed": Kind.SEED}.get(res.kind, Kind.KEY_DIR)
        expected = _file_path(settings, kind, res.domain)
        if res.path != str(expected):
            report.errors.append(f"{path}: {res.path!r} is not where vm-isolation puts a {res.kind}; left alone")
        elif expected.exists() or expected.is_symlink():
            yield Leftover(kind, res.domain, reason, path=str(expected)), functools.partial(_delete, expected, report)


def _journal_leases(settings: Settings, leases: LeaseBook, name: str, mac: str, network: str, reason: str,
                    report: ReapReport) -> Iterator[tuple[Leftover, Callable[[], None]]]:
    """The leases of ``mac`` the guest ``name`` holds: its DHCP client sends its domain name as
    hostname, so a journal naming a MAC that another guest now uses releases nothing."""
    network = network or settings.libvirt.network
    try:
        found = [lease for lease in leases.all_for(network, mac) if lease.hostname == name]
    except VmIsolationError as exc:
        report.errors.append(f"{name}: cannot read the leases of {mac}: {exc}")
        return
    for lease in found:
        yield (Leftover(Kind.LEASE, name, reason, path=lease.ip, macs=(mac,)),
               functools.partial(_release_lease, network, leases, name, mac, lease, report))


class _Openings:
    """Wrap mode's per-guest openings of the agent's port (:mod:`hostfirewall`).

    A journal is writable by the framework (fetched URIs land in the sandbox), so an opening is
    closed only if it exists and its IP is not held by a defined domain of ours: a forged journal
    cannot close a live guest's opening.
    """

    def __init__(self, settings: Settings, hypervisor: DomainTable, leases: LeaseBook,
                 ports: Optional[PortTable], report: ReapReport) -> None:
        self._settings, self._hv, self._leases, self._ports, self._report = settings, hypervisor, leases, ports, report
        self._opened: Optional[set[tuple[str, int]]] = None
        self._held: Optional[set[str]] = None

    def from_journal(self, name: str, address: str, reason: str) -> Iterator[tuple[Leftover, Callable[[], None]]]:
        ip, _, port = address.rpartition(":")
        if self._ports is None or not port.isdigit() or (ip, int(port)) not in self._opened_ports():
            return
        if ip in self._held_ips():
            self._report.kept.append(f"agent port {address} of {name}: {ip} is held by a live guest; left alone")
            return
        yield Leftover(Kind.AGENT_PORT, name, reason, path=address), functools.partial(self._close, name, ip, int(port))

    def orphans(self) -> Iterator[tuple[Leftover, Callable[[], None]]]:
        if self._ports is None:
            return
        for ip, port in sorted(self._opened_ports()):
            if ip not in self._held_ips():
                yield (Leftover(Kind.AGENT_PORT, "", f"no defined domain of ours holds {ip}", path=f"{ip}:{port}"),
                       functools.partial(self._close, "", ip, port))

    def _close(self, name: str, ip: str, port: int) -> None:
        assert self._ports is not None
        try:
            self._ports.close_port(ip, port)
        except VmIsolationError as exc:
            self._report.errors.append(f"{name or ip}: cannot close the agent port {ip}:{port}: {exc}")
            return
        self._opened_ports().discard((ip, port))
        self._report.removed.append(f"closed agent port {ip}:{port}" + (f" of {name}" if name else ""))

    def _opened_ports(self) -> set[tuple[str, int]]:
        if self._opened is None:
            assert self._ports is not None
            try:
                self._opened = self._ports.opened_ports()
            except VmIsolationError as exc:
                self._report.errors.append(f"cannot list the agent-port openings: {exc}")
                self._opened = set()
        return self._opened

    def _held_ips(self) -> set[str]:
        """IPs leased to domains of ours that are defined now (after this pass's removals)."""
        if self._held is None:
            held: set[str] = set()
            try:
                for domain in self._hv.owned_domains():
                    for mac in domain.macs:
                        held.update(lease.ip for lease in self._leases.all_for(self._settings.libvirt.network, mac))
            except VmIsolationError as exc:
                self._report.errors.append(f"cannot tell which guests hold which IP: {exc}")
                held = {ip for ip, _ in self._opened_ports()}  # when in doubt, keep
            self._held = held
        return self._held


def _orphan_files(settings: Settings, hypervisor: DomainTable, min_age_s: float, now: float,
                  listed: set[str], report: ReapReport) -> list[Leftover]:
    """Overlays and key directories of ours whose domain is not defined.

    ``listed`` are the domains just listed: their files are theirs (and went with them if the
    domain was reaped).
    """
    candidates: list[tuple[Kind, str, Path]] = []
    for path in _listdir(settings.vm.overlay_dir, report):
        for kind, suffix in ((Kind.OVERLAY, OVERLAY_SUFFIX), (Kind.SEED, SEED_SUFFIX)):
            name = path.name[: -len(suffix)] if path.name.endswith(suffix) else ""
            if is_our_domain_name(name):
                candidates.append((kind, name, path))
    for path in _listdir(settings.vm.key_dir, report):
        if is_our_domain_name(path.name):
            candidates.append((Kind.KEY_DIR, path.name, path))
    found = []
    for kind, name, path in sorted(candidates, key=lambda c: str(c[2])):
        if name in listed:
            continue
        age = _age_s(path, now)
        if age is None:
            continue  # vanished meanwhile
        if age < min_age_s:
            report.kept.append(f"{path}: no domain yet, but only {age:.0f} s old (a guest may be booting)")
            continue
        if _defined(hypervisor, name, report):
            continue
        found.append(Leftover(kind, name, f"no domain named {name} is defined", path=str(path)))
    return found


def _remove_orphan_file(settings: Settings, hypervisor: DomainTable, leftover: Leftover,
                        report: ReapReport) -> None:
    # Checked again right before deleting: a domain may have been defined since the scan.
    if _defined(hypervisor, leftover.name, report):
        report.kept.append(f"{leftover.path}: domain {leftover.name} was defined meanwhile")
        return
    expected = _file_path(settings, leftover.kind, leftover.name)
    if Path(leftover.path) != expected:
        report.errors.append(f"{leftover.path}: not the path vm-isolation creates; left alone")
        return
    _delete(expected, report)


def _defined(hypervisor: DomainTable, name: str, report: ReapReport) -> bool:
    try:
        return hypervisor.state(name) is not None
    except VmIsolationError as exc:
        report.errors.append(f"cannot tell whether domain {name} exists: {exc}")
        return True  # when in doubt, keep


def _listdir(directory: Path, report: ReapReport) -> list[Path]:
    try:
        return list(directory.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        report.errors.append(f"cannot list {directory}: {exc}")
        return []


def _age_s(path: Path, now: float) -> Optional[float]:
    try:
        return now - path.lstat().st_mtime
    except OSError:
        return None


def _delete(path: Path, report: ReapReport) -> None:
    """Delete one overlay file or key directory we created; absent is fine.

    Only ever called with paths built from overlay_dir/key_dir and a checked name. A symlink
    is removed itself, never followed.
    """
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.is_symlink() or path.exists():
            path.unlink()
        else:
            return
    except OSError as exc:
        report.errors.append(f"cannot delete {path}: {exc}")
        return
    report.removed.append(f"deleted {path}")
