"""The guest lifecycle on fakes: phase order, teardown on every path, no real time spent."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.fakes import FakeClock, FakeConnector, FakeDisks, FakeFirewall, FakeHypervisor, fake_key_factory
from vm_isolation.config import Settings, VmSettings
from vm_isolation.console import host_key_from_console
from vm_isolation.domainxml import Owner
from vm_isolation.errors import AddressTimeout, GuestDied, NetworkUnavailable, SshAuthError
from vm_isolation.guest import Cancelled, GuestFactory, GuestRequest
from vm_isolation.ids import DomainName
from vm_isolation.journal import Journal, read_journal
from vm_isolation.leases import Leases

NAME = DomainName("vmiso-t-0123456789")


class World:
    def __init__(self, tmp_path: Path, hv: FakeHypervisor, connector: FakeConnector | None = None) -> None:
        self.hv = hv
        self.disks = FakeDisks()
        self.clock = FakeClock()
        self.connector = connector or FakeConnector()
        self.firewall = FakeFirewall()
        settings = Settings()
        self.settings = replace(settings, vm=replace(
            VmSettings(), overlay_dir=tmp_path / "overlays", key_dir=tmp_path / "keys",
            console_dir=tmp_path, boot_timeout_s=30, ssh_timeout_s=10))
        self.launcher = GuestFactory(
            self.settings, hv, Leases(hv, status_dir=tmp_path / "no-status", release_command="true"),
            domain_type="qemu",
            connect=self.connector, make_key=fake_key_factory, disks=self.disks, clock=self.clock,
            firewall=self.firewall,
            wallclock=lambda: 1234.5)
        self.request = GuestRequest(name=NAME, base_image=Path("/images/busybox.qcow2"))
        self.tmp = tmp_path

    def assert_nothing_left(self) -> None:
        assert self.hv.domains == {}
        assert self.disks.existing == set()
        assert not (self.tmp / "keys" / NAME).exists()
        assert not (self.tmp / f"{NAME}.console").exists()
        assert all(s.closed for s in self.connector.sessions)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, FakeHypervisor())


def test_boot_runs_the_phases_in_order_and_tears_down_in_reverse(world: World) -> None:
    """Overlay, define, start, lease, ssh; then close, destroy, undefine; nothing is left."""
    phases: list[str] = []
    with world.launcher.boot(world.request, progress=lambda p, s: phases.append(p)) as guest:
        assert guest.ip == "192.168.122.50"
        assert world.connector.sessions[0].host_key == "ssh-ed25519 AAAAhostkey"
        assert world.hv.domains[NAME] == "running"
        spec = world.hv.specs[NAME]
        assert "vmiso.authkey=ssh-ed25519:AAAAclientkey" in spec.cmdline
        assert spec.owner.created_at == 1234.5
    assert phases == ["overlay", "define", "start", "lease", "ssh"]
    # The ssh phase is split into waiting for the console lines and connecting.
    assert guest.timings["ssh.console"] + guest.timings["ssh.connect"] == pytest.approx(guest.timings["ssh"])
    assert world.hv.calls == [("define", NAME), ("start", NAME), ("destroy", NAME), ("undefine", NAME)]
    world.assert_nothing_left()


def test_an_error_inside_the_block_still_tears_everything_down(world: World) -> None:
    """Whatever the caller raises, the guest and its files are removed."""
    with pytest.raises(RuntimeError), world.launcher.boot(world.request):
        raise RuntimeError("task failed")
    world.assert_nothing_left()


def test_no_lease_gives_a_named_timeout_with_the_console_tail(tmp_path: Path) -> None:
    """A guest that gets no address fails in phase 'lease', quotes its console, spends no real time."""
    w = World(tmp_path, FakeHypervisor(gives_lease=False))
    with pytest.raises(AddressTimeout) as info, w.launcher.boot(w.request):
        pass
    assert info.value.phase == "lease"
    assert "VMISO-READY" in info.value.console_tail
    assert sum(w.clock.sleeps) == pytest.approx(30, abs=0.2)
    w.assert_nothing_left()


def test_a_guest_that_stops_while_booting_fails_fast(tmp_path: Path) -> None:
    """A domain that powers off (e.g. its initramfs found no disk) is GuestDied at once."""
    w = World(tmp_path, FakeHypervisor(dies_on_start=True))
    with pytest.raises(GuestDied) as info, w.launcher.boot(w.request):
        pass
    assert "VMISO-ERROR no root disk" in str(info.value)
    assert w.clock.sleeps == []
    w.assert_nothing_left()


def test_ssh_failure_keeps_its_type_and_gains_the_console_tail(tmp_path: Path) -> None:
    """An SSH auth error surfaces as SshAuthError with the console, after full teardown."""
    w = World(tmp_path, FakeHypervisor(), FakeConnector(SshAuthError("refused", phase="ssh")))
    with pytest.raises(SshAuthError) as info, w.launcher.boot(w.request):
        pass
    assert "VMISO-HOSTKEY" in info.value.console_tail
    w.assert_nothing_left()


def test_cancel_before_boot_creates_nothing(world: World) -> None:
    """A boot cancelled before it starts touches nothing."""
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled), world.launcher.boot(world.request, cancel=cancel):
        pass
    assert world.hv.calls == []
    world.assert_nothing_left()


def test_cancel_while_waiting_for_the_lease_tears_down(tmp_path: Path) -> None:
    """Cancelling during the lease wait stops the wait and removes the guest."""
    w = World(tmp_path, FakeHypervisor(gives_lease=False))
    cancel = threading.Event()
    original = w.clock.sleep

    def sleep(seconds: float) -> None:
        original(seconds)
        if len(w.clock.sleeps) == 3:
            cancel.set()

    w.clock.sleep = sleep  # type: ignore[method-assign]
    with pytest.raises(Cancelled), w.launcher.boot(w.request, cancel=cancel):
        pass
    assert ("destroy", NAME) in w.hv.calls
    w.assert_nothing_left()


def test_an_inactive_network_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    """NetworkUnavailable comes first, so no overlay or domain is made in vain."""
    w = World(tmp_path, FakeHypervisor(network_active=False))
    with pytest.raises(NetworkUnavailable), w.launcher.boot(w.request):
        pass
    assert w.hv.calls == []
    w.assert_nothing_left()


def test_only_the_first_announced_host_key_is_trusted(tmp_path: Path) -> None:
    """A later fake VMISO-HOSTKEY line (a task printing to the console) is ignored."""
    console = tmp_path / "c"
    console.write_bytes(b"noise\r\nVMISO-HOSTKEY ssh-ed25519 AAAAreal\nVMISO-HOSTKEY ssh-ed25519 AAAAfake\n")
    assert host_key_from_console(console) == "ssh-ed25519 AAAAreal"
    assert host_key_from_console(tmp_path / "missing") is None


class RecordingJournal:
    """Writes journal records into the same list the fake hypervisor logs its calls to."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log

    def creating(self, kind: str, domain: str, **detail: str) -> None:
        self.log.append((f"journal create {kind}", domain))

    def removed(self, kind: str, domain: str) -> None:
        self.log.append((f"journal remove {kind}", domain))


def test_each_resource_is_journaled_before_it_is_created_and_after_it_is_removed(world: World) -> None:
    log = world.hv.calls
    create, remove = world.disks.create, world.disks.remove
    world.disks.create = lambda base, path: (log.append(("overlay create", NAME)), create(base, path))[1]  # type: ignore[method-assign]
    world.disks.remove = lambda path: (log.append(("overlay remove", NAME)), remove(path))[1]  # type: ignore[method-assign]
    with world.launcher.boot(replace(world.request, journal=RecordingJournal(log))):
        pass
    assert [call for call, _ in log] == [
        "journal create overlay", "overlay create", "journal create key_dir", "journal create domain",
        "define", "journal create lease", "start",
        "destroy", "journal remove lease", "undefine", "journal remove domain", "journal remove key_dir",
        "overlay remove", "journal remove overlay"]
    world.assert_nothing_left()


def test_a_real_journal_is_empty_of_outstanding_resources_after_teardown(world: World) -> None:
    journal = Journal(world.tmp / "journal.jsonl", Owner(executor_pid=1))
    with world.launcher.boot(replace(world.request, journal=journal)) as guest:
        assert {r.kind for r in read_journal(journal.path).outstanding} == {"overlay", "key_dir", "domain", "lease"}
        assert guest.journal is journal
    assert read_journal(journal.path).outstanding == []


def test_a_resource_whose_creation_failed_stays_outstanding_only_if_it_may_exist(tmp_path: Path) -> None:
    """define raising: the overlay and key are removed (and journaled so); the domain's record
    stays open, which is harmless (the reaper asks libvirt whether it exists)."""
    hv = FakeHypervisor()
    world = World(tmp_path, hv)
    journal = Journal(tmp_path / "journal.jsonl", Owner(executor_pid=1))

    def refuse(spec: object) -> None:
        raise NetworkUnavailable("libvirt said no")

    hv.define = refuse  # type: ignore[method-assign]
    with pytest.raises(NetworkUnavailable), world.launcher.boot(replace(world.request, journal=journal)):
        pass
    assert [r.kind for r in read_journal(journal.path).outstanding] == ["domain"]
    world.assert_nothing_left()


def test_a_failed_removal_is_left_in_the_journal_and_hides_neither_the_error_nor_the_rest(world: World) -> None:
    """An overlay that cannot be deleted: the caller's own error still surfaces, every other
    resource is still removed, and the journal keeps the overlay for the reaper."""
    journal = Journal(world.tmp / "journal.jsonl", Owner(executor_pid=1))

    def refuse(path: Path) -> None:
        raise OSError(30, "Read-only file system", str(path))

    world.disks.remove = refuse  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="task failed"), \
            world.launcher.boot(replace(world.request, journal=journal)):
        raise RuntimeError("task failed")
    assert [r.kind for r in read_journal(journal.path).outstanding] == ["overlay"]
    assert world.hv.domains == {} and not (world.tmp / "keys" / NAME).exists()


class _NeverReady(FakeHypervisor):
    """A guest whose init announces its host key but never VMISO-READY (an image of another kind)."""

    def start(self, name: str) -> None:
        super().start(name)
        self.specs[name].console_log.write_text("VMISO-HOSTKEY ssh-ed25519 AAAAhostkey\n")


def test_ssh_waits_for_ready_and_an_image_that_never_says_it_is_only_slower(tmp_path: Path) -> None:
    """The SYN sent before the guest configured its address is dropped and retried after 1 s:
    SSH waits for VMISO-READY. Without READY it connects after READY_GRACE_S all the same."""
    from vm_isolation.guest import READY_GRACE_S

    ready = World(tmp_path / "a", FakeHypervisor())
    (tmp_path / "a").mkdir()
    started = ready.clock.monotonic()
    with ready.launcher.boot(ready.request):
        assert ready.clock.monotonic() - started < 1.0
    (tmp_path / "b").mkdir()
    silent = World(tmp_path / "b", _NeverReady())
    started = silent.clock.monotonic()
    with silent.launcher.boot(silent.request) as guest:
        assert guest.remote is silent.connector.sessions[0]
        assert silent.clock.monotonic() - started >= READY_GRACE_S
    assert "acpi=noirq" in silent.hv.specs[NAME].cmdline


def test_the_fast_kernel_boots_without_initramfs_and_debians_with_it(world: World) -> None:
    """A request that names no kernel boots the fast one straight into the disk's init; one with
    Debian's kernel gets the initramfs and no root= (the initramfs mounts the disk)."""
    with world.launcher.boot(world.request):
        fast = world.hv.specs[NAME]
    assert (fast.kernel, fast.initrd) == (world.settings.images.fast_kernel, None)
    assert " root=/dev/vda rw rootfstype=ext4 init=/sbin/vmiso-init " in fast.cmdline
    debian = replace(world.request, kernel=world.settings.images.guest_kernel("debian"))
    with world.launcher.boot(debian):
        spec = world.hv.specs[NAME]
    assert (spec.kernel, spec.initrd) == (world.settings.images.kernel, world.settings.images.initrd)
    assert "root=" not in spec.cmdline and "acpi=noirq" in spec.cmdline
    world.assert_nothing_left()


def test_guests_get_an_isolated_port_on_a_tap_named_for_their_mac_by_default(world: World) -> None:
    """[network] isolation = on (the default): the interface is an isolated bridge port on the
    tap the address guard's rules confine (vmiso + the MAC's last three bytes)."""
    from vm_isolation.domainxml import InterfacePolicy

    with world.launcher.boot(world.request):
        spec = world.hv.specs[NAME]
    assert spec.interface == InterfacePolicy(isolated_port=True, tap="vmiso" + spec.mac[9:].replace(":", ""))


def test_isolation_off_leaves_the_interface_unconfined(tmp_path: Path) -> None:
    """[network] isolation = off: no isolated port, no filter (an operator-managed network)."""
    from vm_isolation.config import NetworkSettings
    from vm_isolation.domainxml import InterfacePolicy

    w = World(tmp_path, FakeHypervisor())
    w.launcher.settings = replace(w.settings, network=NetworkSettings(isolation="off"))
    with w.launcher.boot(w.request):
        assert w.hv.specs[NAME].interface == InterfacePolicy()


def test_a_host_that_does_not_enforce_the_network_policy_boots_nothing(world: World) -> None:
    """isolation = on and the nftables table missing: FirewallError naming it, nothing created."""
    from vm_isolation.errors import FirewallError

    world.firewall.missing = ["the nftables table inet vmiso is not installed"]
    with pytest.raises(FirewallError, match="inet vmiso is not installed.*isolation = off"), \
            world.launcher.boot(world.request):
        pass
    assert world.hv.calls == [] and world.disks.existing == set()


def test_isolation_off_boots_without_asking_the_firewall(tmp_path: Path) -> None:
    """isolation = off: the missing table does not matter."""
    from vm_isolation.config import NetworkSettings

    w = World(tmp_path, FakeHypervisor())
    w.firewall.missing = ["no nft"]
    w.launcher.settings = replace(w.settings, network=NetworkSettings(isolation="off"))
    with w.launcher.boot(w.request):
        pass
