"""Lease selection (fresh vs stale, API vs status file); the qemu-img overlays are tested for
real in tests/real/test_overlay_real.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pytest

from tests.unit.fakes import FakeClock
from vm_isolation.errors import VmIsolationError
from vm_isolation.hosttypes import NetworkInfo, RawLease
from vm_isolation.leases import SOURCE_API, SOURCE_STATUS_FILE, Leases
from vm_isolation.waiting import Deadline, WaitTimeout

MAC = "52:54:00:aa:bb:cc"


class Source:
    def __init__(self, leases: list[RawLease], api_works: bool = True) -> None:
        self.leases = leases
        self.api_works = api_works

    def dhcp_leases(self, network: str, mac: Optional[str] = None) -> list[RawLease]:
        if not self.api_works:
            raise VmIsolationError("this function is not supported by the connection driver")
        return [lease for lease in self.leases if mac is None or lease.mac == mac]

    def network(self, name: str) -> NetworkInfo:
        return NetworkInfo(name, "virbr9", True)


def test_a_lease_seen_before_boot_is_stale() -> None:
    """Only a lease not in the pre-boot snapshot counts as the guest's address."""
    old = RawLease(MAC, "192.168.122.10", "old", 1000.0, "")
    source = Source([old])
    leases = Leases(source)
    stale = {lease.key for lease in leases.all_for("default", MAC)}
    assert leases.current("default", MAC, stale=stale) is None
    source.leases.append(RawLease(MAC, "192.168.122.11", "new", 5000.0, ""))
    lease = leases.current("default", MAC, stale=stale)
    assert lease is not None and lease.ip == "192.168.122.11" and lease.source == SOURCE_API


def test_the_status_file_is_the_fallback_when_the_api_cannot_answer(tmp_path: Path) -> None:
    """With the API unsupported, the lease-helper status file gives the address."""
    (tmp_path / "virbr9.status").write_text(json.dumps([
        {"ip-address": "192.168.122.77", "mac-address": MAC.upper(), "hostname": "g", "expiry-time": 99},
        {"ip-address": "fd00::1", "mac-address": MAC, "expiry-time": 100},
    ]))
    lease = Leases(Source([], api_works=False), status_dir=tmp_path).current("default", MAC)
    assert lease is not None
    assert (lease.ip, lease.source) == ("192.168.122.77", SOURCE_STATUS_FILE)


def test_waiting_for_an_address_times_out_without_real_sleep() -> None:
    """The wait polls at 0.1 s on the injected clock and gives up at the deadline."""
    clock = FakeClock()
    with pytest.raises(WaitTimeout):
        Leases(Source([])).wait_for_address("default", MAC, Deadline.after(2.0, clock))
    assert max(clock.sleeps) <= 0.1
    assert sum(clock.sleeps) == pytest.approx(2.0)
