"""Egress policy from inside a real guest, on a network of the test's own with a network
namespace as "the outside" (tests/real/ownnet.py): `none` reaches nothing beyond the bridge,
`nat` and an allow-list reach the outside, and the metadata address 169.254.169.254 (put on the
outside's side, so that an attempt could succeed) only when an allow-list names it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.real.ownnet import METADATA, Outside, OwnNetwork, outside_namespace, own_network, run, tcp_reaches
from vm_isolation.config import Settings
from vm_isolation.guest import Guest, GuestRequest
from vm_isolation.hypervisor import LibvirtHypervisor
from vm_isolation.ids import domain_name_for


@pytest.fixture
def net(settings: Settings, hypervisor: LibvirtHypervisor) -> Iterator[OwnNetwork]:
    with own_network(settings, hypervisor) as own:
        yield own


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Outside]:
    with outside_namespace(tmp_path) as ns:
        yield ns


def fetch(guest: Guest, ip: str, port: int) -> str:
    """What the guest reads from ip:port ('' if it cannot connect within 3 s)."""
    code, out = run(guest, f"nc -w 3 {ip} {port} </dev/null")
    return out if code == 0 else ""


def test_egress_none_reaches_nothing_outside_and_metadata_only_when_an_allow_list_names_it(
        net: OwnNetwork, outside: Outside) -> None:
    """One guest, the table re-installed under it (as host set-up does) with each policy:

    nat                               outside reached (control), metadata not
    none                              neither; DNS on the bridge still answers (control)
    allow-list <outside /24>          outside reached, metadata not
    allow-list <outside /24>, <md/32> both reached (control: the metadata probe can succeed)
    The outside's log must show exactly the connections that were allowed."""
    leftovers = net.leftovers()
    before = leftovers.snapshot()
    outside_net = f"{outside.ip.rsplit('.', 1)[0]}.0/24"
    req = GuestRequest(name=domain_name_for("egress"), base_image=net.settings.images.base("busybox"))
    try:
        with net.launcher().boot(req) as guest:
            mac = guest.mac
            assert fetch(guest, outside.ip, outside.port) == "outside"
            assert fetch(guest, METADATA, outside.port) == ""

            net.install("none")
            assert fetch(guest, outside.ip, outside.port) == ""
            assert fetch(guest, METADATA, outside.port) == ""
            assert run(guest, f"ping -c 1 -W 2 {outside.ip}")[0] != 0
            assert tcp_reaches(guest, net.address, 53)
            assert run(guest, f"nslookup {guest.name} {net.address}")[0] == 0

            net.install("allow-list", (outside_net,))
            assert fetch(guest, outside.ip, outside.port) == "outside"
            assert fetch(guest, METADATA, outside.port) == ""

            net.install("allow-list", (outside_net, f"{METADATA}/32"))
            assert fetch(guest, METADATA, outside.port) == "outside"
    finally:
        net.install("nat")
    assert outside.hits() == [outside.ip, outside.ip, METADATA]
    leftovers.assert_none_since(before, {mac}, prefixes=[req.name])
