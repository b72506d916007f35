"""Lifecycle under the real agent: however an executor ends, its guest ends with it; agent
restarts, executor-id reuse, pid namespaces, health checks and the wrap-mode registration window.

The real agent never sends an executor SIGTERM: it destroys the container with SIGKILL (after
the shutdown grace period, on --recover=cleanup, ...). The guest's qemu is libvirtd's, outside
that container, so what ends it is the host's reaper watcher (started by host set-up), which
sees the executor's owner-file lock released. Each test ends with no container on the agent
and no domain, overlay, key or lease of its tasks left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.mesos.cluster import Agent, MesosCluster
from tests.mesos.conftest import no_containers_left
from tests.mesos.framework import EXECUTOR, Framework, scalar, vm_task
from tests.real.conftest import Leftovers
from vm_isolation.config import Settings
from vm_isolation.hypervisor import LibvirtHypervisor
from vm_isolation.ids import name_prefix
from vm_isolation.journal import journal_path, read_journal
from vm_isolation.reaperwatch import reaper_watch_running
from vm_isolation.waiting import Deadline, poll_until

BOOT_S = 180.0
GONE_S = 20.0
"""Deadline for a dead executor's guest to be gone (the watcher checks every 0.5 s)."""
STUBBORN = "trap '' TERM; sleep 600"
REUSE_ROUNDS = int(os.environ.get("VMISO_REUSE_ROUNDS", "30"))
AGENT_RESTARTS = int(os.environ.get("VMISO_AGENT_RESTARTS", "10"))


@pytest.fixture(scope="module")
def agent(cluster: MesosCluster, bridge_ip: str) -> Agent:
    """An agent of this module's own (its restarts disturb no other test), on the bridge
    address (wrap mode), with checkpoint-friendly defaults (--recover=reconnect)."""
    return cluster.start_agent(ip=bridge_ip, attributes="vmiso_way:lifecycle")


@pytest.fixture(autouse=True)
def watcher(settings: Settings) -> None:
    assert reaper_watch_running(settings), "host set-up (make setup) starts vm-isolation-reap --watch"


def domains_of(hv: LibvirtHypervisor, task_id: str) -> list[str]:
    return [d.name for d in hv.owned_domains() if d.name.startswith(name_prefix(task_id))]


def wait_gone(hv: LibvirtHypervisor, task_id: str, since: float, what: str) -> None:
    poll_until(lambda: True if not domains_of(hv, task_id) else None, Deadline.after(GONE_S), interval_s=0.1,
               what=f"the guest of {task_id} to be gone ({what})")
    print(f"{what}: guest gone {time.monotonic() - since:.2f} s later")


def executor_pid(agent: Agent, executor_id: str) -> int:
    return poll_until(lambda: agent.executor_pid(executor_id), Deadline.after(30),
                      what=f"the pid of executor {executor_id}")


@pytest.mark.parametrize("when", ["booting", "running"])
def test_sigkill_of_the_executor_ends_its_guest(
        agent: Agent, framework: Callable[..., Framework], leftovers: Leftovers, hypervisor: LibvirtHypervisor,
        when: str) -> None:
    """kill -9 of the executor (what the agent's destroy does), mid-boot and mid-run, with a task
    that ignores SIGTERM: the framework gets TASK_FAILED from the agent, and the guest is gone
    within seconds, with nothing left, although nobody ran the reaper by hand."""
    before = leftovers.snapshot()
    fw = framework("vmiso-sigkill")
    task_id = f"kill9-{when[:4]}-{uuid.uuid4().hex[:6]}"
    fw.launch(agent.id, [vm_task(task_id, STUBBORN)])
    pid = executor_pid(agent, f"{task_id}-executor")
    if when == "booting":
        fw.wait_for_state(task_id, "TASK_STARTING", BOOT_S)
        sandbox = Path(agent.executor_directory(fw.framework_id, f"{task_id}-executor"))
        poll_until(lambda: read_journal(journal_path(sandbox)).outstanding or None, Deadline.after(60),
                   interval_s=0.05, what="the first journaled resource")
        assert "TASK_RUNNING" not in fw.states(task_id)
    else:
        fw.wait_for_state(task_id, "TASK_RUNNING", BOOT_S)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    final = fw.wait_for_terminal(task_id, 60)
    assert (final.state, final.reason) == ("TASK_FAILED", "REASON_EXECUTOR_TERMINATED"), final
    wait_gone(hypervisor, task_id, killed_at, f"SIGKILL while {when}")
    no_containers_left(agent)
    leftovers.assert_none_since(before, prefixes=[name_prefix(task_id)])


def test_framework_teardown_with_the_default_grace_reports_killed_and_ends_the_guest(
        cluster: MesosCluster, agent: Agent, framework: Callable[..., Framework], leftovers: Leftovers,
        hypervisor: LibvirtHypervisor) -> None:
    """Default flags (5 s shutdown grace), a task that ignores SIGTERM: the executor's ladder
    (SIGTERM, SIGKILL, destroy) fits the grace period, so the master records TASK_KILLED (not the
    agent's TASK_FAILED) and the guest is gone."""
    before = leftovers.snapshot()
    fw = framework("vmiso-teardown")
    task_id = f"down-{uuid.uuid4().hex[:6]}"
    fw.launch(agent.id, [vm_task(task_id, STUBBORN)])
    fw.wait_for_state(task_id, "TASK_RUNNING", BOOT_S)
    started = time.monotonic()
    fw.stop()
    wait_gone(hypervisor, task_id, started, "framework teardown, 5 s grace")
    no_containers_left(agent)
    assert cluster.task_state(fw.framework_id, task_id) == "TASK_KILLED"
    leftovers.assert_none_since(before, prefixes=[name_prefix(task_id)])


def test_a_grace_too_short_for_the_ladder_still_leaves_nothing(
        agent: Agent, framework: Callable[..., Framework], leftovers: Leftovers,
        hypervisor: LibvirtHypervisor) -> None:
    """A 0.5 s shutdown grace: the agent SIGKILLs the executor before it can finish; the watcher
    ends the guest."""
    before = leftovers.snapshot()
    fw = framework("vmiso-short-grace")
    task_id = f"short-{uuid.uuid4().hex[:6]}"
    fw.launch(agent.id, [vm_task(task_id, STUBBORN, grace_s=0.5)])
    fw.wait_for_state(task_id, "TASK_RUNNING", BOOT_S)
    started = time.monotonic()
    fw.stop()
    wait_gone(hypervisor, task_id, started, "framework teardown, 0.5 s grace")
    no_containers_left(agent)
    leftovers.assert_none_since(before, prefixes=[name_prefix(task_id)])


def test_an_agent_restarted_with_recover_cleanup_takes_its_guests_with_it(
        cluster: MesosCluster, agent: Agent, framework: Callable[..., Framework], leftovers: Leftovers,
        hypervisor: LibvirtHypervisor) -> None:
    """--recover=cleanup kills every executor it recovers (SIGKILL of its container): the guest
    of a running task goes too."""
    before = leftovers.snapshot()
    fw = framework("vmiso-cleanup", checkpoint=True)
    task_id = f"clean-{uuid.uuid4().hex[:6]}"
    fw.launch(agent.id, [vm_task(task_id, STUBBORN)])
    fw.wait_for_state(task_id, "TASK_RUNNING", BOOT_S)
    started = time.monotonic()
    assert cluster.cleanup_agent(agent) == 0
    wait_gone(hypervisor, task_id, started, "agent restart with --recover=cleanup")
    no_containers_left(agent)
    leftovers.assert_none_since(before, prefixes=[name_prefix(task_id)])


def test_agent_restarts_with_checkpointing_keep_the_task_running(
        cluster: MesosCluster, agent: Agent, framework: Callable[..., Framework], leftovers: Leftovers,
        hypervisor: LibvirtHypervisor) -> None:
    """A checkpointing framework, the agent SIGKILLed and restarted (--recover=reconnect) again
    and again under a running task: each time the executor re-subscribes within
    MESOS_SUBSCRIPTION_BACKOFF_MAX and the task keeps running in the same guest; the framework
    sees each status exactly once and no re-registration timeout."""
    before = leftovers.snapshot()
    fw = framework("vmiso-restarts", checkpoint=True)
    task_id = f"rst-{uuid.uuid4().hex[:6]}"
    fw.launch(agent.id, [vm_task(task_id, "sleep 600")])
    fw.wait_for_state(task_id, "TASK_RUNNING", BOOT_S)
    guest = domains_of(hypervisor, task_id)
    executor_id = f"{task_id}-executor"
    for n in range(AGENT_RESTARTS):
        cluster.restart_agent(agent)
        poll_until(lambda: True if _subscribed(agent, fw.framework_id, executor_id) else None,
                   Deadline.after(30), what=f"the executor to re-subscribe after restart {n + 1}")
        assert domains_of(hypervisor, task_id) == guest, f"the guest changed at restart {n + 1}"
    print(f"agent restarted {AGENT_RESTARTS} times under {task_id}; executor re-subscribed each time")
    fw.kill(task_id)
    fw.wait_for_terminal(task_id, 60)
    assert fw.states(task_id) == ["TASK_STARTING", "TASK_RUNNING", "TASK_KILLED"], fw.updates(task_id)
    assert not [u for u in fw.updates(task_id) if "REREGISTRATION" in u.reason]
    fw.stop()
    no_containers_left(agent)
    leftovers.assert_none_since(before, prefixes=[name_prefix(task_id)])


def _subscribed(agent: Agent, framework_id: str, executor_id: str) -> bool:
    """The agent lists the executor as live with its task running (it re-subscribed: an executor
    that misses the re-registration window is destroyed and its task is no longer running)."""
    try:
        state = agent.state()
    except (OSError, ValueError):
        return False
    for fw in state.get("frameworks", []):
        if fw.get("id") != framework_id:
            continue
        for ex in fw.get("executors", []):
            if ex.get("id") == executor_id and any(t.get("state") == "TASK_RUNNING" for t in ex.get("tasks", [])):
                return True
    return False


def test_tasks_sent_to_the_same_executor_the_moment_the_last_finished_all_run(
        agent: Agent, framework: Callable[..., Framework], leftovers: Leftovers) -> None:
    """As Mesos's long-lived example does: task N+1 goes to the same executor id as soon as
    task N finished. The executor lingers ([executor] linger_s) instead of racing its exit, so
    no task is FAILED or LOST."""
    before = leftovers.snapshot()
    fw = framework("vmiso-reuse")
    executor_id = f"reuse-{uuid.uuid4().hex[:6]}"
    outcomes: list[str] = []
    ids = []
    for n in range(REUSE_ROUNDS):
        task_id = f"{executor_id}-{n}"
        ids.append(task_id)
        fw.launch(agent.id, [vm_task(task_id, "true", executor_id=executor_id)], timeout_s=60)
        outcomes.append(fw.wait_for_terminal(task_id, BOOT_S).state)
    unexpected = [(t, s) for t, s in zip(ids, outcomes, strict=True) if s != "TASK_FINISHED"]
    print(f"{REUSE_ROUNDS} tasks on executor {executor_id}: unexpected FAILED/LOST/other: {len(unexpected)}")
    assert unexpected == []
    fw.stop()
    no_containers_left(agent)
    leftovers.assert_none_since(before, prefixes=[name_prefix(t) for t in ids])


def test_under_the_pid_namespace_isolator_the_host_reaper_keeps_the_live_guest(
        cluster: MesosCluster, framework: Callable[..., Framework], leftovers: Leftovers,
        hypervisor: LibvirtHypervisor) -> None:
    """namespaces/pid + filesystem/linux: the executor's own pid is the namespace's. The owner it
    records is judged by its owner-file lock, so vm-isolation-reap --dry-run on the host lists
    the running guest as kept, not as an orphan; once the task is killed nothing is left."""
    ns_agent = cluster.start_agent(isolation="cgroups/cpu,cgroups/mem,namespaces/pid,filesystem/linux",
                                   attributes="vmiso_way:pidns")
    before = leftovers.snapshot()
    fw = framework("vmiso-pidns")
    task_id = f"pidns-{uuid.uuid4().hex[:6]}"
    fw.launch(ns_agent.id, [vm_task(task_id, "sleep 600")])
    fw.wait_for_state(task_id, "TASK_RUNNING", BOOT_S)
    host_pid = executor_pid(ns_agent, f"{task_id}-executor")
    (domain,) = [d for d in hypervisor.owned_domains() if d.name.startswith(name_prefix(task_id))]
    assert domain.owner.executor_pid != host_pid, "inside its pid namespace the executor's pid differs"
    reap = Path(sys.executable).parent / "vm-isolation-reap"
    listed = subprocess.run([str(reap), "--dry-run", "--json"], capture_output=True, text=True, timeout=120)
    report = json.loads(listed.stdout)
    assert domain.name not in [f["name"] for f in report["found"]], report["found"]
    assert any(line.startswith(f"{domain.name}: owner") and line.endswith("is alive") for line in report["kept"])
    fw.kill(task_id)
    assert fw.wait_for_terminal(task_id, 60).state == "TASK_KILLED"
    fw.stop()
    no_containers_left(ns_agent)
    leftovers.assert_none_since(before, prefixes=[name_prefix(task_id)])


def test_health_checks_run_in_the_guest_and_a_failing_one_kills_with_task_killing(
        agent: Agent, framework: Callable[..., Framework], leftovers: Leftovers) -> None:
    """HTTP health checks through the real master: a task serving on the guest's 127.0.0.1 is
    reported healthy; one whose port is not served is reported unhealthy and killed, and a
    framework with TASK_KILLING_STATE sees TASK_KILLING first."""
    before = leftovers.snapshot()
    fw = framework("vmiso-health", capabilities=("TASK_KILLING_STATE",))
    up, down = f"hc-up-{uuid.uuid4().hex[:6]}", f"hc-down-{uuid.uuid4().hex[:6]}"
    serve = "mkdir -p www && echo ok > www/index.html && exec httpd -f -p 127.0.0.1:8080 -h www"
    fw.launch(agent.id, [
        vm_task(up, serve, health_check={"type": "HTTP", "http": {"port": 8080, "path": "/index.html"},
                                         "delay_seconds": 0, "interval_seconds": 1, "grace_period_seconds": 60}),
        vm_task(down, "sleep 600", health_check={"type": "HTTP", "http": {"port": 8081}, "delay_seconds": 0,
                                                 "interval_seconds": 1, "timeout_seconds": 2,
                                                 "grace_period_seconds": 0, "consecutive_failures": 2})])
    poll_until(lambda: True if any(s.get("healthy") is True for s in fw.raw_updates(up)) else None,
               Deadline.after(BOOT_S), what=f"{up} reported healthy")
    final = fw.wait_for_terminal(down, BOOT_S)
    assert final.state == "TASK_KILLED" and "health check failed 2 times in a row" in final.message
    states = fw.states(down)
    assert states[-2:] == ["TASK_KILLING", "TASK_KILLED"], states
    assert [s.get("healthy") for s in fw.raw_updates(down) if s.get("reason") ==
            "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"] == [False, False]
    assert fw.raw_updates(down)[-1].get("healthy") is False
    fw.kill(up)
    assert fw.wait_for_terminal(up, 60).state == "TASK_KILLED"
    fw.stop()
    no_containers_left(agent)
    leftovers.assert_none_since(before, prefixes=[name_prefix(up), name_prefix(down)])


@pytest.fixture
def big_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "dataset.bin"
    with path.open("wb") as out:
        for _ in range(384):
            out.write(os.urandom(1 << 20))
    yield path


def test_a_wrapped_start_that_misses_the_registration_window_gives_up_clearly(
        agent: Agent, framework: Callable[..., Framework], leftovers: Leftovers, big_file: Path) -> None:
    """Wrap mode whose ExecutorInfo fetches a 384 MiB file: the agent's registration timer
    started before the fetch, and boot + the sandbox upload do not fit a 12 s budget. The
    wrapper cuts the upload short, logs why and what to raise, removes its guest and exits
    non-zero: the agent reports the task failed, nothing is left."""
    before = leftovers.snapshot()
    fw = framework("vmiso-window")
    task_id, executor_id = f"window-{uuid.uuid4().hex[:6]}", f"window-{uuid.uuid4().hex[:6]}"
    inner = Path(__file__).resolve().parents[1] / "real" / "guest" / "inner_executor.py"
    command = {"value": str(EXECUTOR), "shell": False,
               "arguments": ["vm-isolation-executor", "--wrap", "--", "python3", "inner_executor.py"],
               "uris": [{"value": f"file://{inner}"}, {"value": f"file://{big_file}"}],
               "environment": {"variables": [{"name": "VM_ISOLATION_EXECUTOR_WRAP_BOOT_BUDGET_S", "value": "12"}]}}
    task = {"name": task_id, "task_id": {"value": task_id}, "resources": [scalar("cpus", 0.5), scalar("mem", 64)],
            "executor": {"executor_id": {"value": executor_id}, "type": "CUSTOM", "command": command,
                         "resources": [scalar("cpus", 0.1), scalar("mem", 32)]}}
    fw.launch(agent.id, [task])
    final = fw.wait_for_terminal(task_id, BOOT_S)
    assert final.state == "TASK_FAILED", final
    sandbox = agent.executor_directory(fw.framework_id, executor_id)
    err = agent.read_file(f"{sandbox}/stderr")
    assert "registration window" in err and "wrap_boot_budget_s" in err, err[-2000:]
    fw.stop()
    no_containers_left(agent)
    leftovers.assert_none_since(before, prefixes=[name_prefix(executor_id)])
