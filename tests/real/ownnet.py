"""A libvirt NAT network of a test's own (own bridge, subnet and nftables table), a network
namespace as "the outside", and readers of the host's per-guest state.

The isolation tests that change the egress policy, forge ARP or restart the network do it on
such a network, never on `default`, whose guests belong to other tests and agents on the host.
Each network gets its own table (hostfirewall.table_for), so installing one never touches the
rules of another. Everything created here is removed on exit, on every path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import random
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from tests.real.conftest import Leftovers
from vm_isolation import hostfirewall
from vm_isolation.config import Settings
from vm_isolation.guest import Guest, GuestFactory
from vm_isolation.hostsetup import tuned_network_xml
from vm_isolation.hypervisor import LibvirtHypervisor
from vm_isolation.wiring import real_launcher

PY_SERVE = ("python3 -c 'import socket,threading\n"
            "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);u.bind((\"0.0.0.0\",7001))\n"
            "def udp():\n"
            "    while True:\n"
            "        d,a=u.recvfrom(100);open(\"/tmp/udp.log\",\"ab\").write(d);u.sendto(b\"pong\",a)\n"
            "threading.Thread(target=udp,daemon=True).start()\n"
            "t=socket.socket();t.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);t.bind((\"0.0.0.0\",7000));t.listen()\n"
            "while True:\n"
            "    c,a=t.accept();c.sendall(b\"hello\");c.close()' >/dev/null 2>&1 &")
PY_UDP = ("python3 -c 'import socket,sys\n"
          "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(3);s.sendto(b\"ping\",(sys.argv[1],7001))\n"
          "print(s.recvfrom(10)[0].decode())' {ip}")
"""PY_SERVE: a guest service on TCP 7000 (answers `hello`) and UDP 7001 (logs, answers `pong`)."""


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def run(guest: Guest, command: str, timeout_s: float = 30) -> tuple[int, str]:
    code, out, err = guest.remote.run_capture(command, timeout_s=timeout_s)
    return code, (out + err).decode(errors="replace")


def tcp_reaches(guest: Guest, ip: str, port: int) -> bool:
    return run(guest, f"nc -w 3 {ip} {port} </dev/null")[0] == 0


def _used_networks() -> list[ipaddress.IPv4Network]:
    used = []
    for route in json.loads(sh("ip", "-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
    for iface in json.loads(sh("ip", "-j", "-4", "addr") or "[]"):
        for addr in iface.get("addr_info", []):
            used.append(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    return used


def free_subnet(template: str, choices: range) -> ipaddress.IPv4Network:
    """A /24 ``template.format(n)`` that no route or address of the host overlaps."""
    used = _used_networks()
    for n in random.sample(list(choices), len(choices)):
        net = ipaddress.IPv4Network(template.format(n))
        if not any(net.overlaps(u) for u in used):
            return net
    raise AssertionError(f"no free {template} network on this host")


@dataclass
class OwnNetwork:
    name: str
    bridge: str
    address: str
    """The host's address on the bridge (DHCP, DNS)."""
    subnet: ipaddress.IPv4Network
    settings: Settings
    """The host's settings with [libvirt] network = this network."""
    hv: LibvirtHypervisor

    @property
    def table(self) -> str:
        return hostfirewall.table_for(self.name)

    def install(self, egress: str = "nat", allow: tuple[str, ...] = ()) -> None:
        """(Re)install this network's table, as host set-up does, with that egress policy."""
        hostfirewall.install(hostfirewall.FirewallPolicy(self.bridge, self.address, egress, allow, self.table))

    def launcher(self) -> GuestFactory:
        return real_launcher(self.settings, self.hv)

    def leftovers(self) -> Leftovers:
        return Leftovers(self.settings, self.hv)

    def restart(self) -> None:
        """`virsh net-destroy` + `net-start` of this network (its guests only are disconnected)."""
        sh("virsh", "-c", self.settings.libvirt.uri, "net-destroy", self.name)
        self.hv.start_network(self.name)


@contextlib.contextmanager
def own_network(settings: Settings, hv: LibvirtHypervisor, egress: str = "nat") -> Iterator[OwnNetwork]:
    """A tuned NAT network on its own bridge and free 192.168.x.0/24, its table installed."""
    tag = secrets.token_hex(3)
    name, bridge = f"vmiso-test-{tag}", f"vmisot{tag}"
    subnet = free_subnet("192.168.{}.0/24", range(160, 250))
    host = subnet.network_address + 1
    xml = f"""<network><name>{name}</name><forward mode='nat'/>
      <bridge name='{bridge}' stp='off' delay='0'/>
      <ip address='{host}' netmask='255.255.255.0'>
        <dhcp><range start='{subnet.network_address + 2}' end='{subnet.broadcast_address - 1}'/></dhcp>
      </ip></network>"""
    net = OwnNetwork(name, bridge, str(host), subnet,
                     dataclasses.replace(settings, libvirt=dataclasses.replace(settings.libvirt, network=name)), hv)
    hv.redefine_network(name, tuned_network_xml(xml) or xml, restart=False)
    try:
        hv.start_network(name)
        net.install(egress)
        yield net
    finally:
        hostfirewall.remove(net.table)
        hv.remove_network(name)


OUTSIDE_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen()
print("ready", flush=True)
while True:
    c, _ = s.accept()
    with open(sys.argv[2], "a") as log:
        log.write(c.getsockname()[0] + "\\n")
    c.sendall(b"outside"); c.close()
"""


@dataclass
class Outside:
    """A network namespace routed from the host: a TCP service on ``ip`` and on the metadata
    address 169.254.169.254 (both on the namespace's side), port ``port``."""

    ns: str
    host_ip: str
    ip: str
    port: int
    log: Path

    def hits(self) -> list[str]:
        """The address each accepted connection was made to, in order."""
        return self.log.read_text().split() if self.log.exists() else []


METADATA = "169.254.169.254"


@contextlib.contextmanager
def outside_namespace(tmp_path: Path) -> Iterator[Outside]:
    """A veth pair into a fresh namespace, addresses in a free 198.18.x.0/24 (RFC 2544's
    benchmarking range: nobody's), the host routing that /24 and 169.254.169.254/32 there."""
    tag = secrets.token_hex(3)
    ns, host_if, ns_if = f"vmiso-out-{tag}", f"vmoh{tag}", f"vmon{tag}"
    subnet = free_subnet("198.18.{}.0/24", range(0, 256))
    host_ip, ns_ip = str(subnet.network_address + 1), str(subnet.network_address + 2)
    outside = Outside(ns, host_ip, ns_ip, 8080, tmp_path / f"outside-{tag}.log")
    server: Optional[subprocess.Popen[str]] = None
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"{host_ip}/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        for args in (("addr", "add", f"{ns_ip}/24", "dev", ns_if), ("addr", "add", f"{METADATA}/32", "dev", ns_if),
                     ("link", "set", ns_if, "up"), ("link", "set", "lo", "up"),
                     ("route", "add", "default", "via", host_ip)):
            sh("ip", "-n", ns, *args)
        sh("ip", "route", "add", f"{METADATA}/32", "via", ns_ip, "dev", host_if)
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", OUTSIDE_SERVER,
                                   str(outside.port), str(outside.log)], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield outside
    finally:
        if server is not None:
            server.kill()
            server.wait()
            assert server.stdout is not None
            server.stdout.close()
        sh("ip", "route", "del", f"{METADATA}/32", "via", ns_ip, check=False)
        sh("ip", "netns", "del", ns, check=False)  # takes the veth pair with it


# --- the host's per-guest state ------------------------------------------------------------

def interfaces(uri: str, domain: str) -> dict[str, str]:
    """MAC -> host-side device (vnetN) of a running domain."""
    found = {}
    for line in sh("virsh", "-c", uri, "domiflist", domain).splitlines()[2:]:
        fields = line.split()
        if len(fields) == 5:
            found[fields[4].lower()] = fields[0]
    return found


ARP_PROBE = Path(__file__).parent / "guest" / "arp_probe.py"
"""Sends and answers ARP from inside a guest (put it there with put_file)."""


def host_fetch(ip: str, port: int = 7000) -> str:
    """What the guest service started by PY_SERVE answers ("hello"), "" if nothing does."""
    try:
        with socket.create_connection((ip, port), timeout=3) as conn:
            return conn.recv(16).decode()
    except OSError:
        return ""


def guard_binds(dev: str, ip: str) -> bool:
    """Whether the address guard has bound tap ``dev`` to a MAC and lets ``ip`` through from that
    MAC (hostfirewall.guard_ruleset: the port's MAC learnt, the lease's address bound)."""
    mac = hostfirewall.guard_ports().get(dev)
    return mac is not None and (mac, ip) in hostfirewall.guard_leases()


def guard_forgot(dev: str, ip: str) -> bool:
    """Whether nothing of the guard is left for tap ``dev`` or address ``ip`` (the address goes
    with the lease at teardown, the port binding at the guard's next full pass, <= 2 s)."""
    return dev not in hostfirewall.guard_ports() and all(i != ip for _m, i in hostfirewall.guard_leases())


def table_elements(table: str) -> list[Any]:
    """Every element of every set in ``inet <table>`` (nft -j), [] if none."""
    data = json.loads(sh("nft", "-j", "list", "table", "inet", table))
    return [elem for item in data.get("nftables", []) for elem in item.get("set", {}).get("elem", [])]


def table_rules(table: str) -> list[str]:
    """The rules of ``inet <table>`` as JSON text, one per rule, counters left out (to compare
    before and after)."""
    data = json.loads(sh("nft", "-j", "list", "table", "inet", table))
    return [json.dumps([e for e in item["rule"]["expr"] if "counter" not in e], sort_keys=True)
            for item in data.get("nftables", []) if "rule" in item]


def host_neighbour(bridge: str, ip: str) -> Optional[str]:
    """The MAC the host's neighbour table has for ``ip`` on ``bridge`` (None: no entry)."""
    entries = json.loads(sh("ip", "-j", "neigh", "show", ip, "dev", bridge) or "[]")
    return str(entries[0]["lladdr"]).lower() if entries and "lladdr" in entries[0] else None


def fdb_ports(bridge: str, mac: str) -> set[str]:
    """The bridge ports the bridge's forwarding database has learnt ``mac`` on."""
    entries = json.loads(sh("bridge", "-j", "fdb", "show", "br", bridge) or "[]")
    return {str(e.get("ifname")) for e in entries if str(e.get("mac", "")).lower() == mac.lower()
            and "self" not in e.get("flags", [])}


def bridge_port(dev: str) -> tuple[Optional[str], bool]:
    """(the bridge ``dev`` is attached to or None, whether its port is isolated)."""
    links = json.loads(sh("ip", "-j", "link", "show", "dev", dev, check=False) or "[]")
    ports = json.loads(sh("bridge", "-d", "-j", "link", "show", "dev", dev, check=False) or "[]")
    master = links[0].get("master") if links else None
    return master, bool(ports and ports[0].get("isolated"))
