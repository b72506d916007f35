"""The agent's executor-facing state machine: calls in, events out (src/slave/slave.cpp, http.cpp).

:class:`AgentCore` owns every executor run, the status log and the traces, behind one
re-entrant lock (the real agent is a single libprocess actor, so its handlers never
interleave; the lock gives the same guarantee). Events are only *queued* on streams while
the lock is held; the connections' own threads write them.

This module covers what an executor can cause: SUBSCRIBE (with the re-subscription rules),
UPDATE (validation already done in :mod:`.calls`; agent-id check, dedupe, ACKNOWLEDGED),
MESSAGE, plus the shared helpers for sending events and generating agent status updates.
Shutdown and destroy are here too (an executor can cause them). What only the operator or
the process can cause (launch, kill, exit, registration timeout) is in :mod:`.lifecycle`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

from . import events
from .calls import ExecutorCall, Phase, Reply, check_call
from .events import Event
from .killtree import killtree
from .records import StatusLog, StatusRecord
from .runs import ExecutorRun, RunState
from .stream import EventStream
from .traces import Traces
from .wire import b64decode, b64encode

log = logging.getLogger(__name__)

SOURCE_AGENT = "SOURCE_SLAVE"
"""How agent-generated updates are labelled (the agent's own, v0, spelling; v1 schedulers
see the same enum value as SOURCE_AGENT)."""


@dataclass(frozen=True)
class AgentConfig:
    """Everything fixed for the life of one agent."""

    work_dir: Path
    agent_id: str
    framework_id: str
    framework_user: str
    framework_name: str
    hostname: str
    checkpoint: bool
    registration_timeout_s: float
    heartbeat_interval_s: float


@dataclass(frozen=True)
class Outcome:
    """How to answer one HTTP call: a reply or a stream, then actions once it is on the wire."""

    reply: Optional[Reply] = None
    stream: Optional[EventStream] = None
    after: tuple[Callable[[], None], ...] = ()


class AgentCore:
    """State and protocol rules of one agent with one framework. All methods are thread-safe."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.runs: dict[str, ExecutorRun] = {}
        self.statuses = StatusLog()
        self.traces = Traces()
        self.phase = Phase.RUNNING
        self.acks_enabled = True
        self.stopping = False
        self.port = 0
        self._timers: list[threading.Timer] = []

    # --- HTTP ---------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Outcome:
        """Answer one request to the executor endpoint, recording it in the traces."""
        checked = check_call(method, headers, body, self.phase)
        if isinstance(checked, Reply):
            self.traces.call(_executor_id_of(body), method, path, _json_or_none(body), checked.status, checked.body)
            return Outcome(reply=checked)
        with self.lock:
            outcome = self._dispatch(checked)
            status = outcome.reply.status if outcome.reply else 200
            self.traces.call(checked.executor_id, method, path, _json_or_none(body), status,
                             outcome.reply.body if outcome.reply else "")
            return outcome

    def _dispatch(self, call: ExecutorCall) -> Outcome:
        if call.framework_id != self.config.framework_id:
            return Outcome(reply=Reply(400, "Framework cannot be found"))
        run = self.runs.get(call.executor_id)
        # A terminated executor is removed at once here: no scheduler acknowledgement is
        # awaited, so nothing keeps it around (Slave::executorTerminated -> removeExecutor).
        if run is None or run.state is RunState.TERMINATED:
            return Outcome(reply=Reply(400, "Executor cannot be found"))
        if run.state is RunState.REGISTERING and call.type != "SUBSCRIBE":
            return Outcome(reply=Reply(403, "Executor is not subscribed"))
        if call.type == "SUBSCRIBE":
            return Outcome(stream=self._subscribe(run, call.body["subscribe"]))
        if call.type == "UPDATE":
            ack = self.status_update(call.body["update"]["status"], from_executor=True)
            return Outcome(reply=Reply(202), after=(ack,) if ack else ())
        if call.type == "MESSAGE":
            # Forwarded to the scheduler best-effort; here it is kept for tests to read.
            self.traces.message(run.executor_id, b64decode(call.body["message"]["data"]))
            return Outcome(reply=Reply(202))
        log.warning("received 'UNKNOWN' call from executor %s", call.executor_id)
        return Outcome(reply=Reply(501))

    # --- SUBSCRIBE (Slave::subscribe) ---------------------------------------------------

    def _subscribe(self, run: ExecutorRun, subscribe: Mapping[str, Any]) -> EventStream:
        stream = EventStream(f"{run.executor_id}/{run.container_id}", self.config.heartbeat_interval_s,
                             self._heartbeat)
        if self.stopping or run.state is RunState.TERMINATING:
            log.warning("shutting down executor %s: it subscribed while %s", run.executor_id,
                        "the agent is terminating" if self.stopping else "it is terminating")
            self._send_on(run.executor_id, stream, events.shutdown())
            stream.close()
            return stream
        if run.stream is not None and run.stream.open:
            log.warning("closing already existing HTTP connection from executor %s", run.executor_id)
            run.stream.close()
        run.state = RunState.RUNNING
        run.stream = stream
        self._touch_http_marker(run)
        acks = [self.status_update(u["status"], from_executor=True)
                for u in subscribe.get("unacknowledged_updates", [])]
        self._lose_unknown_staging_tasks(run, subscribe.get("unacknowledged_tasks", []))
        if run.ever_queued and not run.ever_sent_task and not run.queued:
            # MESOS-8411: every task it was launched for was killed before delivery.
            log.warning("shutting down executor %s: it was never sent a task and all of its queued "
                        "tasks were killed before delivery", run.executor_id)
            self.shutdown(run)
        else:
            self._send_subscribed_and_queue(run)
        for ack in acks:
            if ack is not None:
                ack()
        return stream

    def _lose_unknown_staging_tasks(self, run: ExecutorRun, unacknowledged_tasks: list[dict[str, Any]]) -> None:
        known = {t["task_id"]["value"] for t in unacknowledged_tasks}
        for task_id, state in list(run.launched.items()):
            if state == "TASK_STAGING" and task_id not in known:
                log.info("transitioning STAGED task %s to TASK_LOST: unknown to executor %s", task_id, run.executor_id)
                self.agent_update(run, task_id, "TASK_LOST", "REASON_SLAVE_RESTARTED",
                                  "Task launched during agent restart")

    def _send_subscribed_and_queue(self, run: ExecutorRun) -> None:
        cfg = self.config
        framework_info = {"id": {"value": cfg.framework_id}, "user": cfg.framework_user,
                          "name": cfg.framework_name, "checkpoint": cfg.checkpoint}
        agent_info = {"hostname": cfg.hostname, "port": self.port, "id": {"value": cfg.agent_id}}
        self.send(run, events.subscribed(run.info, framework_info, agent_info, run.container_id))
        singles, groups = run.take_queue()
        for task in singles:
            self.send(run, events.launch(task))
        for group in groups:
            self.send(run, events.launch_group(group))

    def _touch_http_marker(self, run: ExecutorRun) -> None:
        if self.config.checkpoint:
            marker = self.meta_dir(run) / "http.marker"
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()

    def meta_dir(self, run: ExecutorRun) -> Path:
        cfg = self.config
        return (cfg.work_dir / "meta" / "slaves" / cfg.agent_id / "frameworks" / cfg.framework_id
                / "executors" / run.executor_id / "runs" / run.container_id)

    def _heartbeat(self, stream: EventStream) -> None:
        with self.lock:
            run = next((r for r in self.runs.values() if r.stream is stream), None)
            if run is not None and stream.open:
                self.send(run, events.heartbeat())

    # --- status updates (statusUpdate / ___statusUpdate) --------------------------------

    def status_update(self, status: Mapping[str, Any], *, from_executor: bool) -> Optional[Callable[[], None]]:
        """Accept one update; return the action that sends its ACKNOWLEDGED, if one is due.

        The ACK is returned rather than sent so that callers can send it after the 202 (or
        after SUBSCRIBED), the order in which the real agent's asynchronous ack arrives.
        """
        if "uuid" not in status:
            log.warning("ignoring status update without 'uuid': %s", status)
            return None
        agent_id = status.get("agent_id", {}).get("value", self.config.agent_id)
        if agent_id != self.config.agent_id:
            log.warning("ignoring status update due to agent ID mismatch: got %r", agent_id)
            return None
        filled = {**status, "agent_id": {"value": agent_id},
                  "source": "SOURCE_EXECUTOR" if from_executor else SOURCE_AGENT}
        task_id, state = filled["task_id"]["value"], filled["state"]
        owner = self._owner_of(task_id)
        if from_executor and state == "TASK_STAGING" and owner is not None:
            log.error("received TASK_STAGING from executor %s, which is not allowed: shutting it down",
                      owner.executor_id)
            self.shutdown(owner)
            return None
        if not self.statuses.add(StatusRecord.from_status(filled)):
            log.warning("ignoring duplicate status update %s for task %s", filled["uuid"], task_id)
        elif owner is not None:
            owner.update_task_state(task_id, state)
        if not from_executor:
            return None
        if owner is None:
            log.warning("not acknowledging the update for task %s: no executor owns it", task_id)
            return None
        ack = events.acknowledged(task_id, b64decode(filled["uuid"]))
        return lambda: self._acknowledge(owner, ack)

    def _acknowledge(self, run: ExecutorRun, ack: Event) -> None:
        with self.lock:
            if self.acks_enabled:
                self.send(run, ack)
            else:
                log.info("acknowledgements are off: not acknowledging %s", ack["acknowledged"])

    def agent_update(self, run: Optional[ExecutorRun], task_id: str, state: str, reason: str, message: str) -> None:
        """Generate a status update the way the agent does (SOURCE_SLAVE, fresh uuid)."""
        status: dict[str, Any] = {
            "task_id": {"value": task_id}, "state": state, "reason": reason, "message": message,
            "uuid": b64encode(uuid.uuid4().bytes), "timestamp": time.time(),
        }
        if run is not None:
            status["executor_id"] = {"value": run.executor_id}
        self.status_update(status, from_executor=False)

    def _owner_of(self, task_id: str) -> Optional[ExecutorRun]:
        owners = [r for r in self.runs.values() if r.owns(task_id)]
        live = [r for r in owners if r.state is not RunState.TERMINATED]
        candidates = live or owners
        return candidates[0] if candidates else None

    # --- sending ------------------------------------------------------------------------

    def send(self, run: ExecutorRun, event: Event) -> bool:
        """Queue ``event`` on the run's current stream; drop and log it if there is none."""
        if run.stream is not None:
            return self._send_on(run.executor_id, run.stream, event)
        log.warning("unable to send %s to executor %s: not subscribed", event["type"], run.executor_id)
        self.traces.dropped(run.executor_id, event)
        return False

    def _send_on(self, executor_id: str, stream: EventStream, event: Event) -> bool:
        if stream.send(event):
            self.traces.sent(executor_id, event)
            return True
        log.warning("unable to send %s to executor %s: connection closed", event["type"], executor_id)
        self.traces.dropped(executor_id, event)
        return False

    # --- shutdown and destroy (_shutdownExecutor, shutdownExecutorTimeout) --------------

    def shutdown(self, run: ExecutorRun) -> None:
        """Mark the run TERMINATING, send SHUTDOWN, destroy it after its grace period."""
        if run.state not in (RunState.REGISTERING, RunState.RUNNING):
            log.warning("not shutting down executor %s: it is %s", run.executor_id, run.state.value)
            return
        log.info("shutting down executor %s (grace period %g s)", run.executor_id, run.grace_period_s)
        run.state = RunState.TERMINATING
        self.send(run, events.shutdown())  # Dropped if it never subscribed, as in the agent.
        self.schedule(run.grace_period_s, lambda: self._shutdown_timeout(run))

    def _shutdown_timeout(self, run: ExecutorRun) -> None:
        with self.lock:
            if run.state is RunState.TERMINATING:
                log.info("killing executor %s: shutdown grace period over", run.executor_id)
                self.destroy(run)

    def destroy(self, run: ExecutorRun) -> None:
        """Kill the run's whole process tree, group and session (the POSIX launcher's destroy)."""
        if run.process is not None:
            killtree(run.process.pid)

    def schedule(self, delay_s: float, action: Callable[[], None]) -> None:
        """Run ``action`` after ``delay_s`` on a timer thread, unless the agent stops first."""
        timer = threading.Timer(delay_s, action)
        timer.daemon = True
        with self.lock:
            self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()

    def cancel_timers(self) -> None:
        with self.lock:
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _executor_id_of(body: bytes) -> Optional[str]:
    """The executor id a body names, if it names one (for recording rejected calls)."""
    value = _json_or_none(body)
    executor: Union[Any, None] = value.get("executor_id") if isinstance(value, dict) else None
    found = executor.get("value") if isinstance(executor, dict) else None
    return found if isinstance(found, str) else None
