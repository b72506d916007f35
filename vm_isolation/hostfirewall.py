"""The host's firewall for the guests' bridge: the only module that runs ``nft``.

One nftables table of our own per libvirt network (:func:`table_for`: ``table inet vmiso`` for
``default``, ``inet vmiso_<network>`` for any other, so two networks' set-ups never replace each
other's rules), installed by host set-up (:func:`install`, idempotent) and never touching other
traffic: its base chains jump to our rules only for packets that come *in* from the network's
bridge (``iifname virbr0``).

    input   (guest -> the host itself)  established/related replies (the host's SSH sessions),
                                        DHCP (udp 67), DNS (udp/tcp 53 on the bridge address),
                                        ``guest_ip . port`` in the set ``agent_ports`` (wrap
                                        mode, one element per guest while it lives); all else
                                        dropped, IPv6 included.
    forward (guest -> anywhere else)    back out of the bridge (guest -> host -> guest): dropped;
                                        169.254.0.0/16 (metadata endpoints): dropped,
                                        except networks inside it that an allow-list
                                        names explicitly; then the egress policy: nat (accept IPv4), none (drop),
                                        allow-list (accept the configured networks, drop the rest).

libvirt's own rules live in the ``ip filter``/``ip nat`` tables (iptables-nft) and are rebuilt
by libvirt on its restart and on a network restart; they never touch this table, so it survives
both. Rules in two tables on the same hook both apply: a drop here is final whatever libvirt's
chains accept. Re-installing replaces the rules in one ``nft -f`` transaction and keeps the
elements of ``agent_ports`` (live guests keep their opened port).

Every value written into a rule is validated first (interface name, addresses, CIDRs, ports):
nothing from a task ever reaches this module except the guest's leased IP, which is parsed as
an IPv4 address.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .addressguard import guard_running
from .errors import FirewallError
from .ids import TAP_PREFIX

log = logging.getLogger(__name__)

TABLE = "vmiso"
FAMILY = "inet"
AGENT_PORTS = "agent_ports"
METADATA_NET = "169.254.0.0/16"
CHAINS = ("input", "forward", "guest_input", "guest_forward")
NFT_TIMEOUT_S = 10.0
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_TABLE = re.compile(r"vmiso(_[A-Za-z0-9_]{1,41})?")


def table_for(network: str) -> str:
    """The table that confines the guests of the libvirt network ``network``: ``vmiso`` for
    ``default``, ``vmiso_<network>`` otherwise (characters other than ``[A-Za-z0-9_]`` become
    ``_``, with a hash of the real name appended when anything was changed or cut)."""
    if network == "default":
        return TABLE
    safe = re.sub(r"[^A-Za-z0-9_]", "_", network)[:32]
    if safe != network:
        safe += "_" + hashlib.sha256(network.encode(errors="surrogateescape")).hexdigest()[:8]
    return f"{TABLE}_{safe}"


def _table(name: str) -> str:
    if not _TABLE.fullmatch(name):
        raise ValueError(f"{name!r} is not one of our table names (see table_for)")
    return name


def status_file_for(table: str) -> Path:
    """Where :func:`install` records ``table`` for executors that are not root."""
    return STATUS_FILE if table == TABLE else STATUS_FILE.with_name(f"firewall-{_table(table)}.json")


@dataclass(frozen=True)
class FirewallPolicy:
    """What host set-up installs for one guests' bridge (values validated by :func:`ruleset`)."""

    bridge: str
    """The guests' bridge (virbr0 for libvirt's ``default`` network)."""
    address: str
    """The host's IPv4 address on it (DNS is answered there)."""
    egress: str = "nat"
    allow: tuple[str, ...] = ()
    table: str = TABLE
    """Our table for this network (:func:`table_for`)."""


def ruleset(policy: FirewallPolicy) -> str:
    """The ``nft -f`` script that (re)installs the table for ``policy``; ValueError if a value
    is not what it should be."""
    bridge = _ifname(policy.bridge)
    address = str(ipaddress.IPv4Address(policy.address))
    table = f"{FAMILY} {_table(policy.table)}"
    lines = [
        f"add table {table}",
        f"add set {table} {AGENT_PORTS} {{ type ipv4_addr . inet_service; }}",
        # Priority -10: before libvirt's iptables-nft chains (0); order only matters for counters.
        f"add chain {table} input {{ type filter hook input priority -10; policy accept; }}",
        f"add chain {table} forward {{ type filter hook forward priority -10; policy accept; }}",
        f"add chain {table} guest_input",
        f"add chain {table} guest_forward",
        *(f"flush chain {table} {chain}" for chain in CHAINS),
        f'add rule {table} input iifname "{bridge}" jump guest_input',
        f'add rule {table} forward iifname "{bridge}" jump guest_forward',
        # Replies to what the host opened (its SSH sessions into guests, DHCP/DNS answers).
        f"add rule {table} guest_input ct state established,related accept",
        f"add rule {table} guest_input meta nfproto ipv4 udp dport 67 accept",
        f"add rule {table} guest_input ip daddr {address} udp dport 53 accept",
        f"add rule {table} guest_input ip daddr {address} tcp dport 53 accept",
        f"add rule {table} guest_input ip daddr {address} ip saddr . tcp dport @{AGENT_PORTS} accept",
        f"add rule {table} guest_input counter drop",
        f'add rule {table} guest_forward oifname "{bridge}" counter drop',
        *_explicit_link_local(table, policy),
        f"add rule {table} guest_forward ip daddr {METADATA_NET} counter drop",
        *_egress_rules(table, policy),
    ]
    return "\n".join(lines) + "\n"


def _explicit_link_local(table: str, policy: FirewallPolicy) -> list[str]:
    """Accept rules for the allow-list's networks inside 169.254.0.0/16 (a metadata address is
    reachable only when named: ``allow = 0.0.0.0/0`` does not open it)."""
    if policy.egress != "allow-list":
        return []
    metadata = ipaddress.IPv4Network(METADATA_NET)
    nets = [str(n) for n in map(ipaddress.IPv4Network, policy.allow) if n.subnet_of(metadata)]
    return [f"add rule {table} guest_forward ip daddr {{ {', '.join(nets)} }} accept"] if nets else []


def _egress_rules(table: str, policy: FirewallPolicy) -> list[str]:
    if policy.egress == "nat":
        return [f"add rule {table} guest_forward meta nfproto ipv4 accept",
                f"add rule {table} guest_forward counter drop"]
    if policy.egress == "none":
        return [f"add rule {table} guest_forward counter drop"]
    if policy.egress == "allow-list":
        nets = [str(ipaddress.IPv4Network(cidr)) for cidr in policy.allow]
        rules = [f"add rule {table} guest_forward ip daddr {{ {', '.join(nets)} }} accept"] if nets else []
        return [*rules, f"add rule {table} guest_forward counter drop"]
    raise ValueError(f"unknown egress policy {policy.egress!r}")


def _ifname(name: str) -> str:
    if not _IFNAME.fullmatch(name):
        raise ValueError(f"{name!r} is not an interface name")
    return name


STATUS_FILE = Path("/run/vm-isolation/firewall.json")
"""Written by :func:`install` (root-only directory, file readable by all): what an executor that
is not root (the agent's --switch_user) reads instead of listing nftables, which needs root."""


def install(policy: FirewallPolicy, status_file: Optional[Path] = None) -> None:
    """Install or update the table for ``policy`` (one transaction); FirewallError if refused.
    ``status_file``: default :func:`status_file_for` the policy's table."""
    _nft(["-f", "-"], stdin=ruleset(policy))
    status_file = status_file or status_file_for(policy.table)
    with contextlib.suppress(OSError):
        status_file.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"table": f"{FAMILY} {policy.table}", "bridge": policy.bridge,
                                   "installed_at": round(time.time(), 3)}) + "\n")
        tmp.chmod(0o644)
        tmp.replace(status_file)
    log.info("nftables table %s %s: guests on %s may reach the host only for DHCP and DNS on %s; "
             "egress %s%s", FAMILY, policy.table, policy.bridge, policy.address, policy.egress,
             f" ({', '.join(policy.allow)})" if policy.allow else "")


def remove(table: str = TABLE) -> None:
    """Delete the table and its status file (the operator's undo, and the tests' for their own
    networks; nothing in the executor calls it)."""
    if installed_chains(table) is not None:
        _nft(["delete", "table", FAMILY, _table(table)])
    with contextlib.suppress(OSError):
        status_file_for(table).unlink()


def problems(bridge: str, status_file: Optional[Path] = None, table: str = TABLE) -> list[str]:
    """Why the host does not enforce the guests' network policy on ``bridge`` ([] if it does).
    Not being root, it can only read what host set-up recorded in ``status_file`` (default
    :func:`status_file_for` ``table``)."""
    status_file = status_file or status_file_for(table)
    if os.geteuid() != 0:
        try:
            recorded = json.loads(status_file.read_text())
        except (OSError, ValueError):
            recorded = {}
        if isinstance(recorded, dict) and recorded.get("bridge") == bridge:
            return []
        return [f"host set-up recorded no nftables table {FAMILY} {table} for {bridge} in {status_file} "
                "(an executor that is not root cannot list nftables itself)"]
    if shutil.which("nft") is None:
        return ["the nft command (package nftables) is not installed"]
    try:
        chains = installed_chains(table)
    except FirewallError as exc:
        return [str(exc)]
    if chains is None:
        return [f"the nftables table {FAMILY} {table} is not installed"]
    missing = [c for c in CHAINS if c not in chains]
    if missing:
        return [f"the nftables table {FAMILY} {table} lacks the chain(s) {', '.join(missing)}"]
    if bridge not in chains["input"].split() or bridge not in chains["forward"].split():
        return [f"the nftables table {FAMILY} {table} does not filter the bridge {bridge}"]
    return []


def installed_chains(table: str = TABLE) -> Optional[dict[str, str]]:
    """Chain name -> the interface names its rules match, or None if the table is absent."""
    result = _nft(["-j", "list", "table", FAMILY, _table(table)], missing_ok=True)
    if result is None:
        return None
    chains: dict[str, str] = {}
    for item in _items(result):
        if "chain" in item:
            chains.setdefault(item["chain"]["name"], "")
        elif "rule" in item:
            rule = item["rule"]
            chains[rule["chain"]] = chains.get(rule["chain"], "") + " " + " ".join(_ifnames(rule.get("expr", [])))
    return chains


def _ifnames(exprs: list[Any]) -> list[str]:
    names = []
    for expr in exprs:
        match = expr.get("match", {}) if isinstance(expr, dict) else {}
        if match.get("left", {}).get("meta", {}).get("key") in ("iifname", "oifname"):
            names.append(str(match.get("right")))
    return names


# --- the per-guest opened port (wrap mode) ---------------------------------------------------

def _element(ip: str, port: int) -> str:
    address = ipaddress.IPv4Address(ip)
    if not 0 < port < 65536:
        raise ValueError(f"{port} is not a TCP port")
    return f"{{ {address} . {port} }}"


def open_port(ip: str, port: int, table: str = TABLE) -> None:
    """Let the guest at ``ip`` connect to the host's bridge address on TCP ``port``."""
    _nft(["add", "element", FAMILY, _table(table), AGENT_PORTS, _element(ip, port)])


def close_port(ip: str, port: int, table: str = TABLE) -> None:
    """Take the opening back; absent already (or no table) is fine."""
    if (ip, port) in opened_ports(table):
        _nft(["delete", "element", FAMILY, _table(table), AGENT_PORTS, _element(ip, port)])


def opened_ports(table: str = TABLE) -> set[tuple[str, int]]:
    """The ``(guest ip, port)`` openings now in the table (empty if it is absent)."""
    return {(ip, int(port)) for ip, port in (e for e in _set_elements(FAMILY, _table(table), AGENT_PORTS)
                                              if len(e) == 2)}


class NftFirewall:
    """The host firewall of one network's table (:func:`table_for`) as
    :class:`guest.GuestFirewall` and the reaper's port table."""

    def __init__(self, table: str = TABLE) -> None:
        self.table = _table(table)

    def problems(self, bridge: str) -> list[str]:
        found = problems(bridge, table=self.table)
        if not guard_running():
            found.append("the address guard (vm-isolation-guard) is not running, so guests would get a lease "
                         "and no traffic past it")
        elif os.geteuid() == 0:
            found += guard_problems()
        return found

    def open_port(self, ip: str, port: int) -> None:
        open_port(ip, port, self.table)

    def close_port(self, ip: str, port: int) -> None:
        close_port(ip, port, self.table)

    def opened_ports(self) -> set[tuple[str, int]]:
        return opened_ports(self.table)


# --- the guests' address guard (bridge family) ----------------------------------------------

GUARD_TABLE = "vmiso_guard"
GUARD_FAMILY = "bridge"
GUARD_CHAINS = ("prerouting", "guest", "guest_arp", "guest_ip")
PORTS, PORT_MACS, LEASES = "ports", "port_macs", "leases"


def guard_ruleset() -> str:
    """The ``nft -f`` script that (re)installs ``table bridge vmiso_guard``, which confines every
    frame that comes in from one of our guests' taps (``iifname vmiso*``, whatever the bridge):

    * the port is bound to the MAC of its first frame (sets ``ports`` and ``port_macs``, learnt
      in the data path: the first frame of a tap is sent by the guest's own init, before any
      task runs, and a learnt binding is never replaced): a frame with another source MAC is
      dropped, and so is ARP whose sender MAC is not the port's;
    * IPv4 and ARP must come from the address the guest's DHCP lease gave its MAC (set
      ``leases``, kept equal to the lease files by :mod:`addressguard`); before a lease, only DHCP
      from 0.0.0.0 to the broadcast address, and ARP probes (sender 0.0.0.0);
    * anything else (IPv6, VLAN tags, other ethertypes) is dropped.

    Re-installing replaces the rules in one transaction and keeps the sets' elements. Together
    with the isolated bridge port (no frame between two guests) this is what libvirt's
    clean-traffic filter did, without its per-guest instantiation (~0.4 s per start, ~0.7 s
    per teardown, serialised across guests) and its address learning (0.5-1 s)."""
    t = f"{GUARD_FAMILY} {GUARD_TABLE}"
    lines = [
        f"add table {t}",
        f"add set {t} {PORTS} {{ typeof iifname; flags dynamic; size 65535; }}",
        f"add set {t} {PORT_MACS} {{ typeof iifname . ether saddr; flags dynamic; size 65535; }}",
        f"add set {t} {LEASES} {{ typeof ether saddr . ip saddr; size 65535; }}",
        f"add chain {t} prerouting {{ type filter hook prerouting priority -200; policy accept; }}",
        *(f"add chain {t} {chain}" for chain in GUARD_CHAINS[1:]),
        *(f"flush chain {t} {chain}" for chain in GUARD_CHAINS),
        f'add rule {t} prerouting iifname "{TAP_PREFIX}*" jump guest',
        f"add rule {t} guest iifname != @{PORTS} add @{PORTS} {{ iifname }} "
        f"add @{PORT_MACS} {{ iifname . ether saddr }}",
        f"add rule {t} guest iifname . ether saddr != @{PORT_MACS} counter drop",
        f"add rule {t} guest ether type arp jump guest_arp",
        f"add rule {t} guest ether type ip jump guest_ip",
        f"add rule {t} guest counter drop",
        f"add rule {t} guest_arp iifname . arp saddr ether != @{PORT_MACS} counter drop",
        f"add rule {t} guest_arp arp saddr ip 0.0.0.0 accept",
        f"add rule {t} guest_arp ether saddr . arp saddr ip @{LEASES} accept",
        f"add rule {t} guest_arp counter drop",
        f"add rule {t} guest_ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept",
        f"add rule {t} guest_ip ether saddr . ip saddr @{LEASES} accept",
        f"add rule {t} guest_ip counter drop",
    ]
    return "\n".join(lines) + "\n"


def install_guard() -> None:
    """Install or update the guard table (one transaction; its sets' elements are kept)."""
    _nft(["-f", "-"], stdin=guard_ruleset())
    log.info("nftables table %s %s: frames from guest taps (%s*) must carry the port's MAC and the "
             "address of its lease", GUARD_FAMILY, GUARD_TABLE, TAP_PREFIX)


def guard_problems() -> list[str]:
    """Why the guard table is not in place ([] if it is; needs root)."""
    result = _nft(["-j", "list", "table", GUARD_FAMILY, GUARD_TABLE], missing_ok=True)
    if result is None:
        return [f"the nftables table {GUARD_FAMILY} {GUARD_TABLE} is not installed"]
    chains = {item["chain"]["name"] for item in _items(result) if "chain" in item}
    missing = [c for c in GUARD_CHAINS if c not in chains]
    if not missing:
        return []
    return [f"the nftables table {GUARD_FAMILY} {GUARD_TABLE} lacks the chain(s) {', '.join(missing)}"]


def _guard_elements(name: str) -> list[list[str]]:
    return _set_elements(GUARD_FAMILY, GUARD_TABLE, name)


def guard_leases() -> set[tuple[str, str]]:
    """The ``(mac, ip)`` pairs the guard now lets through (empty if the table is absent)."""
    return {(mac.lower(), ip) for mac, ip in (e for e in _guard_elements(LEASES) if len(e) == 2)}


def guard_ports() -> dict[str, str]:
    """Tap -> the MAC it is bound to."""
    return {tap: mac.lower() for tap, mac in (e for e in _guard_elements(PORT_MACS) if len(e) == 2)}


def _lease_element(mac: str, ip: str) -> str:
    mac = mac.lower()
    if not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac):
        raise ValueError(f"{mac!r} is not a MAC address")
    return f"{mac} . {ipaddress.IPv4Address(ip)}"


def update_guard_leases(add: set[tuple[str, str]], remove: set[tuple[str, str]]) -> None:
    """Let ``add`` through and stop ``remove``, in one transaction."""
    lines = [f"delete element {GUARD_FAMILY} {GUARD_TABLE} {LEASES} {{ {_lease_element(m, i)} }}"
             for m, i in sorted(remove)]
    lines += [f"add element {GUARD_FAMILY} {GUARD_TABLE} {LEASES} {{ {_lease_element(m, i)} }}"
              for m, i in sorted(add)]
    if lines:
        _nft(["-f", "-"], stdin="\n".join(lines) + "\n")


def forget_ports(taps: set[str]) -> None:
    """Drop the learnt bindings of taps that are gone (the next guest on that name learns anew)."""
    ports = guard_ports()
    lines = []
    for tap in sorted(taps):
        tap = _ifname(tap)
        lines.append(f'delete element {GUARD_FAMILY} {GUARD_TABLE} {PORTS} {{ "{tap}" }}')
        if tap in ports:
            lines.append(f'delete element {GUARD_FAMILY} {GUARD_TABLE} {PORT_MACS} {{ "{tap}" . {ports[tap]} }}')
    if lines:
        _nft(["-f", "-"], stdin="\n".join(lines) + "\n")


def guard_taps() -> set[str]:
    """The taps the guard has learnt a binding for."""
    return {e[0] for e in _guard_elements(PORTS) if e}


class NftGuardTable:
    """The guard table's sets as :class:`addressguard.GuardTable`."""

    def leases(self) -> set[tuple[str, str]]:
        return guard_leases()

    def update(self, add: set[tuple[str, str]], remove: set[tuple[str, str]]) -> None:
        update_guard_leases(add, remove)

    def taps(self) -> set[str]:
        return guard_taps()

    def forget(self, taps: set[str]) -> None:
        forget_ports(taps)


# --- running nft -------------------------------------------------------------------------------

def _items(output: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(output)
    except json.JSONDecodeError:
        return []
    items = data.get("nftables", []) if isinstance(data, dict) else []
    return [item for item in items if isinstance(item, dict)]


def _set_elements(family: str, table: str, name: str) -> list[list[str]]:
    """The elements of set ``name`` in ``family table``, each as its parts (one part unless the
    set's type is a concatenation); [] if the table or set is absent."""
    result = _nft(["-j", "list", "set", family, table, name], missing_ok=True)
    found: list[list[str]] = []
    for item in _items(result or ""):
        for elem in item.get("set", {}).get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:  # an element with a timeout or counter
                elem = elem["elem"].get("val", elem)
            parts = elem.get("concat") if isinstance(elem, dict) else [elem]
            if isinstance(parts, list):
                found.append([str(p) for p in parts])
    return found


def _nft(args: list[str], *, stdin: Optional[str] = None, missing_ok: bool = False) -> Optional[str]:
    """Run ``nft args``; its stdout, None if ``missing_ok`` and the table/set does not exist."""
    command = ["nft", *args]
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=NFT_TIMEOUT_S,
                              check=False)
    except FileNotFoundError:
        raise FirewallError("the nft command (package nftables) is not installed: run scripts/host-setup.sh") from None
    except subprocess.TimeoutExpired:
        raise FirewallError(f"`{' '.join(command)}` did not finish within {NFT_TIMEOUT_S:g} s") from None
    if done.returncode == 0:
        return done.stdout
    error = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
    if missing_ok and "No such file or directory" in done.stderr:
        return None
    raise FirewallError(f"`{' '.join(command[:4])}` failed: {error[0]} (nft needs root / CAP_NET_ADMIN)")
