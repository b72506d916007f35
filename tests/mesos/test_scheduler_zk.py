"""vm-isolation-scheduler with its ZooKeeper store (a real ZooKeeper server from Debian's
``zookeeper`` package) on a real cluster: the store contract, then two schedulers against
one ZooKeeper where only the elected leader acts, the standby taking over when the leader is
SIGKILLed, and the restart test again (SIGKILL, start: the same tasks adopted, none twice).
Like test_scheduler.py the tests share the module's cluster and group and run in file order.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.mesos.cluster import MesosCluster, MesosHome, http_json
from tests.mesos.conftest import no_containers_left
from tests.mesos.schedulerproc import SchedulerProcess, ZooKeeperServer
from tests.unit.store_contract import check_store_contract
from vm_isolation.scheduler.zkstore import ZkStore
from vm_isolation.waiting import Deadline, poll_until

MASTER_READ_S = 30.0
"""/master/state took over 5 s (cluster.py's default) while the whole suite loaded this host."""

GROUP = "zk-web"
COUNT = 2
BODY = {"name": GROUP, "command": "sleep 3600", "count": COUNT, "cpus": 0.2, "mem": 128}
BOOT_S = 300.0
TAKEOVER_S = 90.0
"""The leader's ZooKeeper session must expire (kazoo's 10 s timeout) before the standby wins."""


@pytest.fixture(scope="module")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    problem = ZooKeeperServer.problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    server = ZooKeeperServer(tmp_path_factory.mktemp("zookeeper"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def zk_cluster(mesos_home: MesosHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MesosCluster]:
    cluster = MesosCluster(mesos_home, tmp_path_factory.mktemp("zk-mesos"))
    try:
        cluster.start_master()
        cluster.start_agent(attributes="vt_enabled:1", resources="cpus:2;mem:2048")
        cluster.start_agent(attributes="vt_enabled:1", resources="cpus:2;mem:2048")
        yield cluster
    finally:
        cluster.stop()
    assert cluster.killed_executors == [], "executors outlived their agent and were SIGKILLed"


@pytest.fixture(scope="module")
def pair(zk_cluster: MesosCluster, zookeeper: ZooKeeperServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SchedulerProcess]]:
    base = tmp_path_factory.mktemp("zk-schedulers")
    store = f"zk://{zookeeper.hosts}/vm-isolation/scheduler/test"
    both = [SchedulerProcess(zk_cluster.master_address, base, store, name=n) for n in ("one", "two")]
    try:
        yield both
    finally:
        for s in both:
            s.stop()


def framework_tasks(cluster: MesosCluster) -> list[dict[str, Any]]:
    state = http_json(f"{cluster.master_url}/master/state", MASTER_READ_S)
    return [t for fw in state.get("frameworks", []) for t in fw.get("tasks", [])]


def wait_running(sched: SchedulerProcess, timeout_s: float) -> dict[str, str]:
    def probe() -> Any:
        found = sched.instances(GROUP)
        return found if len(found) == COUNT and all(i["phase"] == "running" for i in found) else None
    return {i["name"]: i["task_id"] for i in poll_until(probe, Deadline.after(timeout_s), interval_s=1.0,
                                                        what=f"{GROUP} running")}


def test_the_zookeeper_store_keeps_the_store_contract(zookeeper: ZooKeeperServer) -> None:
    """check_store_contract against the real server (reopen = a new client session)."""
    check_store_contract(lambda: ZkStore(zookeeper.hosts, "/vm-isolation/contract"))


def test_only_the_leader_acts_and_the_standby_takes_over(zk_cluster: MesosCluster,
                                                         pair: list[SchedulerProcess]) -> None:
    """One registers and serves; the other stands by (503, one framework at the master). SIGKILL
    the leader: the standby is elected, re-registers as the same framework and adopts the tasks."""
    one, two = pair
    one.start()
    two.start(wait_registered=False)
    assert two.health()["leader"] is False
    status, answer = two.api("POST", "/v1/instances", BODY)
    assert status == 503 and "stands by" in answer["error"], answer
    assert one.api("POST", "/v1/instances", BODY)[0] == 201
    before = wait_running(one, BOOT_S)
    framework = one.health()["framework_id"]
    frameworks = http_json(f"{zk_cluster.master_url}/master/state", MASTER_READ_S)["frameworks"]
    assert [f["id"] for f in frameworks] == [framework]
    one.kill()
    killed_at = time.monotonic()
    two.wait_registered(TAKEOVER_S)
    took = time.monotonic() - killed_at
    assert two.health()["framework_id"] == framework
    after = wait_running(two, 120)
    tasks = framework_tasks(zk_cluster)
    print(f"\nZooKeeper takeover: SIGKILL -> standby registered {took:.1f} s; "
          f"tasks before {len(before)}, after {len(tasks)}, same ids {before == after}, "
          f"duplicates {len(tasks) - len({t['name'] for t in tasks})}")
    assert after == before and sorted(t["id"] for t in tasks) == sorted(before.values())


def test_a_sigkilled_leader_restarted_alone_adopts_the_same_tasks(zk_cluster: MesosCluster,
                                                                  pair: list[SchedulerProcess]) -> None:
    """SIGKILL the leader with no standby; start it again: same tasks, none relaunched."""
    one, two = pair
    before = {t["id"] for t in framework_tasks(zk_cluster)}
    two.kill()
    one.start(wait_registered=False)
    one.wait_registered(TAKEOVER_S)
    after = set(wait_running(one, 120).values())
    tasks = framework_tasks(zk_cluster)
    print(f"\nZooKeeper restart: tasks before {len(before)}, after {len(tasks)}, same ids {before == after}, "
          f"duplicates {len(tasks) - len({t['name'] for t in tasks})}")
    assert after == before == {t["id"] for t in tasks}
    assert one.api("DELETE", f"/v1/instances/{GROUP}")[0] == 202
    poll_until(lambda: True if one.api("GET", f"/v1/instances/{GROUP}")[0] == 404 else None,
               Deadline.after(120), what="the group to be gone")
    for agent in zk_cluster.agents:
        no_containers_left(agent)


def test_the_scheduler_finds_its_master_through_zookeeper(mesos_home: MesosHome, zookeeper: ZooKeeperServer,
                                                         tmp_path: Path) -> None:
    """``--master zk://HOST:PORT/mesos``: a master started with ``--zk`` is detected and the
    scheduler registers with it (checkpointing on, the failover timeout it was given)."""
    cluster = MesosCluster(mesos_home, tmp_path / "mesos")
    zk_master = f"zk://{zookeeper.hosts}/mesos-detect"
    try:
        cluster.start_master((f"--zk={zk_master}", "--quorum=1"))
        sched = SchedulerProcess(zk_master, tmp_path, name="detect")
        sched.start()
        try:
            frameworks = http_json(f"{cluster.master_url}/master/state", MASTER_READ_S)["frameworks"]
            assert [(f["id"], f["checkpoint"], f["failover_timeout"]) for f in frameworks] == [
                (sched.health()["framework_id"], True, 900.0)]
        finally:
            sched.stop()
    finally:
        cluster.stop()
