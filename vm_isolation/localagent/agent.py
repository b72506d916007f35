"""``LocalAgent``: the public face of the local Mesos agent stand-in, and ``ExecutorHandle``.

One agent, one framework, any number of executors, served on one HTTP port. Everything is
in-process: background threads serve HTTP, pump event streams, watch executor processes and
fire timers. ``stop()`` (or leaving the ``with`` block) ends all of it and kills every
executor process tree still running.
"""

from __future__ import annotations

import copy
import logging
import socket
import uuid
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Iterable, Literal, Mapping, Optional, Sequence, Union

from .calls import Phase
from .core import AgentConfig, AgentCore
from .events import Event
from .lifecycle import Lifecycle
from .records import TERMINAL_STATES, StatusRecord, state_set
from .runs import ExecutorRun
from .server import AgentServer

log = logging.getLogger(__name__)

Refusal = Literal["refuse", "starting", "recovering", "reconnecting"]
_NO_ENV: Mapping[str, str] = MappingProxyType({})


class ExecutorHandle:
    """One launched executor process: its ids, sandbox and exit status."""

    def __init__(self, run: ExecutorRun) -> None:
        self._run = run

    @property
    def executor_id(self) -> str:
        return self._run.executor_id

    @property
    def container_id(self) -> str:
        return self._run.container_id

    @property
    def sandbox(self) -> Path:
        return self._run.sandbox

    @property
    def pid(self) -> int:
        assert self._run.process is not None
        return self._run.process.pid

    @property
    def returncode(self) -> Optional[int]:
        """Exit status once the agent has handled the exit (negative signal number if killed)."""
        return self._run.returncode if self._run.terminated.is_set() else None

    def wait(self, timeout_s: float) -> int:
        """Wait until the process exited *and* the agent sent its terminal updates; raise TimeoutError."""
        if not self._run.terminated.wait(timeout_s):
            raise TimeoutError(f"executor {self.executor_id} (pid {self.pid}) still running after {timeout_s:g} s")
        assert self._run.returncode is not None
        return self._run.returncode


class LocalAgent:
    """A protocol-faithful stand-in for the executor-facing side of a Mesos agent.

    See the package docstring for what is faithful and what is simplified. Usable as a
    context manager (``start`` on entry, ``stop`` on exit).
    """

    def __init__(self, work_dir: Path, *, host: str = "127.0.0.1", port: int = 0, agent_id: Optional[str] = None,
                 checkpoint: bool = False, registration_timeout_s: float = 60.0, heartbeat_interval_s: float = 1800.0,
                 framework_id: Optional[str] = None, framework_user: str = "root",
                 framework_name: str = "vm-isolation-localagent", hostname: Optional[str] = None) -> None:
        config = AgentConfig(
            work_dir=Path(work_dir), agent_id=agent_id or f"{uuid.uuid4()}-S0",
            framework_id=framework_id or f"{uuid.uuid4()}-0000", framework_user=framework_user,
            framework_name=framework_name, hostname=hostname or socket.gethostname(), checkpoint=checkpoint,
            registration_timeout_s=registration_timeout_s, heartbeat_interval_s=heartbeat_interval_s,
        )
        self._core = AgentCore(config)
        self._lifecycle = Lifecycle(self._core)
        self._server = AgentServer(self._core, host, port)
        self._started = False

    # --- identity -----------------------------------------------------------------------

    @property
    def agent_id(self) -> str:
        return self._core.config.agent_id

    @property
    def framework_id(self) -> str:
        return self._core.config.framework_id

    @property
    def work_dir(self) -> Path:
        return self._core.config.work_dir

    @property
    def endpoint(self) -> str:
        """``ip:port`` the agent listens on (what executors get as MESOS_AGENT_ENDPOINT)."""
        if not self._started:
            raise RuntimeError("LocalAgent.endpoint is known only after start()")
        return f"{self._server.host}:{self._server.port}"

    # --- life ---------------------------------------------------------------------------

    def start(self) -> LocalAgent:
        """Create the work directory and serve in background threads."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._core.port = self._server.open()
        self._started = True
        log.info("local agent %s listening on %s (framework %s)", self.agent_id, self.endpoint, self.framework_id)
        return self

    def stop(self) -> None:
        """Stop serving, close every stream and kill every executor process tree still running."""
        self._server.close()
        self._lifecycle.stop()
        self._server.cut_all()

    def __enter__(self) -> LocalAgent:
        return self.start()

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.stop()

    # --- executors and tasks ------------------------------------------------------------

    def launch_executor(self, executor_id: str, command: Mapping[str, Any], *, extra_env: Mapping[str, str] = _NO_ENV,
                        files: Sequence[Path] = (), shutdown_grace_period_s: float = 5.0,
                        executor_info_extra: Optional[Mapping[str, Any]] = None) -> ExecutorHandle:
        """Create the sandbox and start ``command`` (a CommandInfo) as the executor.

        ``extra_env`` plays ``--executor_environment_variables`` (the agent's MESOS_* win over
        it; ``command["environment"]`` wins over both). ``files`` are copied into the sandbox.
        ``shutdown_grace_period_s`` plays ``--executor_shutdown_grace_period``;
        ``executor_info_extra["shutdown_grace_period"]`` overrides it, as in Mesos.
        Raises :class:`~.process.LaunchError` if the process cannot be started.
        """
        if not self._started:
            raise RuntimeError("start() the LocalAgent before launching executors")
        run = self._lifecycle.launch_executor(
            executor_id, command, endpoint=self.endpoint, extra_env=extra_env, files=files,
            shutdown_grace_period_s=shutdown_grace_period_s, executor_info_extra=executor_info_extra)
        return ExecutorHandle(run)

    def launch_task(self, executor_id: str, task_info: Mapping[str, Any]) -> None:
        """Give a TaskInfo to the executor: LAUNCH now if subscribed, else queued until SUBSCRIBED."""
        self._lifecycle.launch_tasks(executor_id, [task_info], as_group=False)

    def launch_task_group(self, executor_id: str, tasks: Sequence[Mapping[str, Any]]) -> None:
        """Like :meth:`launch_task`, as one LAUNCH_GROUP."""
        self._lifecycle.launch_tasks(executor_id, list(tasks), as_group=True)

    def kill_task(self, executor_id: str, task_id: str, grace_period_s: Optional[float] = None) -> None:
        """Send KILL (with ``kill_policy.grace_period`` if given), or kill a still-queued task here."""
        self._lifecycle.kill_task(executor_id, task_id, grace_period_s)

    def inject_unchecked(self, executor_id: str, event: Mapping[str, Any]) -> bool:
        """Fault injection: put ``event`` on the executor's stream as is, skipping every check the
        agent makes first (a second LAUNCH of a task id it runs, a KILL for a task it does not
        know). A real agent never does this; tests use it to see the executor cope with a faulty
        one. A LAUNCH's TaskInfo gets the agent id and ExecutorInfo filled in, as the agent would.
        False if the executor has no open stream."""
        sent = copy.deepcopy(dict(event))
        with self._core.lock:
            run = self._core.runs.get(executor_id)
            if run is None:
                raise ValueError(f"no executor {executor_id!r} was launched on this agent")
            task = sent.get("launch", {}).get("task")
            if isinstance(task, dict):
                task["agent_id"] = {"value": self._core.config.agent_id}
                task.setdefault("executor", copy.deepcopy(run.info))
            return self._core.send(run, sent)

    def shutdown_executor(self, executor_id: str) -> None:
        """SHUTDOWN now, SIGKILL to the executor's process tree after its grace period."""
        with self._core.lock:
            run = self._core.runs.get(executor_id)
            if run is None:
                raise ValueError(f"no executor {executor_id!r} was launched on this agent")
            self._core.shutdown(run)

    def send_message(self, executor_id: str, data: bytes) -> None:
        """A framework message (MESSAGE event); dropped unless the executor is subscribed."""
        self._lifecycle.send_message(executor_id, data)

    # --- status updates -----------------------------------------------------------------

    def updates(self, task_id: str) -> list[StatusRecord]:
        """Every accepted update of the task, in order, agent-generated ones included."""
        return self._core.statuses.updates(task_id)

    def wait_for_state(self, task_id: str, states: Union[str, Iterable[str]], timeout_s: float) -> StatusRecord:
        """The first update of the task in one of ``states``; TimeoutError lists its history."""
        wanted = state_set(states)
        return self._core.statuses.wait_for(task_id, lambda r: r.state in wanted, "/".join(sorted(wanted)), timeout_s)

    def wait_for_terminal(self, task_id: str, timeout_s: float) -> StatusRecord:
        """The first terminal update of the task; TimeoutError lists its history."""
        return self._core.statuses.wait_for(task_id, lambda r: r.state in TERMINAL_STATES, "a terminal state",
                                            timeout_s)

    def ack_updates(self, enabled: bool) -> None:
        """Turn ACKNOWLEDGED events on or off (off: executors must keep their updates)."""
        with self._core.lock:
            self._core.acks_enabled = enabled

    # --- protocol traces ----------------------------------------------------------------

    def events_sent(self, executor_id: str) -> list[Event]:
        """Every event queued on a stream of the executor, in order."""
        return self._core.traces.events_sent(executor_id)

    def events_dropped(self, executor_id: str) -> list[Event]:
        """Events the agent wanted to send while the executor had no open stream."""
        return self._core.traces.events_dropped(executor_id)

    def calls_received(self, executor_id: Optional[str] = None) -> list[dict[str, Any]]:
        """Every call (``body``, ``type``, ``status``, ``response``, ...) naming the executor; all if None."""
        return self._core.traces.calls(executor_id)

    def messages_received(self, executor_id: str) -> list[bytes]:
        """Data of every MESSAGE call the executor made."""
        return self._core.traces.messages(executor_id)

    # --- simulated trouble --------------------------------------------------------------

    def drop_stream(self, executor_id: str, *, abrupt: bool = False) -> bool:
        """Close the executor's SUBSCRIBE stream (cut it mid-body if ``abrupt``); False if none was open."""
        return self._lifecycle.drop_stream(executor_id, abrupt=abrupt)

    def set_accepting(self, accepting: bool, *, how: Refusal = "refuse") -> None:
        """Stop or resume answering executors. Open streams are left alone (see drop_stream).

        ``how``: ``refuse`` closes the listener (connection refused) and cuts idle
        connections; ``starting`` answers every request 404, as a just-restarted agent does
        before its executor API is routed; ``recovering`` answers every request 503 "Agent has not finished
        recovery"; ``reconnecting`` does so only for non-SUBSCRIBE, non-HEARTBEAT calls, like
        an agent waiting for its executors to re-subscribe.
        """
        if accepting:
            with self._core.lock:
                if self._core.stopping:
                    return
                self._core.phase = Phase.RUNNING
            self._server.open()
        elif how == "refuse":
            self._server.close()
        else:
            with self._core.lock:
                self._core.phase = {"starting": Phase.STARTING, "recovering": Phase.RECOVERING}.get(
                    how, Phase.RECONNECTING)

    def pause(self, seconds: float) -> None:
        """Imitate an agent restart: cut every stream and connection, refuse connections for
        ``seconds``, then accept again. Returns at once."""
        self._server.close()
        with self._core.lock:
            executor_ids = list(self._core.runs)
        for executor_id in executor_ids:
            self._lifecycle.drop_stream(executor_id, abrupt=True)
        self._server.cut_all()
        self._core.schedule(seconds, lambda: self.set_accepting(True))
