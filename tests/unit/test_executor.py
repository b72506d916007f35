"""The executor's event routing on fakes: a faulty agent's duplicate LAUNCH or stray KILL
never starts a second guest, never changes a running task's status, never raises."""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import pytest

from tests.unit.fakes import LAUNCH, FakeDisks, FakeFirewall, FakeHypervisor, FakeRemote, fake_key_factory
from vm_isolation.config import ExecutorSettings, MesosEnvironment, Settings, VmSettings
from vm_isolation.executor import Executor
from vm_isolation.guest import GuestFactory
from vm_isolation.leases import Leases
from vm_isolation.waiting import Deadline, poll_until

WAIT_S = 10.0


class FakeAgent:
    """Records status updates; acknowledges each at once."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, str, Optional[str]]] = []
        self.health: list[tuple[str, Optional[bool]]] = []
        self.lock = threading.Lock()

    def send_update(self, task_id: str, state: str, *, reason: Optional[str] = None,
                    message: Optional[str] = None, data: Optional[bytes] = None,
                    healthy: Optional[bool] = None, check_status: Optional[Mapping[str, Any]] = None) -> bytes:
        with self.lock:
            self.updates.append((task_id, state, message))
            self.health.append((task_id, healthy))
        return b"u" * 16

    def wait_acknowledged(self, uuid: bytes, timeout_s: float) -> bool:
        return True

    def states(self, task_id: str) -> list[str]:
        with self.lock:
            return [state for tid, state, _ in self.updates if tid == task_id]

    def wait_for(self, task_id: str, state: str) -> None:
        poll_until(lambda: state in self.states(task_id) or None, Deadline.after(WAIT_S),
                   what=f"{task_id} {state}")


class Guests:
    """A connector whose sessions run a launcher script as the real one would start: the start
    marker first, then the command 'runs' until its task is released (``sleep`` commands) or
    ends at once (anything else)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.kills: list[str] = []
        self.health_exit = 0

    def __call__(self, host: str, *, host_key: str, client_key: object, deadline: object,
                 user: str = "root") -> FakeRemote:
        return FakeRemote(host, host_key, handler=self._run)

    def _run(self, remote: FakeRemote, command: str, out: Callable[[bytes], None],
             err: Callable[[bytes], None]) -> int:
        launched = re.fullmatch(LAUNCH, command)
        if command.startswith("kill "):
            self.kills.append(command)
            self.release.set()  # the signalled task ends
            return 0
        if " timeout -s KILL " in command:  # a health-check command
            return self.health_exit
        if command.startswith("mkdir -p "):
            return 0  # the sandbox upload
        if launched is None:
            raise AssertionError(f"unexpected command in the guest: {command!r}")
        script = remote.stdins[command].decode()
        err(f"VMISO-STARTED {launched.group(1)} 100\n".encode())
        if "sleep" in script:
            self.release.wait(WAIT_S)
        out(b"ran\n")
        return 0


World = tuple[Executor, FakeAgent, FakeHypervisor, Guests]


@pytest.fixture
def linger_s() -> float:
    return 0.0


@pytest.fixture
def world(tmp_path: Path, linger_s: float) -> Iterator[World]:
    settings = replace(Settings(), vm=VmSettings(overlay_dir=tmp_path / "o", key_dir=tmp_path / "k",
                                                 console_dir=tmp_path),
                       executor=ExecutorSettings(linger_s=linger_s))
    hv = FakeHypervisor()
    guests = Guests()
    launcher = GuestFactory(settings, hv, Leases(hv, status_dir=tmp_path / "none", release_command="true"),
                             domain_type="qemu", connect=guests, make_key=fake_key_factory, disks=FakeDisks(),
                             firewall=FakeFirewall())
    env = MesosEnvironment(framework_id="fw", executor_id="ex", agent_endpoint="127.0.0.1:5051",
                           directory=tmp_path / "sandbox", checkpoint=False, shutdown_grace_period_s=5,
                           subscription_backoff_max_s=2, recovery_timeout_s=60)
    env.directory.mkdir()
    executor = Executor(settings, env, launcher)
    agent = FakeAgent()
    executor.attach(agent)
    yield executor, agent, hv, guests
    guests.release.set()


def task(task_id: str, command: str) -> dict[str, Any]:
    return {"task_id": {"value": task_id}, "name": task_id,
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 1}},
                          {"name": "mem", "type": "SCALAR", "scalar": {"value": 128}}],
            "data": base64.b64encode(json.dumps({"value": command}).encode()).decode()}


def defines(hv: FakeHypervisor) -> int:
    return sum(1 for call, _ in hv.calls if call == "define")


def test_a_second_launch_of_a_running_task_is_ignored(world: World) -> None:
    """No second guest, and no status for the id: any would be taken for the running task's."""
    executor, agent, hv, guests = world
    executor.on_launch(task("dup", "sleep 60"))
    agent.wait_for("dup", "TASK_RUNNING")
    executor.on_launch(task("dup", "echo impostor"))
    assert defines(hv) == 1 and agent.states("dup") == ["TASK_STARTING", "TASK_RUNNING"]
    guests.release.set()
    assert executor.wait(WAIT_S) == 0 and executor.done
    assert agent.states("dup") == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"] and defines(hv) == 1


def test_reusing_the_id_of_a_finished_task_is_a_task_error(world: World) -> None:
    executor, agent, hv, guests = world
    executor.on_launch(task("keep", "sleep 60"))  # keeps the executor from exiting
    executor.on_launch(task("once", "true"))
    agent.wait_for("once", "TASK_FINISHED")
    executor.on_launch(task("once", "true"))
    agent.wait_for("once", "TASK_ERROR")
    message = [m for tid, state, m in agent.updates if (tid, state) == ("once", "TASK_ERROR")][0]
    assert message is not None and "already used" in message and "new task id" in message
    assert defines(hv) == 2
    guests.release.set()
    assert executor.wait(WAIT_S) == 0 and executor.done


def test_a_kill_for_an_unknown_or_finished_task_changes_nothing(world: World) -> None:
    executor, agent, hv, guests = world
    executor.on_kill("never-launched", 1.0)
    executor.on_launch(task("busy", "sleep 60"))
    executor.on_launch(task("done", "true"))
    agent.wait_for("done", "TASK_FINISHED")
    agent.wait_for("busy", "TASK_RUNNING")
    executor.on_kill("done", 1.0)
    executor.on_kill("never-launched", None)
    guests.release.set()
    assert executor.wait(WAIT_S) == 0 and executor.done
    assert agent.states("done") == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    assert agent.states("busy") == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    assert agent.states("never-launched") == []


@pytest.mark.parametrize("linger_s", [0.5])
def test_a_launch_during_the_linger_is_run_and_the_executor_exits_after_the_last(world: World) -> None:
    """A framework that sends task N+1 to the same executor the moment task N ended: it runs."""
    executor, agent, hv, guests = world
    executor.on_launch(task("first", "true"))
    agent.wait_for("first", "TASK_FINISHED")
    assert not executor.done, "it lingers after its last task"
    executor.on_launch(task("second", "true"))
    agent.wait_for("second", "TASK_FINISHED")
    assert executor.wait(WAIT_S) == 0 and executor.done
    assert agent.states("second") == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]


@pytest.mark.parametrize("linger_s", [0.2])
def test_a_launch_once_the_executor_is_exiting_is_dropped_saying_why(world: World) -> None:
    executor, agent, hv, guests = world
    executor.on_launch(task("only", "true"))
    assert executor.wait(WAIT_S) == 0 and executor.done
    executor.on_launch(task("late", "true"))
    agent.wait_for("late", "TASK_DROPPED")
    message = [m for tid, state, m in agent.updates if tid == "late"][0]
    assert message is not None and "linger_s" in message and "launch the task again" in message
    assert defines(hv) == 1


@pytest.mark.parametrize("linger_s", [60.0])
def test_as_the_command_executor_it_exits_with_its_task(world: World) -> None:
    """Its task carries the executor's own id (the agent's command executor): nothing can follow."""
    executor, agent, hv, guests = world
    executor.on_launch(task("ex", "true"))
    assert executor.wait(WAIT_S) == 0 and executor.done


def test_a_failing_health_check_reports_unhealthy_then_kills_the_task(world: World) -> None:
    """COMMAND health check in the guest: each failure after the grace period is a TASK_RUNNING
    with healthy=false; the consecutive_failures-th kills the task, which ends TASK_KILLED."""
    executor, agent, hv, guests = world
    guests.health_exit = 1
    info = task("sick", "sleep 60")
    info["health_check"] = {"type": "COMMAND", "command": {"value": "false"}, "delay_seconds": 0,
                            "interval_seconds": 0.01, "grace_period_seconds": 0, "consecutive_failures": 2}
    info["kill_policy"] = {"grace_period": {"nanoseconds": 0}}
    executor.on_launch(info)
    agent.wait_for("sick", "TASK_KILLED")
    assert agent.states("sick") == ["TASK_STARTING", "TASK_RUNNING", "TASK_RUNNING", "TASK_RUNNING", "TASK_KILLED"]
    assert [h for tid, h in agent.health if tid == "sick"] == [None, None, False, False, False]
    final = [m for tid, state, m in agent.updates if (tid, state) == ("sick", "TASK_KILLED")][0]
    assert final is not None and "health check failed 2 times in a row" in final
    assert guests.kills, "the task's process group was signalled"


def test_task_killing_is_sent_only_to_frameworks_that_opted_in(world: World) -> None:
    from vm_isolation.agent_protocol import Subscribed

    executor, agent, hv, guests = world
    executor.on_launch(task("plain", "sleep 60"))  # launched before the capability was known
    executor.on_subscribed(Subscribed(executor_info={}, agent_info={}, container_id="c",
                                      framework_info={"capabilities": [{"type": "TASK_KILLING_STATE"}]}))
    executor.on_launch(task("k", "sleep 60"))
    agent.wait_for("plain", "TASK_RUNNING")
    agent.wait_for("k", "TASK_RUNNING")
    executor.on_kill("k", 0.0)
    assert agent.states("k")[-1] == "TASK_KILLING", "sent before the kill begins"
    executor.on_kill("plain", 0.0)
    agent.wait_for("k", "TASK_KILLED")
    assert executor.wait(WAIT_S) == 0 and executor.done
    assert agent.states("k") == ["TASK_STARTING", "TASK_RUNNING", "TASK_KILLING", "TASK_KILLED"]
    assert "TASK_KILLING" not in agent.states("plain")
