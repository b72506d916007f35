"""vm-isolation-scheduler on a real cluster: one master, three agents (two with
``vt_enabled:1``), real VMs booted by vm-isolation-executor.

The tests share the module's cluster, scheduler store and group, and run in file order, each
starting from where the previous one left the group (agents are started once per module, to
keep boots few): six instances spread 3 + 3, the scheduler SIGKILLed while they boot and
again while they run, a second identical create, an agent SIGKILLed (its instances relaunched
on the other VM agent, its orphaned guests cleaned up when it comes back), and the delete.
The placement table and the restart counts are printed (``-s`` shows them).
"""

from __future__ import annotations

import subprocess
from typing import Any, Iterator, Optional

import pytest

from tests.mesos.cluster import MesosCluster, MesosHome, http_json
from tests.mesos.conftest import no_containers_left
from tests.mesos.schedulerproc import SCHEDULER, SchedulerProcess
from tests.real.conftest import Leftovers
from vm_isolation.config import Settings
from vm_isolation.hypervisor import LibvirtHypervisor
from vm_isolation.waiting import Deadline, poll_until

MASTER_READ_S = 30.0
"""/master/state took over 5 s (cluster.py's default) while the whole suite loaded this host."""

GROUP = "sched-web"
COUNT = 6
BODY = {"name": GROUP, "command": "sleep 3600", "count": COUNT, "cpus": 0.2, "mem": 128, "image": "busybox"}
BOOT_S = 360.0
MASTER_FLAGS = ("--agent_ping_timeout=2secs", "--max_agent_ping_timeouts=5")
"""An agent that stops answering is unreachable after ~10 s (default: 75 s). NOTE: 1 s x 3 made
the master drop both healthy agents while the whole suite loaded this 2-core host."""
VM_AGENT = "cpus:2;mem:2048"


@pytest.fixture(scope="module")
def vm_cluster(mesos_home: MesosHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MesosCluster]:
    cluster = MesosCluster(mesos_home, tmp_path_factory.mktemp("sched-mesos"))
    try:
        cluster.start_master(MASTER_FLAGS)
        cluster.start_agent(attributes="vt_enabled:1;rack:a", resources=VM_AGENT)
        cluster.start_agent(attributes="vt_enabled:1;rack:b", resources=VM_AGENT)
        cluster.start_agent(attributes="vt_enabled:0;rack:c", resources=VM_AGENT)
        yield cluster
    finally:
        cluster.stop()
    assert cluster.killed_executors == [], "executors outlived their agent and were SIGKILLed"


@pytest.fixture(scope="module")
def module_leftovers(settings: Settings, hypervisor: LibvirtHypervisor) -> tuple[Leftovers, dict[str, set[str]]]:
    found = Leftovers(settings, hypervisor)
    return found, found.snapshot()


@pytest.fixture(scope="module")
def scheduler(vm_cluster: MesosCluster, tmp_path_factory: pytest.TempPathFactory,
              module_leftovers: Any) -> Iterator[SchedulerProcess]:
    sched = SchedulerProcess(vm_cluster.master_address, tmp_path_factory.mktemp("scheduler"))
    sched.start()
    try:
        yield sched
    finally:
        sched.stop()


def master_tasks(cluster: MesosCluster, framework_id: str) -> list[dict[str, Any]]:
    """The framework's non-terminal tasks as the master has them."""
    state = http_json(f"{cluster.master_url}/master/state", MASTER_READ_S)
    for fw in state.get("frameworks", []):
        if fw.get("id") == framework_id:
            return list(fw.get("tasks", []))
    return []


def ended_task_ids(cluster: MesosCluster, framework_id: str) -> dict[str, str]:
    """The framework's tasks that reached a terminal state, id -> state, as the master has them."""
    state = http_json(f"{cluster.master_url}/master/state", MASTER_READ_S)
    for fw in [*state.get("frameworks", []), *state.get("completed_frameworks", [])]:
        if fw.get("id") == framework_id:
            return {str(t["id"]): str(t.get("state", "")) for t in fw.get("completed_tasks", [])}
    return {}


def framework_id(sched: SchedulerProcess) -> str:
    return str(sched.api("GET", "/v1/health")[1]["framework_id"])


def wait_all_running(sched: SchedulerProcess, timeout_s: float = BOOT_S) -> list[dict[str, Any]]:
    def probe() -> Optional[list[dict[str, Any]]]:
        found = sched.instances(GROUP)
        return found if len(found) == COUNT and all(i["phase"] == "running" for i in found) else None
    return poll_until(probe, Deadline.after(timeout_s), interval_s=1.0, what=f"all {COUNT} instances running")


def agent_names(cluster: MesosCluster) -> dict[str, str]:
    return {a.id: n for a, n in zip(cluster.agents, ("vm-a", "vm-b", "plain"), strict=True)}


def table(cluster: MesosCluster, tasks: list[dict[str, Any]]) -> str:
    names = agent_names(cluster)
    rows = [f"{t['name']:<12} {names.get(t['slave_id'], t['slave_id']):<6} {t['state']:<13} {t['id']}"
            for t in sorted(tasks, key=lambda t: str(t["name"]))]
    per = {n: sum(names.get(t["slave_id"]) == n for t in tasks) for n in names.values()}
    return "\n".join(["instance     agent  state         task id", *rows, f"per agent: {per}"])


def assert_store_and_master_agree(cluster: MesosCluster, sched: SchedulerProcess) -> list[dict[str, Any]]:
    """One active master task per instance, no other, each the task and agent the scheduler has."""
    tasks = master_tasks(cluster, framework_id(sched))
    ours = {i["task_id"]: i["agent_id"] for i in sched.instances(GROUP)}
    theirs = {t["id"]: t["slave_id"] for t in tasks}
    assert sorted(t["name"] for t in tasks) == [f"{GROUP}-{i}" for i in range(COUNT)], table(cluster, tasks)
    assert theirs == ours, (theirs, ours)
    return tasks


def test_six_instances_land_three_and_three_on_the_vm_agents_across_a_scheduler_kill_while_booting(
        vm_cluster: MesosCluster, scheduler: SchedulerProcess) -> None:
    """POST six; SIGKILL the scheduler once all are launched and before all run; restart it:
    every instance runs, one task each (the one launched before the kill, adopted, or a relaunch
    where that one ended or never reached the master), 3 + 3 on the VM agents, none on the third."""
    status, answer = scheduler.api("POST", "/v1/instances", BODY)
    assert status == 201 and answer["created"], answer
    def all_launched() -> Optional[list[dict[str, Any]]]:
        found = scheduler.instances(GROUP)
        return found if all(i["task_id"] for i in found) else None
    launched = poll_until(all_launched, Deadline.after(120), what="all six instances launched")
    running_at_kill = sum(i["phase"] == "running" for i in launched)
    scheduler.kill()
    assert running_at_kill < COUNT, "every instance already ran: the kill did not happen while booting"
    before = {i["name"]: i["task_id"] for i in launched}
    scheduler.start()
    wait_all_running(scheduler)
    tasks = assert_store_and_master_agree(vm_cluster, scheduler)
    print(f"\nkill while booting: {running_at_kill}/{COUNT} running at the SIGKILL, "
          f"{len(before)} tasks before, {len(tasks)} after, duplicates {len(tasks) - len({t['name'] for t in tasks})}")
    print(table(vm_cluster, tasks))
    after = {t["name"]: t["id"] for t in tasks}
    # An instance may legitimately have a new task, never one beside its first (checked above:
    # one active task per instance): when its first task ended (a guest that failed to boot) or
    # never reached the master (the SIGKILL came before the launch left; reconciliation then
    # answers "Task is unknown", TASK_LOST), it is relaunched after its back-off.
    relaunched = {name for name, task_id in before.items() if after.get(name) != task_id}
    ended = ended_task_ids(vm_cluster, framework_id(scheduler))
    endings = [f"{before[n]}: {ended.get(before[n], 'unknown to the master')}" for n in sorted(relaunched)]
    print(f"relaunched: {sorted(relaunched)} ({'; '.join(endings)})")
    assert set(after) == set(before)
    active = {t["id"] for t in tasks}
    assert not {before[name] for name in relaunched} & active, (before, after)
    names = agent_names(vm_cluster)
    assert sorted(names[t["slave_id"]] for t in tasks) == ["vm-a"] * 3 + ["vm-b"] * 3


def test_creating_the_same_group_again_launches_nothing(vm_cluster: MesosCluster,
                                                        scheduler: SchedulerProcess) -> None:
    """A second identical POST is 200 'nothing changed'; the master still has the same six tasks."""
    before = {t["id"] for t in master_tasks(vm_cluster, framework_id(scheduler))}
    status, answer = scheduler.api("POST", "/v1/instances", BODY)
    assert status == 200 and answer["created"] is False and "nothing changed" in answer["message"], answer
    tasks = assert_store_and_master_agree(vm_cluster, scheduler)
    assert {t["id"] for t in tasks} == before


def test_a_scheduler_sigkilled_while_instances_run_adopts_them_after_restart(
        vm_cluster: MesosCluster, scheduler: SchedulerProcess) -> None:
    """SIGKILL, restart: same framework id, the same six tasks adopted, none relaunched."""
    fw = framework_id(scheduler)
    before = {t["id"] for t in master_tasks(vm_cluster, fw)}
    scheduler.kill()
    scheduler.start()
    assert framework_id(scheduler) == fw
    wait_all_running(scheduler, 120)
    tasks = assert_store_and_master_agree(vm_cluster, scheduler)
    after = {t["id"] for t in tasks}
    print(f"\nkill while running: tasks before {len(before)}, after {len(after)}, same ids {before == after}, "
          f"duplicates {len(tasks) - len({t['name'] for t in tasks})}")
    assert after == before


def test_a_sigkilled_agents_instances_are_relaunched_on_the_other_vm_agent(
        vm_cluster: MesosCluster, scheduler: SchedulerProcess) -> None:
    """SIGKILL vm-a: its three instances are lost and relaunched on vm-b (none on the third);
    when vm-a comes back its orphaned executors and guests are gone."""
    vm_a, vm_b, plain = vm_cluster.agents
    fw = framework_id(scheduler)
    old_on_a = {t["id"] for t in master_tasks(vm_cluster, fw) if t["slave_id"] == vm_a.id}
    assert len(old_on_a) == 3
    vm_a.daemon.process.kill()
    vm_a.daemon.process.wait()

    def all_on_b() -> Optional[list[dict[str, Any]]]:
        found = scheduler.instances(GROUP)
        done = all(i["phase"] == "running" and i["agent_id"] == vm_b.id for i in found)
        return found if done else None
    poll_until(all_on_b, Deadline.after(BOOT_S), interval_s=1.0, what="every instance running on vm-b")
    tasks = assert_store_and_master_agree(vm_cluster, scheduler)
    print("\nafter SIGKILL of vm-a:\n" + table(vm_cluster, tasks))
    assert not old_on_a & {t["id"] for t in tasks}
    vm_cluster.restart_agent(vm_a)
    no_containers_left(vm_a, timeout_s=120)
    assert_store_and_master_agree(vm_cluster, scheduler)
    assert plain.containers() == []


def test_delete_kills_every_task_and_frees_the_agents(
        vm_cluster: MesosCluster, scheduler: SchedulerProcess, module_leftovers: Any) -> None:
    """DELETE: 202, then 404 once every task ended; the master has no task of the framework, the
    agents no container and no resources in use, and no guest of the group is left."""
    found, before = module_leftovers
    status, answer = scheduler.api("DELETE", f"/v1/instances/{GROUP}")
    assert status == 202, answer
    poll_until(lambda: True if scheduler.api("GET", f"/v1/instances/{GROUP}")[0] == 404 else None,
               Deadline.after(120), what="the group to be gone")
    assert master_tasks(vm_cluster, framework_id(scheduler)) == []
    for agent in vm_cluster.agents:
        no_containers_left(agent)
    state = http_json(f"{vm_cluster.master_url}/master/state", MASTER_READ_S)
    used = {s["id"]: s["used_resources"].get("cpus", 0) for s in state["slaves"] if s["active"]}
    assert used == {a.id: 0 for a in vm_cluster.agents}, used
    found.assert_none_since(before, prefixes=[f"vmiso-{GROUP}-"])




def test_vm_isolation_run_through_the_master_runs_one_task_on_a_vm_agent(vm_cluster: MesosCluster) -> None:
    """``vm-isolation-run --master``: the task runs on a vt_enabled:1 agent, its stdout is
    printed, its exit status is the command's, and the framework is gone afterwards."""
    run = subprocess.run([str(SCHEDULER.parent / "vm-isolation-run"), "--master", vm_cluster.master_address,
                          "--command", "echo cluster-run-marker; exit 3", "--cpus", "0.2", "--mem", "128"],
                         capture_output=True, text=True, timeout=BOOT_S)
    assert run.returncode == 3, run.stderr[-3000:]
    assert run.stdout.strip() == "cluster-run-marker", (run.stdout, run.stderr[-2000:])
    vm_a, vm_b, _ = vm_cluster.agents
    assert f"launched on agent {vm_a.id}" in run.stderr or f"launched on agent {vm_b.id}" in run.stderr, run.stderr
    for agent in vm_cluster.agents:
        no_containers_left(agent)
    frameworks = http_json(f"{vm_cluster.master_url}/master/state", MASTER_READ_S)["frameworks"]
    assert "vm-isolation-run" not in {f["name"] for f in frameworks}
