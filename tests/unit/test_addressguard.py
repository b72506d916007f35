"""The address guard: the guard table's leases follow the lease files; gone taps are forgotten."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from vm_isolation import hostfirewall
from vm_isolation.addressguard import AddressGuard, Pair
from vm_isolation.errors import FirewallError
from vm_isolation.ids import random_mac, tap_for
from vm_isolation.leases import status_file_addresses, status_files_state

A = ("52:54:00:aa:bb:01", "192.168.122.10")
B = ("52:54:00:aa:bb:02", "192.168.122.11")


class FakeTable:
    def __init__(self) -> None:
        self.bound: set[Pair] = set()
        self.learnt: set[str] = set()
        self.calls: list[str] = []
        self.fail = False

    def leases(self) -> set[Pair]:
        return set(self.bound)

    def update(self, add: set[Pair], remove: set[Pair]) -> None:
        if self.fail:
            raise FirewallError("nft: no such table")
        self.calls.append("update")
        self.bound = (self.bound - remove) | add

    def taps(self) -> set[str]:
        return set(self.learnt)

    def forget(self, taps: set[str]) -> None:
        self.learnt -= taps


def write_leases(directory: Path, name: str, pairs: list[Pair]) -> None:
    (directory / name).write_text(json.dumps([{"ip-address": ip, "mac-address": mac.upper(), "hostname": "x",
                                               "expiry-time": 1} for mac, ip in pairs]))


def guard(tmp_path: Path, table: FakeTable, taps: set[str]) -> AddressGuard:
    return AddressGuard(table, lambda: status_file_addresses(tmp_path), lambda: status_files_state(tmp_path),
                        lambda: taps)


def test_leases_of_every_network_are_let_through_and_released_ones_stopped(tmp_path: Path) -> None:
    table = FakeTable()
    g = guard(tmp_path, table, set())
    write_leases(tmp_path, "virbr0.status", [A])
    write_leases(tmp_path, "vmisotest0.status", [B])
    g.tick(full=False)
    assert table.bound == {A, B}
    write_leases(tmp_path, "virbr0.status", [])
    g.tick(full=False)
    assert table.bound == {B}


def test_nothing_is_written_while_the_files_do_not_change(tmp_path: Path) -> None:
    table = FakeTable()
    g = guard(tmp_path, table, set())
    write_leases(tmp_path, "virbr0.status", [A])
    g.tick(full=False)
    g.tick(full=False)
    assert table.calls == ["update"]


def test_a_flushed_table_is_refilled_at_the_next_full_pass(tmp_path: Path) -> None:
    table = FakeTable()
    g = guard(tmp_path, table, set())
    write_leases(tmp_path, "virbr0.status", [A])
    g.tick(full=False)
    table.bound.clear()  # an operator flushed the ruleset; host set-up re-installed the table
    g.tick(full=True)
    assert table.bound == {A}


def test_a_torn_lease_file_keeps_what_is_bound(tmp_path: Path) -> None:
    table = FakeTable()
    g = guard(tmp_path, table, set())
    write_leases(tmp_path, "virbr0.status", [A])
    g.tick(full=False)
    (tmp_path / "virbr0.status").write_text('[{"ip-address": ')
    g.tick(full=False)
    assert table.bound == {A}


def test_an_nft_failure_is_retried_with_the_table_read_again(tmp_path: Path) -> None:
    table = FakeTable()
    g = guard(tmp_path, table, set())
    write_leases(tmp_path, "virbr0.status", [A])
    table.fail = True
    g.tick(full=False)  # logged, not raised
    table.fail = False
    g.tick(full=False)
    assert table.bound == {A}


def test_bindings_of_taps_that_are_gone_are_forgotten_on_a_full_pass(tmp_path: Path) -> None:
    table = FakeTable()
    table.learnt = {"vmisoaabb01", "vmisoaabb02"}
    g = guard(tmp_path, table, {"vmisoaabb02", "virbr0"})
    g.tick(full=False)  # the first pass reads the table and forgets
    assert table.learnt == {"vmisoaabb02"}


def test_the_lease_reader_ignores_what_is_not_an_ipv4_lease(tmp_path: Path) -> None:
    (tmp_path / "virbr0.status").write_text(json.dumps([
        {"ip-address": "192.168.122.10", "mac-address": "52:54:00:AA:BB:01"},
        {"ip-address": "fd00::1", "mac-address": "52:54:00:aa:bb:03"},
        {"ip-address": "192.168.122.12; drop", "mac-address": "52:54:00:aa:bb:04"},
        {"ip-address": "192.168.122.13", "mac-address": "52:54:00:aa:bb:05 . 1.2.3.4"},
        "junk"]))
    assert status_file_addresses(tmp_path) == {A}


def test_run_stops_when_told(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    guard(tmp_path, FakeTable(), set()).run(stop)


def test_our_taps_are_named_for_the_mac_and_other_macs_are_refused() -> None:
    mac = random_mac()
    assert tap_for(mac) == "vmiso" + mac[9:].replace(":", "") and len(tap_for(mac)) == 11
    with pytest.raises(ValueError):
        tap_for("02:00:00:00:00:01")


def test_the_guard_ruleset_binds_ports_and_addresses_and_drops_everything_else() -> None:
    rules = hostfirewall.guard_ruleset()
    assert 'iifname "vmiso*" jump guest' in rules
    assert "iifname . ether saddr != @port_macs counter drop" in rules
    assert "iifname . arp saddr ether != @port_macs counter drop" in rules
    assert "ether saddr . ip saddr @leases accept" in rules and "ether saddr . arp saddr ip @leases accept" in rules
    assert rules.count("counter drop") == 5


@pytest.mark.parametrize("pair", [("52:54:00:aa:bb:01 }", "192.168.122.1"), ("52:54:00:aa:bb:01", "1.2.3.4; x")])
def test_hostile_lease_values_never_reach_nft(pair: Pair) -> None:
    with pytest.raises(ValueError):
        hostfirewall.update_guard_leases({pair}, set())
