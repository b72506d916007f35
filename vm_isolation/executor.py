"""The executor: Mesos events in, one TaskWorker per task, exit when the work is done.

Callbacks arrive on the binding's IO thread and must return at once: they only parse input
and hand work to threads (a worker per task, a short-lived thread for an immediate reply).

The executor exits (see :meth:`Executor.wait`):
  * ``[executor] linger_s`` after every task it was given reached a terminal state and the
    agent acknowledged those updates (or ``ack_timeout_s`` passed, like Mesos's own command
    executor) with no new LAUNCH meanwhile; at once when it serves as the agent's command
    executor (its tasks carry its own id, so none can follow). A LAUNCH that arrives once it is
    exiting gets TASK_DROPPED, which a framework may relaunch, or
  * after SHUTDOWN, once every task is killed and its guest gone, within the grace period, or
  * when the agent is lost for good (checkpointing off, or recovery timed out): every guest is
    destroyed first, and the exit status is non-zero.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

from .agent_protocol import Subscribed
from .config import MesosEnvironment, Settings
from .domainxml import Owner
from .errors import InvalidTask
from .journal import NO_JOURNAL, ResourceJournal
from .session import DESTROY_AFTER_SIGKILL_S, GuestFactory
from .statuses import Reason, TaskState
from .taskinfo import parse_task, task_id_of
from .taskworker import StatusSink, TaskWorker, WorkerContext

log = logging.getLogger(__name__)

SHUTDOWN_MARGIN_S = 1.0
"""Time kept back from the shutdown grace period for teardown after the kills."""


class AgentLink(StatusSink, Protocol):
    def wait_acknowledged(self, uuid: bytes, timeout_s: float) -> bool: ...


class Executor:
    """Implements the binding's event callbacks (see vm_isolation.mesos.ExecutorEvents)."""

    def __init__(self, settings: Settings, env: MesosEnvironment, launcher: GuestFactory,
                 *, mirror_stdout: Optional[Callable[[bytes], None]] = None,
                 mirror_stderr: Optional[Callable[[bytes], None]] = None,
                 journal: ResourceJournal = NO_JOURNAL, owner: Optional[Owner] = None,
                 host_problem: Optional[str] = None) -> None:
        self.settings = settings
        self.env = env
        self.launcher = launcher
        self._mirrors = (mirror_stdout, mirror_stderr)
        self._journal = journal
        self._owner = owner or Owner()
        self._host_problem = host_problem
        """Why this host cannot boot guests for us (hostaccess.describe): every task fails with it."""
        self.agent: Optional[AgentLink] = None
        self.container_id = ""
        self._task_killing = False
        """The framework takes TASK_KILLING (its TASK_KILLING_STATE capability)."""
        self.workers: dict[str, TaskWorker] = {}
        self._pending = 0
        self._lock = threading.RLock()
        self._done = threading.Event()
        self._drained = threading.Event()
        self._drained.set()
        self._exit_code = 0
        self._shutting_down = False
        self._closing = False
        """Exiting after the linger: LAUNCHes get TASK_DROPPED."""
        self._linger_generation = 0
        self._drain_deadline: Optional[float] = None
        """Set on SHUTDOWN / agent loss: the exit waits for outstanding ACKs until then only."""

    def attach(self, agent: AgentLink) -> None:
        self.agent = agent

    # --- event callbacks (IO thread: never block) ---------------------------------------
    def on_subscribed(self, info: Subscribed) -> None:
        self.container_id = info.container_id
        capabilities = info.framework_info.get("capabilities", [])
        self._task_killing = isinstance(capabilities, list) and any(
            isinstance(c, dict) and c.get("type") == "TASK_KILLING_STATE" for c in capabilities)
        log.info("subscribed to the agent (container %s)", self.container_id or "?")

    def on_launch(self, task: Mapping[str, Any]) -> None:
        task_id = task_id_of(task)
        with self._lock:
            if self._shutting_down:
                self._reply(task_id, TaskState.KILLED, Reason.EXECUTOR_TERMINATED,
                            "the executor is shutting down")
                return
            if self._closing:
                self._reply(task_id, TaskState.DROPPED, Reason.EXECUTOR_TERMINATED,
                            f"the executor was exiting after {self.settings.executor.linger_s:g} s without "
                            "tasks ([executor] linger_s); launch the task again")
                return
            self._linger_generation += 1  # a LAUNCH ends any linger in progress
            known = self.workers.get(task_id)
            if known is not None and known.finished.is_set():
                ended = known.terminal_state.value if known.terminal_state else "?"
                self._reply(task_id, TaskState.ERROR, Reason.TASK_INVALID,
                            f"task id {task_id!r} was already used by this executor (that task ended "
                            f"{ended}); launch with a new task id")
                return
            if known is not None:
                # No status for it: the agent and the framework would take it for the running task's.
                log.warning("ignoring a second LAUNCH of task %r, which is still running", task_id)
                return
            if self._host_problem:
                self._reply(task_id, TaskState.FAILED, Reason.LAUNCH_FAILED, f"host not ready: {self._host_problem}")
                return
            try:
                spec = parse_task(task, self.settings)
            except InvalidTask as exc:
                log.warning("task %r is invalid: %s", task_id, exc)
                self._reply(task_id, TaskState.ERROR, Reason.TASK_INVALID, f"invalid task: {exc}")
                return
            assert self.agent is not None
            ctx = WorkerContext(self.settings, self.env, self.launcher, self.agent, self.container_id,
                                *self._mirrors, journal=self._journal, owner=self._owner,
                                task_killing=self._task_killing)
            worker = TaskWorker(spec, ctx, on_done=self._worker_done)
            self.workers[task_id] = worker
            self._add_pending()
        worker.start()

    def on_launch_group(self, tasks: Sequence[Mapping[str, Any]]) -> None:
        for task in tasks:
            if task_id_of(task) in self.workers:
                log.warning("ignoring task %r of a LAUNCH_GROUP: that id is already known", task_id_of(task))
                continue
            self._reply(task_id_of(task), TaskState.ERROR, Reason.TASK_INVALID,
                        "vm-isolation-executor runs one task per guest and does not accept task "
                        "groups: launch the tasks one by one (LAUNCH, not LAUNCH_GROUP)")

    def on_kill(self, task_id: str, grace_s: Optional[float]) -> None:
        worker = self.workers.get(task_id)
        if worker is None:
            log.warning("KILL for unknown task %r: nothing to do", task_id)
            return
        worker.kill(grace_s, "killed by the framework")

    def on_shutdown(self) -> None:
        with self._lock:
            self._shutting_down = True
            workers = list(self.workers.values())
        # The agent SIGKILLs the executor (and nothing else: the guests are libvirtd's) when the
        # grace period ends, so the whole ladder and the teardown must fit before that: of the
        # default 5 s, SIGTERM gets 2 s, SIGKILL 1 s, then the domain is destroyed.
        budget = max(0.0, self.env.shutdown_grace_period_s - SHUTDOWN_MARGIN_S)
        term_s = min(budget / 2, self.settings.executor.kill_grace_s)
        sigkill_s = min(budget / 4, DESTROY_AFTER_SIGKILL_S)
        log.info("SHUTDOWN: killing %d task(s): SIGTERM, SIGKILL after %.1f s, destroy %.1f s later",
                 len(workers), term_s, sigkill_s)
        for worker in workers:
            worker.kill(term_s, "the executor was shut down", sigkill_wait_s=sigkill_s)
        threading.Thread(target=self._finish_after_shutdown, daemon=True, name="shutdown").start()

    def on_message(self, data: bytes) -> None:
        log.info("framework message of %d bytes ignored (no use for it)", len(data))

    def on_error(self, message: str) -> None:
        log.error("agent reported an error: %s", message)

    def on_agent_lost(self, reason: str) -> None:
        log.error("lost the agent: %s; destroying every guest and exiting", reason)
        with self._lock:
            self._shutting_down = True
            self._exit_code = 1
            workers = list(self.workers.values())
        for worker in workers:
            worker.kill(0.0, f"the executor lost its agent ({reason})")
        threading.Thread(target=self._finish_after_shutdown, daemon=True, name="agent-lost").start()

    # --- completion ----------------------------------------------------------------------
    # A task counts as pending from its LAUNCH until the agent acknowledged its terminal update
    # (or ack_timeout_s passed); the executor is done when none is pending.

    def _reply(self, task_id: str, state: TaskState, reason: Reason, message: str) -> None:
        """Send a terminal status for a task that gets no worker, then wait for its ACK."""
        agent = self.agent
        assert agent is not None
        with self._lock:
            self._add_pending()

        def send() -> None:
            uuid = agent.send_update(task_id, state.value, reason=reason.value, message=message)
            agent.wait_acknowledged(uuid, self.settings.executor.ack_timeout_s)
            self._settled()

        threading.Thread(target=send, daemon=True, name="reply").start()

    def _worker_done(self, worker: TaskWorker) -> None:
        assert self.agent is not None and worker.terminal_uuid is not None
        if not self.agent.wait_acknowledged(worker.terminal_uuid, self.settings.executor.ack_timeout_s):
            log.warning("task %s: no ACKNOWLEDGED for its terminal update within %.0f s",
                        worker.spec.task_id, self.settings.executor.ack_timeout_s)
        self._settled()

    def _add_pending(self) -> None:
        self._pending += 1
        self._drained.clear()

    def _settled(self) -> None:
        with self._lock:
            self._pending -= 1
            if self._pending:
                return
            self._drained.set()
            if self._shutting_down or self._closing:
                return
            linger = self.settings.executor.linger_s
            if linger <= 0 or all(task_id == self.env.executor_id for task_id in self.workers):
                self._close(self._linger_generation)
                return
            log.info("no task left: exiting in %.0f s unless another LAUNCH arrives ([executor] linger_s)", linger)
            timer = threading.Timer(linger, self._close, args=(self._linger_generation,))
            timer.daemon = True
            timer.start()

    def _close(self, generation: int) -> None:
        """The linger that began at ``generation`` is over: exit, unless a LAUNCH came meanwhile."""
        with self._lock:
            if generation != self._linger_generation or self._pending or self._shutting_down:
                return
            self._closing = True
            self._done.set()

    def _finish_after_shutdown(self) -> None:
        deadline = time.monotonic() + max(self.env.shutdown_grace_period_s - 0.2, 0.5)
        self._drain_deadline = deadline  # ACKs are waited for only while the grace period lasts
        for worker in list(self.workers.values()):
            worker.join(max(0.0, deadline - time.monotonic()))
            if not worker.finished.is_set():
                log.error("task %s did not finish within the shutdown grace period",
                          worker.spec.task_id)
        self._done.set()

    @property
    def done(self) -> bool:
        """True once the executor decided to exit."""
        return self._done.is_set()

    def wait(self, timeout_s: Optional[float] = None) -> int:
        """Block until the executor's work is over; the process exit status.

        Replies sent while exiting (TASK_DROPPED for a LAUNCH that came too late) are given
        ``ack_timeout_s`` to be acknowledged first."""
        self._done.wait(timeout_s)
        deadline = self._drain_deadline or time.monotonic() + self.settings.executor.ack_timeout_s
        self._drained.wait(max(0.0, deadline - time.monotonic()))
        return self._exit_code
