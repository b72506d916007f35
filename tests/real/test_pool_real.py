"""The warm pool against the real stack: vm-isolation-pool serve, real guests, real hand-overs.

Few boots on purpose (the host is shared, TCG): a pool of one guest per test. Every test ends
with no pool guest, task guest, overlay, key or lease left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.real.conftest import Leftovers
from tests.real.test_executor_e2e import BOOT_S, Run, executor_command, task
from vm_isolation.config import Settings, conf_path, load_settings
from vm_isolation.domainxml import Owner
from vm_isolation.guest import GuestRequest
from vm_isolation.hypervisor import LibvirtHypervisor
from vm_isolation.ids import domain_name_for, name_prefix
from vm_isolation.journal import Journal, read_journal
from vm_isolation.leases import Leases
from vm_isolation.localagent import LocalAgent
from vm_isolation.ownership import OwnerFile
from vm_isolation.pool import pool_running, pool_status_path
from vm_isolation.poolclient import Handover, PoolClient
from vm_isolation.poolwire import POOL_NAME_PREFIX
from vm_isolation.procinfo import own_start_time
from vm_isolation.reaper import reap
from vm_isolation.waiting import Deadline, poll_until
from vm_isolation.warm import WarmFactory
from vm_isolation.wiring import real_launcher

MEMORY_MIB = 192
POOL_BIN = Path(sys.executable).parent / "vm-isolation-pool"


class PoolProcess:
    """One vm-isolation-pool serve of a private config (its own socket, state dir and log)."""

    def __init__(self, base: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vmiso-pool-", dir="/tmp"))  # short: a unix socket path
        self.config = self.dir / "mesos.conf"
        self.config.write_text(conf_path().read_text() + (
            f"\n[pool]\nsize = 1\nshapes = busybox:1:{MEMORY_MIB}\nsocket = {self.dir / 'pool.sock'}\n"
            f"state_dir = {self.dir / 'state'}\nhandover_timeout_s = 30\ntake_timeout_s = 10\n"))
        self.settings = load_settings(self.config)
        self.log = open(base / "pool.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([str(POOL_BIN), "serve", "--config", str(self.config)],
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        poll_until(lambda: True if pool_running(self.settings) else None, Deadline.after(60), what="the pool's lock")

    def status(self) -> dict[str, Any]:
        try:
            data = json.loads(pool_status_path(self.settings).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def idle(self) -> list[str]:
        return [g["name"] for g in self.status().get("guests", []) if g["state"] == "idle"]

    def wait_idle(self, other_than: str = "") -> str:
        def found() -> str | None:
            names = [n for n in self.idle() if n != other_than]
            return names[0] if names else None
        return poll_until(found, Deadline.after(BOOT_S), interval_s=0.2, what="an idle pool guest")

    def stop(self) -> int:
        result = subprocess.run([str(POOL_BIN), "stop", "--config", str(self.config)], capture_output=True,
                                timeout=240)
        if self.proc is not None:
            self.proc.wait(60)
        return result.returncode

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        self.log.close()


@pytest.fixture
def pool(tmp_path: Path, leftovers: Leftovers) -> Iterator[PoolProcess]:
    before = leftovers.snapshot()
    process = PoolProcess(tmp_path)
    try:
        process.start()
        yield process
    finally:
        process.close()
    leftovers.assert_none_since(before, prefixes=[POOL_NAME_PREFIX])


class Executor:
    """A stand-in executor in this process: its own owner file, journal and WarmFactory."""

    def __init__(self, settings: Settings, sandbox: Path, hypervisor: LibvirtHypervisor) -> None:
        journal_file = sandbox / ".vm-isolation" / "journal.jsonl"
        self.owner_file = OwnerFile.create(settings.vm.owner_dir, executor_id="pool-test", pid=os.getpid(),
                                           start_time=own_start_time(), journal=journal_file)
        self.owner = Owner(executor_id="pool-test", executor_pid=os.getpid(), executor_start_time=own_start_time(),
                           owner_file=str(self.owner_file.path))
        self.journal = Journal(journal_file, self.owner)
        self.settings = settings
        self.launcher = real_launcher(settings, hypervisor)

    def factory(self, **kw: Any) -> WarmFactory:
        return WarmFactory(self.launcher, PoolClient(self.settings.pool.socket, self.settings.pool.take_timeout_s),
                           **kw)

    def request(self, hint: str) -> GuestRequest:
        name = domain_name_for(hint)
        return GuestRequest(name=name, base_image=self.settings.images.base("busybox"), vcpus=1,
                            memory_mib=MEMORY_MIB, owner=self.owner.for_task(hint), journal=self.journal,
                            image="busybox")

    def close(self) -> None:
        self.journal.close()
        self.owner_file.release()


def test_a_task_gets_a_pooled_guest_the_pool_refills_and_stop_leaves_nothing(pool: PoolProcess, tmp_path: Path,
                                                                              leftovers: Leftovers) -> None:
    """Through the real executor: the task runs in the pool's guest (data: pool=1, handover),
    which is gone after the task; the pool boots a replacement; `stop` destroys it."""
    pooled = pool.wait_idle()
    with LocalAgent(tmp_path / "agent") as agent:
        run = Run(agent, leftovers)
        executor_id = f"pool-{uuid.uuid4().hex[:8]}"
        agent.launch_executor(executor_id, executor_command(pool.config))
        run.launch(executor_id, task("warm", "hostname", resources=[
            {"name": "cpus", "type": "SCALAR", "scalar": {"value": 1}},
            {"name": "mem", "type": "SCALAR", "scalar": {"value": MEMORY_MIB}}]))
        final = agent.wait_for_terminal("warm", BOOT_S)
        assert final.state == "TASK_FINISHED", final
        timings = json.loads(final.data or b"{}")
        assert timings["pool"] == 1.0 and timings["handover"] > 0 and "adopt" in timings
        assert [u.state for u in agent.updates("warm")] == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
        hv = leftovers.hv
        poll_until(lambda: True if hv.state(pooled) is None else None, Deadline.after(30),
                   what=f"{pooled} to be destroyed after its task")
        refill = pool.wait_idle(other_than=pooled)
        assert refill != pooled and refill.startswith(POOL_NAME_PREFIX)
        run.assert_clean()
    assert pool.stop() == 0
    assert hv.state(refill) is None and not pool_running(pool.settings)


def test_the_pool_sigkilled_mid_handover_leaks_nothing_and_the_task_still_gets_a_guest(
        pool: PoolProcess, tmp_path: Path, hypervisor: LibvirtHypervisor) -> None:
    """SIGKILL between the offer and the take-over: the executor ends honestly (it keeps the
    guest if its owner switch won, else boots cold) and after the reaper nothing is left."""
    pool.wait_idle()
    executor = Executor(pool.settings, tmp_path / "sandbox", hypervisor)
    killed: list[str] = []

    def kill_pool(handover: Handover) -> None:
        assert pool.proc is not None
        killed.append(handover.offer.name)
        os.kill(pool.proc.pid, signal.SIGKILL)
        pool.proc.wait(30)

    try:
        request = executor.request("midhandover")
        with executor.factory(on_offer=kill_pool).boot(request) as guest:
            assert guest.remote.run("true") == 0
            source = guest.timings["pool"]
    finally:
        executor.close()
    assert killed and source in (0.0, 1.0)
    report = reap(pool.settings, hypervisor, Leases(hypervisor), orphan_files=False)
    assert report.ok, report.errors
    assert hypervisor.state(killed[0]) is None
    assert read_journal(executor.journal.path).outstanding == []


def test_two_executors_racing_for_the_last_guest_one_gets_it_the_other_boots_cold(
        pool: PoolProcess, tmp_path: Path, hypervisor: LibvirtHypervisor) -> None:
    """Both ask at once for the pool's only guest: exactly one takes it, the other cold-boots."""
    pool.wait_idle()
    executors = [Executor(pool.settings, tmp_path / f"sandbox{i}", hypervisor) for i in range(2)]
    barrier = threading.Barrier(2)
    sources: list[float] = []
    errors: list[BaseException] = []

    def one(executor: Executor, hint: str) -> None:
        try:
            factory = executor.factory()
            barrier.wait(30)
            with factory.boot(executor.request(hint)) as guest:
                assert guest.remote.run("true") == 0
                sources.append(guest.timings["pool"])
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(e, f"race{i}")) for i, e in enumerate(executors)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOOT_S * 2)
    for executor in executors:
        executor.close()
    assert errors == [] and sorted(sources) == [0.0, 1.0]
    assert all(read_journal(e.journal.path).outstanding == [] for e in executors)
    assert not [d for d in hypervisor.owned_domains() if d.name.startswith((name_prefix("race0"),
                                                                          name_prefix("race1")))]
    assert pool.stop() == 0


CHILD = """
import sys
from pathlib import Path
from tests.real.test_pool_real import Executor
from vm_isolation.config import load_settings
from vm_isolation.hypervisor import LibvirtHypervisor
settings = load_settings(Path(sys.argv[1]))
executor = Executor(settings, Path(sys.argv[2]), LibvirtHypervisor(settings.libvirt.uri))
with executor.factory().boot(executor.request("diesafter")) as guest:
    print("TAKEN", guest.name, guest.timings["pool"], flush=True)
    sys.stdin.read()
"""


def test_an_executor_sigkilled_right_after_taking_a_guest_leaves_it_to_the_reaper_once(
        pool: PoolProcess, tmp_path: Path, hypervisor: LibvirtHypervisor) -> None:
    """The executor owns the guest (metadata switched), then dies: the pool has forgotten it
    (handed, not destroyed) and the reaper removes it, with its overlay, key and lease."""
    pooled = pool.wait_idle()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(pool.config), str(tmp_path / "sandbox")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
    assert child.stdout is not None
    line = child.stdout.readline().decode().split()
    assert line == ["TAKEN", pooled, "1.0"], line
    poll_until(lambda: True if pool.status().get("handed") == 1 else None, Deadline.after(30),
               what="the pool to forget the guest")
    child.kill()
    child.wait(30)
    assert child.stdin is not None and child.stdout is not None
    child.stdin.close()
    child.stdout.close()
    report = reap(pool.settings, hypervisor, Leases(hypervisor), orphan_files=False)
    assert report.ok, report.errors
    poll_until(lambda: True if hypervisor.state(pooled) is None else None, Deadline.after(30),
               what=f"{pooled} to be reaped")  # by this reap or the host's watcher, whichever came first
    assert pool.status().get("destroyed", 0) == 0
