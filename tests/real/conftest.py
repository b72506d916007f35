"""Fixtures for tests against the real stack: libvirtd, QEMU, dnsmasq, SSH in the guest.

They need the host prepared by `make setup` (which `make test` runs first). Every test here
ends by asserting that nothing it created is left: no domain, overlay, key or lease.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pytest

from vm_isolation.config import Settings, load_settings
from vm_isolation.guest import GuestFactory
from vm_isolation.hypervisor import LibvirtHypervisor
from vm_isolation.leases import Leases
from vm_isolation.waiting import Deadline, WaitTimeout, poll_until
from vm_isolation.wiring import real_launcher


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/real/" in str(item.fspath):
            item.add_marker(pytest.mark.real)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def hypervisor(settings: Settings) -> Iterator[LibvirtHypervisor]:
    hv = LibvirtHypervisor(settings.libvirt.uri)
    yield hv
    hv.close()


@pytest.fixture
def launcher(settings: Settings, hypervisor: LibvirtHypervisor) -> GuestFactory:
    return real_launcher(settings, hypervisor)


@dataclass
class Leftovers:
    """What our guests may leave on the host, to compare before and after a test."""

    settings: Settings
    hv: LibvirtHypervisor

    def snapshot(self) -> dict[str, set[str]]:
        vm = self.settings.vm
        owned = self.hv.owned_domains()
        return {
            "domains": {d.name for d in owned},
            "overlays": {p.name for p in vm.overlay_dir.glob("*.qcow2")},
            "seeds": {p.name for p in vm.overlay_dir.glob("*.seed.iso")},
            "keys": {p.name for p in vm.key_dir.iterdir()} if vm.key_dir.exists() else set(),
            # Our guests' DHCP clients send their domain name as hostname.
            "leases": {f"{x.hostname} {x.ip} {x.mac}"
                       for x in self.hv.dhcp_leases(self.settings.libvirt.network)},
        }

    def leases_of(self, macs: set[str]) -> list[str]:
        leases = Leases(self.hv)
        return [lease.ip for mac in macs for lease in leases.all_for(self.settings.libvirt.network, mac)]

    def assert_none_since(self, before: dict[str, set[str]], macs: Iterable[str] = (),
                          prefixes: Iterable[str] = ("vmiso-",)) -> None:
        """Nothing new since ``before`` among names starting with ``prefixes`` (the names this
        test's guests can have: other processes on the host may boot guests meanwhile)."""
        starts = tuple(prefixes)
        wanted = set(macs)

        def new_since() -> dict[str, set[str]]:
            after = self.snapshot()
            new = {kind: {n for n in after[kind] - before[kind] if n.startswith(starts)} for kind in after}
            new["leases of the given MACs"] = set(self.leases_of(wanted)) if wanted else set()
            return new

        nothing: dict[str, set[str]] = {"domains": set(), "overlays": set(), "seeds": set(), "keys": set(),
                                        "leases": set(), "leases of the given MACs": set()}
        with contextlib.suppress(WaitTimeout):  # then the assert below says what is left
            # dnsmasq drops a released lease when it processes dhcp_release: wait for that.
            poll_until(lambda: True if new_since() == nothing else None, Deadline.after(10),
                       what="nothing left behind")
        assert new_since() == nothing


@pytest.fixture
def leftovers(settings: Settings, hypervisor: LibvirtHypervisor) -> Leftovers:
    return Leftovers(settings, hypervisor)


def images_dir(settings: Settings) -> Path:
    return settings.images.dir


def restart_libvirtd() -> None:
    """Stop libvirtd (running guests survive) and start it again as host set-up does."""
    pid = int(Path("/run/libvirtd.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    poll_until(lambda: None if Path(f"/proc/{pid}").exists() else True, Deadline.after(30),
               what="libvirtd to stop")
    setup = Path(__file__).resolve().parents[2] / "scripts" / "host-setup.sh"
    subprocess.run([str(setup)], check=True, capture_output=True, timeout=120)

    def answers() -> bool | None:
        done = subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True, timeout=30)
        return True if done.returncode == 0 else None

    try:  # another process on the host may have stopped it again meanwhile (seen once)
        poll_until(answers, Deadline.after(30), interval_s=0.5, what="libvirtd to answer")
    except WaitTimeout:
        subprocess.run([str(setup)], check=True, capture_output=True, timeout=120)
        poll_until(answers, Deadline.after(60), interval_s=0.5, what="libvirtd to answer")
