"""The pymesos adapter, driven through the real pymesos against the local agent over HTTP.

Each adapter under test runs as a real executor: a child process launched by
:class:`~vm_isolation.localagent.LocalAgent` with the agent's MESOS_* environment, running
:func:`child_main` below. The child logs every callback as a JSON line in its sandbox;
tests wait on that log and on the agent's protocol traces, always with a deadline.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, TypeVar

import pytest

from vm_isolation.config import MesosEnvironment, mesos_environment
from vm_isolation.localagent import ExecutorHandle, LocalAgent
from vm_isolation.localagent.process import EXECUTOR_REREGISTER_TIMEOUT_S
from vm_isolation.mesos import AgentConnection, Subscribed
from vm_isolation.waiting import Deadline, poll_until

REPO = Path(__file__).resolve().parents[2]
EVENTS_FILE = "adapter-events.jsonl"
TRIGGER_FILE = "send-finished"
WAIT_S = 20.0
T = TypeVar("T")

pytestmark = pytest.mark.timeout(90)


# --- the child executor ---------------------------------------------------------------------


class RecordingExecutor:
    """ExecutorEvents for the child: logs each callback and plays a minimal, honest executor.

    LAUNCH -> TASK_RUNNING; KILL -> TASK_KILLED; SHUTDOWN -> a teardown that takes
    ``ADAPTER_TEST_TEARDOWN_S`` (standing in for destroying VMs), TASK_KILLED, wait for the
    ACK, exit 0; agent lost -> exit 0 at once. A file TRIGGER_FILE in the sandbox makes it
    send TASK_FINISHED for every task (to send while the agent is unreachable).
    """

    def __init__(self, env: MesosEnvironment) -> None:
        self.env = env
        self.log_path = env.directory / EVENTS_FILE
        self.teardown_s = float(os.environ.get("ADAPTER_TEST_TEARDOWN_S", "0"))
        self.connection = AgentConnection(env, self)
        self.live: list[str] = []
        self.done = threading.Event()
        self._log_lock = threading.Lock()

    def record(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "time": time.time(), "pid": os.getpid(), **fields})
        with self._log_lock, open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def on_subscribed(self, info: Subscribed) -> None:
        self.record("subscribed", container_id=info.container_id, agent_id=info.agent_id)

    def on_launch(self, task: Mapping[str, Any]) -> None:
        task_id = task["task_id"]["value"]
        self.live.append(task_id)
        self.record("launch", task_id=task_id)
        self.connection.send_update(task_id, "TASK_RUNNING")

    def on_launch_group(self, tasks: Sequence[Mapping[str, Any]]) -> None:
        self.record("launch_group", task_ids=[t["task_id"]["value"] for t in tasks])

    def on_kill(self, task_id: str, grace_s: Optional[float]) -> None:
        self.record("kill", task_id=task_id, grace_s=grace_s)
        self.live.remove(task_id)
        self.connection.send_update(task_id, "TASK_KILLED")

    def on_shutdown(self) -> None:
        self.record("shutdown", grace_period_s=self.env.shutdown_grace_period_s)
        threading.Thread(target=self._teardown, name="teardown").start()

    def on_message(self, data: bytes) -> None:
        self.record("message", data=data.decode("utf-8", "replace"))

    def on_error(self, message: str) -> None:
        self.record("error", message=message)

    def on_agent_lost(self, reason: str) -> None:
        self.record("agent_lost", reason=reason)
        self.done.set()

    def _teardown(self) -> None:
        self.done.wait(self.teardown_s)  # "destroying the VMs"
        uuids = [self.connection.send_update(t, "TASK_KILLED") for t in self.live]
        acked = all(self.connection.wait_acknowledged(u, WAIT_S) for u in uuids)
        self.record("teardown_done", acked=acked)
        self.done.set()

    def watch_trigger(self) -> None:
        trigger = self.env.directory / TRIGGER_FILE
        while not self.done.is_set():
            if trigger.exists():
                trigger.unlink()
                for task_id in self.live:
                    self.connection.send_update(task_id, "TASK_FINISHED")
                self.record("sent_finished", task_ids=self.live)
                self.live.clear()
            self.done.wait(0.05)


def child_main() -> None:
    """Entry point of the child executor process."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
    executor = RecordingExecutor(mesos_environment())
    executor.record("started", sigint_is_default=signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    executor.connection.start()
    threading.Thread(target=executor.watch_trigger, name="trigger", daemon=True).start()
    executor.done.wait(60.0)
    executor.connection.stop()
    executor.connection.join(10.0)
    executor.record("exiting")


CHILD_COMMAND = {
    "shell": False,
    "value": sys.executable,
    "arguments": [sys.executable, "-c", "from tests.unit.test_mesos_adapter import child_main; child_main()"],
}


# --- helpers --------------------------------------------------------------------------------


def wait_for(probe: Callable[[], Optional[T]], what: str, timeout_s: float = WAIT_S) -> T:
    return poll_until(probe, Deadline.after(timeout_s), interval_s=0.02, what=what)


def child_events(sandbox: Path) -> list[dict[str, Any]]:
    path = Path(sandbox) / EVENTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_event(sandbox: Path, name: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
    return wait_for(lambda: next((e for e in child_events(sandbox) if e["event"] == name), None),
                    f"the child executor to log {name!r}", timeout_s)


def subscribes(agent: LocalAgent, executor_id: str, status: Optional[int] = None) -> list[dict[str, Any]]:
    """The SUBSCRIBE calls the agent received from the executor (answered ``status``), in order."""
    return [c for c in agent.calls_received(executor_id)
            if c["type"] == "SUBSCRIBE" and status in (None, c["status"])]


def at_least(count: int, items: list[T]) -> Optional[list[T]]:
    """``items`` once there are ``count`` of them (a probe for wait_for)."""
    return items if len(items) >= count else None


def task_info(task_id: str) -> dict[str, Any]:
    return {
        "name": task_id,
        "task_id": {"value": task_id},
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}}],
        "command": {"value": "true", "shell": True},
    }


def child_command(**environment: str) -> dict[str, Any]:
    """CommandInfo running child_main; its ``environment`` wins over the agent's variables."""
    variables = [{"name": k, "value": v} for k, v in environment.items()]
    return {**CHILD_COMMAND, "environment": {"variables": variables}}


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[LocalAgent]:
    with LocalAgent(tmp_path / "agent", host="127.0.0.1", port=0, checkpoint=False) as running:
        yield running


@pytest.fixture
def checkpointing_agent(tmp_path: Path) -> Iterator[LocalAgent]:
    with LocalAgent(tmp_path / "agent", host="127.0.0.1", port=0, checkpoint=True) as running:
        yield running


def launch(agent: LocalAgent, executor_id: str, task_id: str, **environment: str) -> ExecutorHandle:
    """Start the child executor, give it a task, and wait until it reports TASK_RUNNING."""
    handle = agent.launch_executor(executor_id, child_command(**environment),
                                   extra_env={"PYTHONPATH": str(REPO)})
    agent.launch_task(executor_id, task_info(task_id))
    agent.wait_for_state(task_id, ["TASK_RUNNING"], WAIT_S)
    return handle


# --- tests ----------------------------------------------------------------------------------


def test_without_checkpointing_a_dropped_stream_means_agent_lost_and_no_resubscribe(agent: LocalAgent) -> None:
    """MESOS_CHECKPOINT=0: the stream closing calls on_agent_lost once, and nothing re-subscribes."""
    handle = launch(agent, "e-nockpt", "t-nockpt")
    agent.drop_stream("e-nockpt")
    lost = wait_for_event(handle.sandbox, "agent_lost")
    assert "MESOS_CHECKPOINT=0" in lost["reason"]
    assert handle.wait(WAIT_S) == 0
    assert [e["event"] for e in child_events(handle.sandbox)].count("agent_lost") == 1
    assert len(subscribes(agent, "e-nockpt")) == 1


def test_with_checkpointing_the_executor_resubscribes_with_what_is_unacknowledged(
    checkpointing_agent: LocalAgent,
) -> None:
    """checkpoint=1: after a drop, SUBSCRIBE comes within the backoff bound, carrying the unacked task and update."""
    agent = checkpointing_agent
    agent.ack_updates(False)
    handle = launch(agent, "e-ckpt", "t-ckpt")
    running = agent.updates("t-ckpt")[-1]
    dropped_at = time.monotonic()
    assert agent.drop_stream("e-ckpt")
    second = wait_for(lambda: at_least(2, subscribes(agent, "e-ckpt")), "a second SUBSCRIBE")[1]
    assert second["received_at"] - dropped_at <= EXECUTOR_REREGISTER_TIMEOUT_S  # MESOS_SUBSCRIPTION_BACKOFF_MAX
    subscribe = second["body"]["subscribe"]
    assert [t["task_id"]["value"] for t in subscribe["unacknowledged_tasks"]] == ["t-ckpt"]
    assert [base64.b64decode(u["status"]["uuid"]) for u in subscribe["unacknowledged_updates"]] == [running.uuid]
    assert second["status"] == 200
    wait_for(lambda: at_least(2, [e for e in child_events(handle.sandbox) if e["event"] == "subscribed"]),
             "the child to see SUBSCRIBED again")
    agent.ack_updates(True)
    agent.shutdown_executor("e-ckpt")
    assert handle.wait(WAIT_S) == 0


def test_while_the_agent_recovers_resubscription_backs_off_within_the_bound(checkpointing_agent: LocalAgent) -> None:
    """Agent answering 503: attempts are spaced (not a tight loop) and resume within MESOS_SUBSCRIPTION_BACKOFF_MAX."""
    agent = checkpointing_agent
    handle = launch(agent, "e-503", "t-503")
    agent.set_accepting(False, how="recovering")
    agent.drop_stream("e-503")
    refused = wait_for(lambda: at_least(4, subscribes(agent, "e-503", status=503)), "four SUBSCRIBEs answered 503")
    gaps = [b["received_at"] - a["received_at"] for a, b in pairwise(refused)]
    assert max(gaps) <= EXECUTOR_REREGISTER_TIMEOUT_S + 0.5, gaps
    assert sum(gaps) / len(gaps) > 0.02, gaps  # pymesos retries a 503 at once, in a tight loop
    agent.set_accepting(True)
    recovered_at = time.monotonic()
    accepted = wait_for(lambda: at_least(2, subscribes(agent, "e-503", status=200)), "a SUBSCRIBE after recovery")[1]
    assert accepted["received_at"] - recovered_at <= EXECUTOR_REREGISTER_TIMEOUT_S + 0.5
    agent.shutdown_executor("e-503")
    assert handle.wait(WAIT_S) == 0


def test_a_restarting_agent_answering_404_is_retried_not_lost(checkpointing_agent: LocalAgent) -> None:
    """A real agent just restarted answers SUBSCRIBE 404 until its executor API is routed:
    pymesos would crash its IO thread (agent lost, guests destroyed); we retry and re-subscribe."""
    agent = checkpointing_agent
    handle = launch(agent, "e-404", "t-404")
    agent.set_accepting(False, how="starting")
    agent.drop_stream("e-404")
    wait_for(lambda: at_least(2, subscribes(agent, "e-404", status=404)), "two SUBSCRIBEs answered 404")
    agent.set_accepting(True)
    wait_for(lambda: at_least(2, subscribes(agent, "e-404", status=200)), "a SUBSCRIBE once the agent is up")
    agent.shutdown_executor("e-404")
    assert handle.wait(WAIT_S) == 0


def test_with_checkpointing_the_agent_is_lost_after_the_recovery_timeout(checkpointing_agent: LocalAgent) -> None:
    """An agent that stays away longer than MESOS_RECOVERY_TIMEOUT means on_agent_lost, and the executor exits."""
    agent = checkpointing_agent
    handle = launch(agent, "e-gone", "t-gone", MESOS_RECOVERY_TIMEOUT="1secs")
    agent.set_accepting(False)
    agent.drop_stream("e-gone")
    lost = wait_for_event(handle.sandbox, "agent_lost")
    assert "MESOS_RECOVERY_TIMEOUT" in lost["reason"]
    assert handle.wait(WAIT_S) == 0


def test_an_update_sent_while_the_agent_refuses_connections_arrives_after_it_returns(
    checkpointing_agent: LocalAgent,
) -> None:
    """send_update while the agent is away does not raise or get lost: it is delivered on re-subscription."""
    agent = checkpointing_agent
    handle = launch(agent, "e-away", "t-away")
    agent.set_accepting(False)
    agent.drop_stream("e-away")
    (Path(handle.sandbox) / TRIGGER_FILE).write_text("")
    wait_for_event(handle.sandbox, "sent_finished")
    assert "TASK_FINISHED" not in [u.state for u in agent.updates("t-away")]
    assert subscribes(agent, "e-away")[-1]["body"]["subscribe"]["unacknowledged_updates"] == []
    agent.set_accepting(True)
    agent.wait_for_state("t-away", ["TASK_FINISHED"], WAIT_S)
    assert [u.state for u in agent.updates("t-away")].count("TASK_FINISHED") == 1
    agent.shutdown_executor("e-away")
    assert handle.wait(WAIT_S) == 0


def test_shutdown_reaches_the_executor_and_nothing_sigkills_its_process_group(agent: LocalAgent) -> None:
    """SHUTDOWN: the child outlives the grace period (pymesos would SIGKILL it) and exits by itself."""
    # The executor is told 0.2 s (CommandInfo.environment wins, as in Mesos), where pymesos
    # would SIGKILL its process group; the agent itself only destroys it after 5 s.
    handle = launch(agent, "e-shut", "t-shut", MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD="200ms",
                    ADAPTER_TEST_TEARDOWN_S="1.0")
    agent.shutdown_executor("e-shut")
    shutdown = wait_for_event(handle.sandbox, "shutdown")
    assert handle.wait(WAIT_S) == 0
    done = wait_for_event(handle.sandbox, "teardown_done")
    assert done["acked"] is True
    assert shutdown["grace_period_s"] == pytest.approx(0.2)
    assert done["time"] - shutdown["time"] > shutdown["grace_period_s"] + 0.5
    assert agent.updates("t-shut")[-1].state == "TASK_KILLED"


def test_kill_carries_the_kill_policy_grace_period(agent: LocalAgent) -> None:
    """KILL's kill_policy.grace_period reaches on_kill in seconds, and None when there is none."""
    handle = launch(agent, "e-kill", "t-kill-1")
    agent.launch_task("e-kill", task_info("t-kill-2"))
    agent.wait_for_state("t-kill-2", ["TASK_RUNNING"], WAIT_S)
    agent.kill_task("e-kill", "t-kill-1", grace_period_s=1.5)
    agent.kill_task("e-kill", "t-kill-2")
    agent.wait_for_terminal("t-kill-1", WAIT_S)
    agent.wait_for_terminal("t-kill-2", WAIT_S)
    kills = {e["task_id"]: e["grace_s"] for e in child_events(handle.sandbox) if e["event"] == "kill"}
    assert kills == {"t-kill-1": 1.5, "t-kill-2": None}
    agent.shutdown_executor("e-kill")
    assert handle.wait(WAIT_S) == 0


def test_importing_the_adapter_leaves_sigint_and_logging_to_us() -> None:
    """After `import vm_isolation.mesos`, SIGINT has its previous handler and pymesos logs nowhere itself."""
    code = (
        "import logging, signal\n"
        "def mine(signum, frame): pass\n"
        "signal.signal(signal.SIGINT, mine)\n"
        "import vm_isolation.mesos, pymesos.process\n"
        "assert signal.getsignal(signal.SIGINT) is mine, signal.getsignal(signal.SIGINT)\n"
        "assert logging.getLogger('pymesos').handlers == []\n"
        "assert logging.getLogger('pymesos').level == logging.NOTSET\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr


def test_pymesos_routine_reconnection_chatter_is_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    """pymesos's per-attempt 'Remote closed' ERROR and 'connect error' WARNING are hidden at INFO; aborts are not."""
    caplog.set_level(logging.INFO)
    process_logger = logging.getLogger("pymesos.process")
    process_logger.error("Remote %s closed", ("127.0.0.1", 5051))
    process_logger.warning("connect to %s error: %s, sleep %ds and try again, deadline: %s", "a", "refused", 0, "d")
    process_logger.error("Thread abort:")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("ERROR", "Thread abort:")]


def test_in_the_executor_process_sigint_is_the_default_handler(agent: LocalAgent) -> None:
    """A real executor child finds Python's own SIGINT handler in place, not pymesos's."""
    handle = launch(agent, "e-sigint", "t-sigint")
    assert wait_for_event(handle.sandbox, "started")["sigint_is_default"] is True
    agent.shutdown_executor("e-sigint")
    assert handle.wait(WAIT_S) == 0


class Recorder:
    """In-process ExecutorEvents that only records what it is told."""

    def __init__(self) -> None:
        self.lost: list[str] = []
        self.lost_event = threading.Event()
        self.calls: list[str] = []

    def on_subscribed(self, info: Subscribed) -> None:
        self.calls.append("subscribed")

    def on_launch(self, task: Mapping[str, Any]) -> None:
        self.calls.append("launch")

    def on_launch_group(self, tasks: Sequence[Mapping[str, Any]]) -> None:
        self.calls.append("launch_group")

    def on_kill(self, task_id: str, grace_s: Optional[float]) -> None:
        self.calls.append("kill")

    def on_shutdown(self) -> None:
        self.calls.append("shutdown")

    def on_message(self, data: bytes) -> None:
        self.calls.append("message")

    def on_error(self, message: str) -> None:
        self.calls.append("error")

    def on_agent_lost(self, reason: str) -> None:
        self.lost.append(reason)
        self.lost_event.set()


def environment(endpoint: str, tmp_path: Path, *, checkpoint: bool = True) -> MesosEnvironment:
    """A MesosEnvironment for an executor the agent never launched."""
    return MesosEnvironment(
        framework_id="no-such-framework", executor_id="nobody", agent_endpoint=endpoint,
        directory=tmp_path, checkpoint=checkpoint, shutdown_grace_period_s=5.0,
        subscription_backoff_max_s=0.5, recovery_timeout_s=30.0,
    )


def test_a_crash_of_the_io_thread_becomes_agent_lost_not_a_keyboard_interrupt(
    agent: LocalAgent, tmp_path: Path,
) -> None:
    """The agent refusing SUBSCRIBE kills pymesos's IO thread: on_agent_lost says why; main is not interrupted."""
    events = Recorder()
    connection = AgentConnection(environment(agent.endpoint, tmp_path), events)
    connection.start()
    assert events.lost_event.wait(WAIT_S)
    connection.join(WAIT_S)
    assert not connection.running
    assert len(events.lost) == 1 and "HTTP 4" in events.lost[0], events.lost
    uuid = connection.send_update("t", "TASK_RUNNING")  # does not raise, even now
    assert not connection.wait_acknowledged(uuid, 0.0)
    connection.stop()


def test_our_driver_sets_every_attribute_pymesos_own_constructor_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Skipping MesosExecutorDriver.__init__ (it reads os.environ) leaves no attribute pymesos uses unset."""
    from pymesos import MesosExecutorDriver  # only vm_isolation/ is limited to one pymesos importer

    for name, value in {"MESOS_AGENT_ENDPOINT": "127.0.0.1:1", "MESOS_FRAMEWORK_ID": "f",
                        "MESOS_EXECUTOR_ID": "e", "MESOS_CHECKPOINT": "0"}.items():
        monkeypatch.setenv(name, value)
    upstream = MesosExecutorDriver(executor=None)
    assert upstream.checkpoint is True  # the bug this adapter exists for: bool("0")
    ours = AgentConnection(environment("127.0.0.1:1", tmp_path, checkpoint=False), Recorder())._driver
    assert set(vars(upstream)) <= set(vars(ours))
    assert ours.checkpoint is False
