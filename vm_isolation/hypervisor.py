"""libvirt: the only module that imports it.

:class:`LibvirtHypervisor` speaks in domain verbs (define, start, destroy, undefine, leases)
and turns every ``libvirtError`` into the project's errors in one place (:func:`_mapped`).
Destroy and undefine are idempotent, because teardown runs on every path, including paths
where the domain never came to exist.

NOTE: libvirt-python prints every error to stderr through its default handler, even errors we
expect and handle (e.g. "Domain not found" during teardown); the handler is silenced at import.
NOTE: when libvirtd restarts, an open connection is dead for good; a call then reconnects,
retrying for up to ``reconnect_s`` (bounded), before giving up with LibvirtUnavailable.
"""

from __future__ import annotations

import logging
import threading
import xml.etree.ElementTree as ET
from contextlib import suppress
from typing import Any, Callable, Optional, TypeVar

import libvirt

from . import domainxml
from .domainxml import DomainSpec
from .errors import GuestDied, LibvirtUnavailable, NetworkUnavailable, NotFound, VmIsolationError
from .hosttypes import NetworkInfo as NetworkInfo
from .hosttypes import OwnedDomain as OwnedDomain
from .hosttypes import RawLease as RawLease
from .waiting import SYSTEM_CLOCK, Clock, Deadline, WaitTimeout, poll_until

log = logging.getLogger(__name__)
T = TypeVar("T")

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

RECONNECT_S = 20.0
"""How long calls keep trying to reconnect after libvirtd went away (a restart takes 2-8 s here)."""
OPEN_ATTEMPT_S = 10.0
"""How long one virConnectOpen may take before it is abandoned and retried (a healthy one: ms)."""
_NO_DOMAIN = {libvirt.VIR_ERR_NO_DOMAIN}
_CONNECTION_LOST = {libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_RPC}
_NOT_RUNNING = {libvirt.VIR_ERR_OPERATION_INVALID}
STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


class LibvirtHypervisor:
    """One libvirt connection, shared by threads (libvirt's client is thread-safe)."""

    def __init__(self, uri: str = "qemu:///system", *, reconnect_s: float = RECONNECT_S,
                 first_connect_s: float = 0.0, clock: Clock = SYSTEM_CLOCK,
                 open_attempt_s: float = OPEN_ATTEMPT_S) -> None:
        """``reconnect_s``: how long to keep trying after a working connection was lost;
        ``first_connect_s``: the same for the first connection (0: fail at once, for tools an
        operator runs by hand; the executor waits, as it may start during a libvirtd restart)."""
        self.uri = uri
        self.reconnect_s = reconnect_s
        self.first_connect_s = first_connect_s
        self.open_attempt_s = open_attempt_s
        self._clock = clock
        self._conn: Optional[libvirt.virConnect] = None
        self._ever_connected = False
        self._lock = threading.Lock()

    # --- connection ---------------------------------------------------------------------
    def _connection(self, *, fresh: bool = False) -> libvirt.virConnect:
        with self._lock:
            if fresh and self._conn is not None:
                self._close_quietly()
            if self._conn is None:
                self._conn = self._open()
                self._ever_connected = True
            return self._conn

    def _open(self) -> libvirt.virConnect:
        """Open the connection, retrying for up to ``reconnect_s`` after a working connection
        was lost (libvirtd restarting), ``first_connect_s`` before the first one."""
        last: list[str] = []

        def attempt() -> Optional[libvirt.virConnect]:
            try:
                return self._open_once()
            except libvirt.libvirtError as exc:
                last[:] = [str(exc.get_error_message())]
            except _OpenHung as exc:
                last[:] = [str(exc)]
            return None

        window = self.reconnect_s if self._ever_connected else self.first_connect_s
        if window and self._ever_connected:
            log.warning("libvirt at %s: reconnecting (for up to %.0f s)", self.uri, window)
        try:
            return poll_until(attempt, Deadline.after(window, self._clock), interval_s=0.5,
                              what=f"libvirt at {self.uri}")
        except WaitTimeout:
            raise LibvirtUnavailable(
                f"cannot connect to libvirt at {self.uri}: {last[0] if last else 'no answer'}. "
                f"Start libvirtd (scripts/host-setup.sh does) and check this user may use its socket"
            ) from None

    def _open_once(self) -> libvirt.virConnect:
        """One ``virConnectOpen``, given ``open_attempt_s``.

        NOTE: a libvirtd that is restarting can accept the connection and never answer the
        handshake: ``virConnectOpen`` then blocks for good (seen here twice, in the reaper
        watcher and the warm pool, after a libvirtd restart; confirmed with gdb). The open runs
        on its own thread; one that does not return in time is abandoned (it closes what it
        gets, should it ever return) and the attempt counts as failed, so the caller's retry
        window still bounds the wait.
        """
        done = threading.Event()
        handed_over = threading.Lock()
        outcome: list[Any] = []
        abandoned: list[bool] = []

        def run() -> None:
            try:
                result: Any = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                result = exc
            with handed_over:
                if not abandoned:
                    outcome.append(result)
                    done.set()
                    return
            if not isinstance(result, libvirt.libvirtError):  # too late: nobody will use it
                with suppress(libvirt.libvirtError):
                    result.close()

        threading.Thread(target=run, daemon=True, name="libvirt-open").start()
        if not done.wait(self.open_attempt_s):
            with handed_over:
                if not done.is_set():
                    abandoned.append(True)
                    raise _OpenHung(f"libvirtd accepted the connection but did not answer within "
                                    f"{self.open_attempt_s:g} s")
        result = outcome[0]
        if isinstance(result, libvirt.libvirtError):
            raise result
        return result

    def _close_quietly(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        except libvirt.libvirtError:
            pass
        self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close_quietly()

    def _call(self, what: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        """Run ``fn`` on the connection, reconnecting once if libvirtd went away meanwhile."""
        conn = self._connection()
        try:
            return fn(conn)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in _CONNECTION_LOST and conn.isAlive():
                raise _mapped(what, exc) from exc
            log.warning("libvirt connection lost during %s; reconnecting", what)
        conn = self._connection(fresh=True)
        try:
            return fn(conn)
        except libvirt.libvirtError as exc:
            raise _mapped(what, exc) from exc

    # --- domains -------------------------------------------------------------------------
    def define(self, spec: DomainSpec) -> None:
        xml = domainxml.render(spec)
        self._call(f"define domain {spec.name}", lambda c: c.defineXML(xml))

    def start(self, name: str) -> None:
        tries = 0

        def start(conn: libvirt.virConnect) -> None:
            nonlocal tries
            tries += 1
            domain = conn.lookupByName(name)
            # A retry after the connection was lost mid-call: libvirtd may have started the
            # domain before it went away; a second create() would fail "already running".
            if tries > 1 and domain.isActive():
                log.info("%s was started before the connection was lost", name)
                return
            domain.create()

        try:
            self._call(f"start domain {name}", start)
        except VmIsolationError as exc:
            if isinstance(exc, LibvirtUnavailable):
                raise
            raise GuestDied(f"libvirt could not start {name}: {exc}", phase="start") from exc

    def state(self, name: str) -> Optional[str]:
        """The domain's state name (``running``, ``shutoff``, ...), or None if it does not exist."""
        try:
            code, _reason = self._call(f"read state of {name}", lambda c: c.lookupByName(name).state())
        except NotFound:
            return None
        return STATE_NAMES.get(code, f"state-{code}")

    def destroy(self, name: str) -> None:
        """Power the domain off hard; absent or already stopped is fine."""
        with suppress(NotFound, _NotRunning):
            self._call(f"destroy {name}", lambda c: c.lookupByName(name).destroy())

    def undefine(self, name: str) -> None:
        """Remove the domain's definition; absent is fine. Destroy first if it runs."""
        with suppress(NotFound):
            self._call(f"undefine {name}", lambda c: c.lookupByName(name).undefine())

    def set_owner(self, name: str, owner: domainxml.Owner) -> None:
        """Replace the domain's owner metadata, live and in its persistent definition (how a
        pool guest changes hands); NotFound if no such domain."""
        xml = domainxml.owner_xml(owner)

        def set_owner(conn: libvirt.virConnect) -> None:
            dom = conn.lookupByName(name)
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, domainxml.OWNER_PREFIX,
                            domainxml.OWNER_NS, flags)

        self._call(f"set the owner of {name}", set_owner)

    def owner_of(self, name: str) -> Optional[domainxml.Owner]:
        """The owner the domain's (live) metadata names; None if it records none or is gone."""
        try:
            xml = self._call(f"read XML of {name}", lambda c: c.lookupByName(name).XMLDesc(0))
        except NotFound:
            return None
        return domainxml.parse_owner(xml)

    def domain_macs(self, name: str) -> tuple[str, ...]:
        """MAC addresses of the domain's network interfaces; NotFound if no such domain."""
        xml = self._call(f"read XML of {name}", lambda c: c.lookupByName(name).XMLDesc(0))
        return domainxml.interface_macs(xml)

    def owned_domains(self) -> list[OwnedDomain]:
        """Every domain whose metadata says vm-isolation created it."""
        found = []
        for dom in self._call("list domains", lambda c: c.listAllDomains(0)):
            try:
                xml = dom.XMLDesc(0)
                code, _ = dom.state()
            except libvirt.libvirtError:
                continue  # vanished while we looked
            owner = domainxml.parse_owner(xml)
            if owner is not None:
                found.append(OwnedDomain(dom.name(), STATE_NAMES.get(code, "?"), owner, domainxml.interface_macs(xml),
                                         domainxml.disk_files(xml)))
        return found

    # --- networks ------------------------------------------------------------------------
    def network(self, name: str) -> NetworkInfo:
        """The named network; NetworkUnavailable if it does not exist."""
        try:
            net = self._call(f"look up network {name}", lambda c: c.networkLookupByName(name))
            return NetworkInfo(name=name, bridge=net.bridgeName(), active=bool(net.isActive()),
                               address=_network_address(str(net.XMLDesc(0))))
        except NotFound:
            raise NetworkUnavailable(
                f"libvirt network {name!r} does not exist: define it (scripts/host-setup.sh sets "
                f"up `default`) or set [libvirt] network"
            ) from None

    def require_active_network(self, name: str) -> NetworkInfo:
        info = self.network(name)
        if not info.active:
            raise NetworkUnavailable(
                f"libvirt network {name!r} is not active: `virsh net-start {name}` "
                f"(make demo / make test do this)"
            )
        return info

    def dhcp_leases(self, network: str, mac: Optional[str] = None) -> list[RawLease]:
        """Current DHCP leases of the network, optionally of one MAC only."""
        def leases(conn: libvirt.virConnect) -> list[dict[str, Any]]:
            net = conn.networkLookupByName(network)
            return list(net.DHCPLeases(mac) if mac else net.DHCPLeases())

        return [
            RawLease(
                mac=str(entry.get("mac", "")).lower(),
                ip=str(entry.get("ipaddr", "")),
                hostname=str(entry.get("hostname") or ""),
                expiry_time=float(entry.get("expirytime") or 0),
                client_id=str(entry.get("clientid") or ""),
            )
            for entry in self._call(f"read DHCP leases of {network}", leases)
            if entry.get("type", libvirt.VIR_IP_ADDR_TYPE_IPV4) == libvirt.VIR_IP_ADDR_TYPE_IPV4
        ]

    def network_xml(self, name: str) -> str:
        return str(self._call(f"read XML of network {name}",
                          lambda c: c.networkLookupByName(name).XMLDesc(0)))

    def network_has_guests(self, bridge: str) -> bool:
        """True while any running domain is attached to ``bridge``."""
        for dom in self._call("list running domains",
                              lambda c: c.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)):
            try:
                xml = dom.XMLDesc(0)
            except libvirt.libvirtError:
                continue
            if bridge in domainxml.interface_bridges(xml):
                return True
        return False

    def redefine_network(self, name: str, xml: str, *, restart: bool) -> None:
        """Replace a network's definition; restart it so dnsmasq and the bridge take it up."""
        def redefine(conn: libvirt.virConnect) -> None:
            if restart:
                net = conn.networkLookupByName(name)
                if net.isActive():
                    net.destroy()
            conn.networkDefineXML(xml)

        self._call(f"redefine network {name}", redefine)

    def remove_network(self, name: str) -> None:
        """Stop and undefine a network; absent is fine."""
        def remove(conn: libvirt.virConnect) -> None:
            net = conn.networkLookupByName(name)
            if net.isActive():
                net.destroy()
            net.undefine()

        with suppress(NotFound):
            self._call(f"remove network {name}", remove)

    def start_network(self, name: str) -> None:
        def start(conn: libvirt.virConnect) -> None:
            net = conn.networkLookupByName(name)
            if not net.isActive():
                net.create()

        self._call(f"start network {name}", start)


class _OpenHung(Exception):
    """virConnectOpen did not return within the attempt's time (internal: retried)."""


class _NotRunning(VmIsolationError):
    """The operation needs a running domain and it is not (internal: tolerated on teardown)."""


def _mapped(what: str, exc: libvirt.libvirtError) -> VmIsolationError:
    """Turn a libvirtError into ours: the one place libvirt error codes are interpreted."""
    code = exc.get_error_code()
    message = f"{what}: {exc.get_error_message()}"
    if code in _NO_DOMAIN or code == libvirt.VIR_ERR_NO_NETWORK:
        return NotFound(message)
    if code in _NOT_RUNNING:
        return _NotRunning(message)
    if code in _CONNECTION_LOST:
        return LibvirtUnavailable(
            f"{message}. libvirtd went away: restart it (scripts/host-setup.sh)"
        )
    return VmIsolationError(message)


def _network_address(xml: str) -> str:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return ""
    for ip in root.findall("ip"):
        if ip.get("family", "ipv4") == "ipv4" and ip.get("address"):
            return str(ip.get("address"))
    return ""
