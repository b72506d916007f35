"""The warm pool on fakes: refills, hand-over by owner metadata, adopt, the socket, WarmFactory."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from tests.unit.fakes import (
    FakeClock,
    FakeConnector,
    FakeDisks,
    FakeFirewall,
    FakeHypervisor,
    FakeKey,
    fake_key_factory,
)
from tests.unit.test_guest import RecordingJournal
from vm_isolation.config import PoolSettings, Settings, VmSettings
from vm_isolation.domainxml import Owner
from vm_isolation.errors import GuestDied
from vm_isolation.guest import Cancelled, GuestFactory, GuestRequest
from vm_isolation.ids import DomainName
from vm_isolation.journal import Journal, ResourceJournal, read_journal
from vm_isolation.leases import Leases
from vm_isolation.pool import SlotState, WarmPool
from vm_isolation.poolclient import PoolClient
from vm_isolation.poolserver import PoolServer
from vm_isolation.poolwire import Shape, encode
from vm_isolation.waiting import Deadline, poll_until
from vm_isolation.warm import WarmFactory

SHAPE = Shape("busybox", 1, 128)
POOL_OWNER = Owner(executor_id="vm-isolation-pool", executor_pid=7, owner_file="/run/vmiso/owners/pool.owner")
EXEC_OWNER = Owner(executor_id="e1", executor_pid=8, owner_file="/run/vmiso/owners/e1.owner")


def load_fake_key(directory: Path) -> FakeKey:
    assert (directory / "id_ed25519").is_file(), "the pool's key directory is where the executor loads it"
    return FakeKey(directory)


class PoolWorld:
    def __init__(self, tmp: Path, *, count: int = 1, max_boots: int = 1) -> None:
        self.tmp = tmp
        self.hv = FakeHypervisor()
        self.disks = FakeDisks()
        self.connector = FakeConnector()
        self.settings = replace(
            Settings(),
            vm=replace(VmSettings(), overlay_dir=tmp / "overlays", key_dir=tmp / "keys", console_dir=tmp,
                       boot_timeout_s=30, ssh_timeout_s=10),
            pool=PoolSettings(size=count, shapes=((SHAPE, count),), max_concurrent_boots=max_boots,
                              socket=Path(tempfile.mkdtemp(prefix="vmiso-pool-test-", dir="/tmp")) / "pool.sock",
                              handover_timeout_s=5, take_timeout_s=5))
        self.launcher = GuestFactory(
            self.settings, self.hv, Leases(self.hv, status_dir=tmp / "no-status", release_command="true"),
            domain_type="qemu", connect=self.connector, make_key=fake_key_factory, disks=self.disks,
            firewall=FakeFirewall(), clock=FakeClock(), wallclock=lambda: 1234.5, load_key=load_fake_key)
        self.pool_journal = Journal(tmp / "pool" / ".vm-isolation" / "journal.jsonl", POOL_OWNER)
        self.pool = WarmPool(self.settings, self.launcher, self.hv, owner=POOL_OWNER, journal=self.pool_journal,
                             clock=FakeClock())
        self.exec_journal = Journal(tmp / "sandbox" / ".vm-isolation" / "journal.jsonl", EXEC_OWNER)

    def fill(self) -> list[DomainName]:
        """Boot whatever is due, synchronously; the names booted."""
        names = []
        for slot in self.pool.due():
            self.pool.boot(slot)
            names.append(slot.name)
        return names

    def request(self, journal: ResourceJournal | None = None) -> GuestRequest:
        return GuestRequest(name=DomainName("vmiso-task-0123456789"), base_image=Path("/images/busybox.qcow2"),
                            vcpus=1, memory_mib=128, owner=EXEC_OWNER, journal=journal or self.exec_journal,
                            image="busybox")

    def running(self) -> set[str]:
        return {name for name, state in self.hv.domains.items() if state == "running"}


@pytest.fixture
def world(tmp_path: Path) -> PoolWorld:
    return PoolWorld(tmp_path)


@pytest.fixture
def served(world: PoolWorld) -> Iterator[PoolWorld]:
    server = PoolServer(world.pool, world.settings.pool.socket, handover_timeout_s=5)
    server.bind()
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()
    yield world
    stop.set()
    thread.join(5)
    server.close()


# --- the state machine ---------------------------------------------------------------------

def test_refills_start_no_more_boots_than_max_concurrent_boots(tmp_path: Path) -> None:
    """Three wanted, one boot at a time: each due() adds one only once the last has booted."""
    w = PoolWorld(tmp_path, count=3, max_boots=1)
    first = w.pool.due()
    assert len(first) == 1 and w.pool.due() == []
    w.pool.boot(first[0])
    assert len(w.pool.due()) == 1


def test_a_booted_guest_is_idle_with_its_ssh_session_closed(world: PoolWorld) -> None:
    """The pool keeps no session open: the executor connects itself."""
    (name,) = world.fill()
    assert [g["state"] for g in world.pool.status()["guests"]] == ["idle"]
    assert world.connector.sessions[0].closed and name in world.running()


def test_two_takes_for_the_last_guest_give_it_to_one(world: PoolWorld) -> None:
    """A slot is handed out once, under the pool's lock."""
    world.fill()
    first, second = world.pool.take(SHAPE, 0, 0), world.pool.take(SHAPE, 0, 0)
    assert first is not None and second is None
    assert world.pool.take(Shape("busybox", 2, 128), 0, 0) is None  # no guest of another shape either


def test_an_offered_guest_whose_owner_moved_is_forgotten_not_destroyed(world: PoolWorld) -> None:
    """The metadata names the executor: the pool drops it (journaled as no longer its own)."""
    world.fill()
    taken = world.pool.take(SHAPE, 0, 0)
    assert taken is not None
    slot, offer = taken
    world.hv.set_owner(offer.name, EXEC_OWNER)
    assert world.pool.settle(slot) == "handed"
    assert offer.name in world.running() and ("destroy", offer.name) not in world.hv.calls
    assert world.pool.status()["guests"] == [] and read_journal(world.pool_journal.path).outstanding == []


def test_an_offered_guest_nobody_took_over_is_destroyed_never_offered_again(world: PoolWorld) -> None:
    """The peer said taken (or nothing) but the metadata is still the pool's: destroyed."""
    (name,) = world.fill()
    taken = world.pool.take(SHAPE, 0, 0)
    assert taken is not None
    assert world.pool.settle(taken[0]) == "destroyed"
    assert name not in world.hv.domains and world.disks.existing == set()
    assert not (world.tmp / "keys" / name).exists()


def test_a_dead_idle_guest_is_destroyed_instead_of_offered(world: PoolWorld) -> None:
    """take() checks the domain runs; a stopped one is removed and nothing is offered."""
    (name,) = world.fill()
    world.hv.destroy(name)
    assert world.pool.take(SHAPE, 0, 0) is None
    assert name not in world.hv.domains


def test_stop_destroys_every_guest_the_pool_owns(tmp_path: Path) -> None:
    """Idle guests go; nothing is refilled afterwards."""
    w = PoolWorld(tmp_path, count=2, max_boots=2)
    assert len(w.fill()) == 2
    w.pool.stop(wait_s=1)
    assert w.hv.domains == {} and w.pool.due() == []


# --- adopt -----------------------------------------------------------------------------------

def test_adopt_journals_everything_before_the_owner_switch_and_tears_down_like_a_boot(world: PoolWorld) -> None:
    """Journal (4 records) -> set_owner -> ... -> the boot's teardown, in the boot's order."""
    world.fill()
    taken = world.pool.take(SHAPE, 0, 0)
    assert taken is not None
    _, offer = taken
    log = world.hv.calls
    log.clear()
    with world.launcher.adopt(offer, world.request(journal=RecordingJournal(log))) as guest:
        assert guest.name == offer.name and guest.ip == offer.ip
        assert world.hv.owner_of(offer.name) == replace(EXEC_OWNER, created_at=1234.5)
    assert [call for call, _ in log] == [
        "journal create overlay", "journal create key_dir", "journal create domain", "journal create lease",
        "set_owner", "destroy", "journal remove lease", "undefine", "journal remove domain",
        "journal remove key_dir", "journal remove overlay"]
    assert world.hv.domains == {} and world.disks.existing == set()
    assert not (world.tmp / "keys" / offer.name).exists() and not (world.tmp / f"{offer.name}.console").exists()


def test_adopting_a_guest_that_vanished_touches_nothing_and_journals_it_as_not_ours(world: PoolWorld) -> None:
    """The pool died and the reaper removed the guest: GuestDied, no teardown, journal clean."""
    (name,) = world.fill()
    taken = world.pool.take(SHAPE, 0, 0)
    assert taken is not None
    world.hv.destroy(name)
    world.hv.undefine(name)
    world.hv.calls.clear()
    with pytest.raises(GuestDied), world.launcher.adopt(taken[1], world.request()):
        pass
    assert world.hv.calls == []
    assert read_journal(world.exec_journal.path).outstanding == []


def test_a_kill_before_the_owner_switch_leaves_the_guest_to_the_pool(world: PoolWorld) -> None:
    """Cancelled before set_owner: the executor tears nothing down; the pool's settle does."""
    world.fill()
    taken = world.pool.take(SHAPE, 0, 0)
    assert taken is not None
    slot, offer = taken
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled), world.launcher.adopt(offer, world.request(), cancel=cancel):
        pass
    assert ("destroy", offer.name) not in world.hv.calls and ("set_owner", offer.name) not in world.hv.calls
    assert world.pool.settle(slot) == "destroyed" and world.hv.domains == {}


# --- the socket and the factory -------------------------------------------------------------

def test_a_task_gets_the_pooled_guest_and_the_next_one_boots_cold(served: PoolWorld) -> None:
    """Through the socket: a hit (pool=1, handover timed), power_off reaches the pooled guest;
    with the pool empty the next boot is cold (pool=0); nothing is left after either."""
    w = served
    (pooled,) = w.fill()
    factory = WarmFactory(w.launcher, PoolClient(w.settings.pool.socket, 5))
    with factory.boot(w.request()) as guest:
        assert guest.name == pooled and guest.timings["pool"] == 1.0 and "handover" in guest.timings
        factory.power_off(w.request().name)
        assert w.hv.state(pooled) == "shutoff"
    poll_until(lambda: True if w.pool.handed == 1 else None, Deadline.after(5), what="the pool to settle")
    assert w.hv.domains == {}
    with factory.boot(w.request()) as cold:
        assert cold.name == "vmiso-task-0123456789" and cold.timings["pool"] == 0.0
    assert w.hv.domains == {} and read_journal(w.exec_journal.path).outstanding == []


def test_without_a_pool_socket_the_factory_boots_cold(world: PoolWorld) -> None:
    """No pool running: a cold boot, and the reason is kept for the log."""
    factory = WarmFactory(world.launcher, PoolClient(world.settings.pool.socket, 1))
    with factory.boot(world.request()) as guest:
        assert guest.timings["pool"] == 0.0
    assert "did not offer" in factory.client.last_miss


def test_a_peer_that_vanishes_after_the_offer_gets_its_guest_destroyed(served: PoolWorld) -> None:
    """The executor died before switching the owner: the pool's settle destroys the guest."""
    w = served
    (name,) = w.fill()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(str(w.settings.pool.socket))
        conn.sendall(encode({"op": "take", **SHAPE.to_wire()}))
        assert b'"op":"offer"' in conn.recv(4096)
    poll_until(lambda: True if w.pool.destroyed == 1 else None, Deadline.after(5), what="the pool to settle")
    assert name not in w.hv.domains


def test_a_bad_request_gets_an_error_and_the_pool_keeps_its_guest(served: PoolWorld) -> None:
    """Hostile input is answered with an error line; the idle guest stays idle."""
    w = served
    w.fill()
    for line in (b'{"op": "stop"}\n', b"garbage\n", b'{"op":"take","image":"$(x)","vcpus":1,"memory_mib":128}\n'):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(5)
            conn.connect(str(w.settings.pool.socket))
            conn.sendall(line)
            assert b'"op":"error"' in conn.recv(4096)
    assert [g["state"] for g in w.pool.status()["guests"]] == [SlotState.IDLE.value]


def test_the_socket_is_for_libvirt_users_only(world: PoolWorld, tmp_path: Path) -> None:
    """Group of libvirtd's socket, mode 0660; 0600 (root only) where there is no such socket."""
    libvirt_socket = tmp_path / "libvirt-sock"
    libvirt_socket.write_text("")
    os.chown(libvirt_socket, -1, 4242)
    for stand_in, mode, gid in ((libvirt_socket, 0o660, 4242), (tmp_path / "absent", 0o600, None)):
        server = PoolServer(world.pool, world.settings.pool.socket, handover_timeout_s=1, libvirt_socket=stand_in)
        server.bind()
        info = os.stat(world.settings.pool.socket)
        server.close()
        assert stat.S_IMODE(info.st_mode) == mode and (gid is None or info.st_gid == gid)


def test_a_kill_during_the_hand_over_cancels_it_and_the_pooled_guest_is_destroyed(served: PoolWorld) -> None:
    """TaskSession.kill while the offer is in hand: the session ends killed before the start,
    the executor never owned the guest, the pool destroys it; nothing is left."""
    from tests.unit.test_session import Mode
    from vm_isolation.session import SessionIO, TaskSession

    w = served
    (pooled,) = w.fill()
    sessions: list[TaskSession] = []
    factory = WarmFactory(w.launcher, PoolClient(w.settings.pool.socket, 5),
                          on_offer=lambda handover: sessions[0].kill("killed during the hand-over", 0))
    session = TaskSession(factory, w.request(), Mode(), SessionIO(out=lambda b: None, err=lambda b: None),
                          upload_from=w.tmp, guest_sandbox="/mnt/mesos/sandbox", clock=FakeClock())
    sessions.append(session)
    result = session.run()
    assert isinstance(result.error, Cancelled) and not result.started
    assert result.kill_reason == "killed during the hand-over"
    poll_until(lambda: True if w.pool.destroyed == 1 else None, Deadline.after(5), what="the pool to settle")
    assert pooled not in w.hv.domains and w.hv.domains == {}
    assert ("set_owner", pooled) not in w.hv.calls
    assert read_journal(w.exec_journal.path).outstanding == []


def test_no_guest_is_adopted_on_a_host_that_stopped_enforcing_the_network_policy(world: PoolWorld) -> None:
    """As a boot: FirewallError before anything is journaled or switched; the pool keeps it."""
    from vm_isolation.errors import FirewallError

    world.fill()
    taken = world.pool.take(SHAPE, 0, 0)
    assert taken is not None
    world.launcher.firewall = FakeFirewall(missing=("the vmiso table",))
    with pytest.raises(FirewallError), world.launcher.adopt(taken[1], world.request()):
        pass
    assert ("set_owner", taken[1].name) not in world.hv.calls
    assert read_journal(world.exec_journal.path).outstanding == []
