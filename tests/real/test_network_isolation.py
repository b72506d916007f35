"""Tenant isolation on the guests' network, tried from inside real guests (issue 13).

Each vector is a real attempt from a guest that must fail, next to a control that must work.
Needs the host set up from this tree (`python -m vm_isolation.hostsetup` installs table inet vmiso).
"""

from __future__ import annotations

import socket
import threading
from contextlib import ExitStack
from typing import Iterator

import pytest

from tests.real.conftest import Leftovers
from tests.real.ownnet import PY_SERVE, PY_UDP, run, tcp_reaches
from vm_isolation import hostfirewall
from vm_isolation.config import Settings
from vm_isolation.errors import VmIsolationError
from vm_isolation.guest import Guest, GuestFactory, GuestRequest
from vm_isolation.hypervisor import LibvirtHypervisor
from vm_isolation.ids import domain_name_for
from vm_isolation.waiting import Deadline, poll_until


@pytest.fixture
def bridge_ip(settings: Settings, hypervisor: LibvirtHypervisor) -> str:
    info = hypervisor.network(settings.libvirt.network)
    assert not hostfirewall.problems(info.bridge), "run python -m vm_isolation.hostsetup first"
    return info.address


@pytest.fixture
def two_guests(settings: Settings, launcher: GuestFactory, leftovers: Leftovers) -> Iterator[tuple[Guest, Guest]]:
    """Guests A and B (python image), A serving TCP 7000 and UDP 7001."""
    before = leftovers.snapshot()
    names = [domain_name_for(h) for h in ("neta", "netb")]
    with ExitStack() as stack:
        a, b = (stack.enter_context(launcher.boot(GuestRequest(name=n, base_image=settings.images.base("python"))))
                for n in names)
        macs = {a.mac, b.mac}
        for guest in (a, b):
            run(guest, PY_SERVE)
        for guest in (a, b):  # python starts slowly under emulation
            assert run(guest, "for i in $(seq 60); do nc -w 1 127.0.0.1 7000 </dev/null && exit 0; sleep 1; done; "
                              "exit 1", timeout_s=90)[0] == 0
        yield a, b
    leftovers.assert_none_since(before, macs, prefixes=names)


def test_guests_cannot_reach_each_other_over_tcp_udp_or_through_the_host(
        two_guests: tuple[Guest, Guest]) -> None:
    """A's TCP and UDP services answer A itself and nobody else; B cannot reach them directly
    (isolated ports) nor routed through the host (forward drop), and the other way round."""
    a, b = two_guests
    for guest in (a, b):  # controls: the service runs; DHCP gave both an address; DNS answers
        assert run(guest, "nc -w 3 127.0.0.1 7000 </dev/null")[1] == "hello"
        assert "pong" in run(guest, PY_UDP.format(ip="127.0.0.1"))[1]
        code, out = run(guest, f"nslookup {guest.name} 192.168.122.1")
        assert code == 0 and guest.ip in out
    for src, dst in ((b, a), (a, b)):
        assert not tcp_reaches(src, dst.ip, 7000)
        assert "pong" not in run(src, PY_UDP.format(ip=dst.ip))[1]
        assert run(src, f"ping -c 1 -W 2 {dst.ip}")[0] != 0
        assert run(src, f"ip route replace {dst.ip}/32 via 192.168.122.1 && nc -w 3 {dst.ip} 7000 </dev/null; "
                        f"r=$?; ip route del {dst.ip}/32; exit $r")[0] != 0
        assert run(src, f"echo x | nc -w 2 192.168.122.255 7000; {PY_UDP.format(ip='192.168.122.255')}")[1].count(
            "pong") == 0
    assert run(a, "cat /tmp/udp.log")[1].count("ping") == 1  # only A's own control datagram arrived


@pytest.fixture
def host_listeners(bridge_ip: str) -> Iterator[dict[str, int]]:
    """Host TCP listeners on 0.0.0.0, the bridge address and loopback, counting connections."""
    accepted: list[str] = []
    socks = {}
    for where, addr in (("any", "0.0.0.0"), ("bridge", bridge_ip), ("loopback", "127.0.0.1")):
        s = socket.socket()
        s.bind((addr, 0))
        s.listen()
        socks[where] = s

        def serve(sock: socket.socket = s, name: str = where) -> None:
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                accepted.append(name)
                conn.close()
        threading.Thread(target=serve, daemon=True).start()
    yield {where: s.getsockname()[1] for where, s in socks.items()}
    for s in socks.values():
        s.close()
    assert accepted == [], f"a guest reached the host listener(s) {accepted}"


def test_host_services_are_closed_to_a_guest_but_dns_is_open(
        settings: Settings, launcher: GuestFactory, leftovers: Leftovers, bridge_ip: str,
        host_listeners: dict[str, int]) -> None:
    """A guest cannot connect to host listeners on 0.0.0.0, the bridge address or loopback
    (tried via the bridge address and via 127.0.0.1 routed to the host), nor to 169.254.169.254;
    DNS (tcp 53) on the bridge address answers."""
    before = leftovers.snapshot()
    req = GuestRequest(name=domain_name_for("nethost"), base_image=settings.images.base(settings.images.default))
    with launcher.boot(req) as guest:
        assert tcp_reaches(guest, bridge_ip, 53)
        for port in host_listeners.values():
            assert not tcp_reaches(guest, bridge_ip, port)
        assert not tcp_reaches(guest, "169.254.169.254", 80)
        mac = guest.mac
    leftovers.assert_none_since(before, {mac}, prefixes=[req.name])


def test_a_guest_that_takes_another_ip_or_mac_gets_nothing_through_and_disturbs_nobody(
        two_guests: tuple[Guest, Guest], bridge_ip: str) -> None:
    """B takes A's IP (static) and sends from it: A keeps working (DNS, its own service), on the
    host's own network. B's side of this vector, forged ARP, a changed MAC and the victim's MAC
    and IP are tried (and B's results read back) in test_network_spoofing.py, on a network of
    the test's own."""
    a, b = two_guests
    spoofs = [f"ip addr flush dev eth0 && ip addr add {a.ip}/24 dev eth0",
              f"arping -c 2 -U -I eth0 -s {a.ip} {bridge_ip}",
              "ip link set eth0 down && ip link set eth0 address 52:54:00:de:ad:01 && ip link set eth0 up"]
    for spoof in spoofs[:1]:
        # One shot over SSH: the session itself dies with B's address, so report to the console.
        run(b, f"( sleep 1; {spoof}; sleep 1; nslookup {a.name} {bridge_ip} >/tmp/dns.out 2>&1; "
               f"echo dns=$? >>/tmp/spoof.log; ping -c 1 -W 2 {bridge_ip} >/dev/null; "
               f"echo ping=$? >>/tmp/spoof.log ) >/dev/null 2>&1 &", timeout_s=10)

    def b_has_lost_its_address() -> bool | None:
        try:
            run(b, "true", timeout_s=2)
        except VmIsolationError:
            return True  # its session no longer answers: the spoof happened
        return None

    poll_until(b_has_lost_its_address, Deadline.after(30), interval_s=0.2, what="guest B to take A's address")
    assert tcp_reaches(a, bridge_ip, 53) and run(a, f"nslookup {a.name} {bridge_ip}")[0] == 0
    assert run(a, "nc -w 3 127.0.0.1 7000 </dev/null")[1] == "hello"
