"""Executor runs from launch to exit: what the operator (the "master") or the process causes.

* launch: sandbox, environment, process in its own session, registration timeout
  (``Slave::launchExecutor``, ``registerExecutorTimeout``);
* tasks: queued until SUBSCRIBE, sent at once after; refused with TASK_LOST once the run is
  terminating (``Slave::run``/``___run``);
* kill: KILL to a subscribed executor, agent-side TASK_KILLED for a task never delivered
  (``Slave::kill``);
* exit: the rest of the container is destroyed, then every unfinished task gets the
  agent's terminal update (``executorTerminated``, ``sendExecutorTerminatedStatusUpdate``).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..waiting import Deadline
from . import events
from .core import AgentCore
from .killtree import killtree
from .process import (
    AgentIdentity,
    LaunchError,
    agent_environ,
    create_sandbox,
    executor_environment,
    sandbox_path,
    spawn,
    write_pid_marker,
)
from .runs import ExecutorRun, RunState, Termination
from .wire import format_duration

log = logging.getLogger(__name__)

EXECUTOR_TERMINATED = Termination("TASK_FAILED", "REASON_EXECUTOR_TERMINATED", "Executor terminated")
KILLED_BEFORE_DELIVERY = "Killed before delivery to the executor"
GROUP_KILLED_BEFORE_DELIVERY = "A task within the task group was killed before delivery to the executor"


class Lifecycle:
    """Operator- and process-driven transitions of the runs held by an :class:`AgentCore`."""

    def __init__(self, core: AgentCore) -> None:
        self.core = core

    # --- launch -------------------------------------------------------------------------

    def launch_executor(self, executor_id: str, command: Mapping[str, Any], *, endpoint: str,
                        extra_env: Mapping[str, str], files: Sequence[Path], shutdown_grace_period_s: float,
                        executor_info_extra: Optional[Mapping[str, Any]]) -> ExecutorRun:
        """Create the run and start its process; raise LaunchError/ValueError if that is impossible."""
        cfg = self.core.config
        info = _executor_info(executor_id, cfg.framework_id, command, executor_info_extra)
        grace_s = info["shutdown_grace_period"]["nanoseconds"] / 1e9 if "shutdown_grace_period" in info \
            else shutdown_grace_period_s
        identity = AgentIdentity(cfg.agent_id, cfg.framework_id, endpoint, cfg.checkpoint)
        container_id = str(uuid.uuid4())
        sandbox = sandbox_path(cfg.work_dir, identity, executor_id, container_id)
        run = ExecutorRun(executor_id, container_id, info, sandbox, grace_s)
        previous = self._claim(run)
        # The real agent arms its registration timer before the fetch (slave.cpp:3895-3911):
        # copying ``files`` in (our fetch) counts against the window too.
        armed_at = time.monotonic()
        try:
            create_sandbox(sandbox, files)
            env = executor_environment(identity, executor_id, sandbox, grace_s, extra_env, command, agent_environ())
            process = spawn(executor_id, command, env, sandbox)
        except (OSError, LaunchError):
            self._release(run, previous)
            raise
        with self.core.lock:
            run.process = process
        if cfg.checkpoint:
            write_pid_marker(self.core.meta_dir(run), process.pid)
        threading.Thread(target=self._watch, args=(run,), name=f"watch-{executor_id}", daemon=True).start()
        left_s = max(0.0, cfg.registration_timeout_s - (time.monotonic() - armed_at))
        self.core.schedule(left_s, lambda: self._registration_timeout(run))
        return run

    def _claim(self, run: ExecutorRun) -> Optional[ExecutorRun]:
        with self.core.lock:
            previous = self.core.runs.get(run.executor_id)
            if previous is not None and previous.state is not RunState.TERMINATED:
                raise ValueError(f"executor {run.executor_id!r} is already running (container "
                                 f"{previous.container_id}); shut it down before launching it again")
            self.core.runs[run.executor_id] = run
            return previous

    def _release(self, run: ExecutorRun, previous: Optional[ExecutorRun]) -> None:
        with self.core.lock:
            if previous is None:
                self.core.runs.pop(run.executor_id, None)
            else:
                self.core.runs[run.executor_id] = previous

    # --- tasks --------------------------------------------------------------------------

    def launch_tasks(self, executor_id: str, tasks: Sequence[Mapping[str, Any]], *, as_group: bool) -> None:
        """Queue the tasks (not subscribed yet) or send LAUNCH/LAUNCH_GROUP (subscribed)."""
        with self.core.lock:
            run = self._run(executor_id)
            filled = [self._fill_task(run, task) for task in tasks]
            if run.state in (RunState.TERMINATING, RunState.TERMINATED):
                state = run.state.value.lower()
                for task in filled:
                    self.core.agent_update(None, task["task_id"]["value"], "TASK_LOST",
                                           "REASON_EXECUTOR_TERMINATED", f"Executor {state}")
            elif run.state is RunState.REGISTERING:
                run.queue(filled, as_group)
            else:
                run.mark_launched(filled)
                for event in [events.launch_group(filled)] if as_group else [events.launch(t) for t in filled]:
                    self.core.send(run, event)

    def _fill_task(self, run: ExecutorRun, task: Mapping[str, Any]) -> dict[str, Any]:
        task_id = task.get("task_id", {}).get("value")
        if not isinstance(task_id, str):
            raise ValueError(f"TaskInfo without task_id.value: {task}")
        if any(r.owns(task_id) for r in self.core.runs.values()) or self.core.statuses.updates(task_id):
            raise ValueError(f"task id {task_id!r} is already in use on this agent")
        if "command" in task and "executor" in task:
            raise ValueError(f"task {task_id!r} has both 'command' and 'executor': a real master rejects such a "
                             f"TaskInfo (master/validation.cpp); a custom executor's task carries its command in "
                             f"'data'")
        filled = copy.deepcopy(dict(task))
        filled["agent_id"] = {"value": self.core.config.agent_id}
        if "command" not in filled:
            # A custom executor's task carries the ExecutorInfo; a command task reaches the
            # (command) executor as the framework gave it, without one.
            filled.setdefault("executor", copy.deepcopy(run.info))
        return filled

    def kill_task(self, executor_id: str, task_id: str, grace_period_s: Optional[float]) -> None:
        """``Slave::killTask``/``kill`` for a task of ``executor_id``."""
        with self.core.lock:
            run = self.core.runs.get(executor_id)
            if run is None or run.state is RunState.TERMINATED or not run.owns(task_id):
                self.core.agent_update(None, task_id, "TASK_LOST", "REASON_EXECUTOR_TERMINATED", "Cannot find executor")
            elif run.state is RunState.TERMINATING:
                log.warning("ignoring kill of task %s: executor %s is terminating", task_id, executor_id)
            elif task_id in run.queued:
                self._kill_queued(run, task_id)
            else:
                self.core.send(run, events.kill(task_id, grace_period_s))

    def _kill_queued(self, run: ExecutorRun, task_id: str) -> None:
        group = run.group_of(task_id)
        registering = run.state is RunState.REGISTERING
        message = GROUP_KILLED_BEFORE_DELIVERY if group and registering else KILLED_BEFORE_DELIVERY
        for member in group or [task_id]:
            self.core.agent_update(run, member, "TASK_KILLED", "REASON_TASK_KILLED_DURING_LAUNCH", message)
        if not registering and not run.ever_sent_task and not run.queued:
            self.core.shutdown(run)  # MESOS-8411; a registering run is checked when it subscribes.

    def send_message(self, executor_id: str, data: bytes) -> None:
        """Framework message: delivered only to a RUNNING executor, else dropped (logged)."""
        with self.core.lock:
            run = self._run(executor_id)
            event = events.message(data)
            if run.state is RunState.RUNNING:
                self.core.send(run, event)
            else:
                log.warning("dropping message for executor %s: it is %s", executor_id, run.state.value)
                self.core.traces.dropped(executor_id, event)

    def _run(self, executor_id: str) -> ExecutorRun:
        run = self.core.runs.get(executor_id)
        if run is None:
            raise ValueError(f"no executor {executor_id!r} was launched on this agent")
        return run

    # --- exit and timeouts --------------------------------------------------------------

    def _watch(self, run: ExecutorRun) -> None:
        assert run.process is not None
        returncode = run.process.wait()
        # The containerizer destroys what is left of the container once its pid is reaped.
        killtree(run.process.pid)
        log.info("executor %s (pid %d) exited with %d", run.executor_id, run.process.pid, returncode)
        self._terminated(run, returncode)

    def _terminated(self, run: ExecutorRun, returncode: int) -> None:
        with self.core.lock:
            run.state = RunState.TERMINATED
            run.returncode = returncode
            termination = run.pending_termination or EXECUTOR_TERMINATED
            for task_id in run.unfinished_tasks():
                self.core.agent_update(run, task_id, termination.state, termination.reason, termination.message)
            if run.stream is not None:
                run.stream.close()
            run.terminated.set()

    def _registration_timeout(self, run: ExecutorRun) -> None:
        with self.core.lock:
            if self.core.runs.get(run.executor_id) is not run or run.state is not RunState.REGISTERING:
                return
            timeout = format_duration(self.core.config.registration_timeout_s)
            log.info("terminating executor %s: it did not register within %s", run.executor_id, timeout)
            self.core.destroy(run)
            run.state = RunState.TERMINATING
            run.pending_termination = Termination("TASK_FAILED", "REASON_EXECUTOR_REGISTRATION_TIMEOUT",
                                                  f"Executor did not register within {timeout}")

    # --- streams and stop ---------------------------------------------------------------

    def drop_stream(self, executor_id: str, *, abrupt: bool = False) -> bool:
        """Close the run's current stream; False if it had none open."""
        with self.core.lock:
            run = self.core.runs.get(executor_id)
            if run is None or run.stream is None or not run.stream.open:
                return False
            run.stream.close(abrupt=abrupt)
            return True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close every stream, cancel timers, destroy every live run and wait for its exit."""
        with self.core.lock:
            self.core.stopping = True
            live = [r for r in self.core.runs.values() if r.state is not RunState.TERMINATED]
            for run in self.core.runs.values():
                if run.stream is not None:
                    run.stream.close()
        self.core.cancel_timers()
        deadline = Deadline.after(timeout_s)
        for run in live:
            self.core.destroy(run)
        for run in live:
            if not run.terminated.wait(deadline.remaining()):
                log.warning("executor %s did not exit within %g s of SIGKILL", run.executor_id, timeout_s)


def _executor_info(executor_id: str, framework_id: str, command: Mapping[str, Any],
                   extra: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The ExecutorInfo a framework would have sent; ``extra`` fields win."""
    info: dict[str, Any] = {
        "type": "CUSTOM",
        "executor_id": {"value": executor_id},
        "framework_id": {"value": framework_id},
        "command": copy.deepcopy(dict(command)),
    }
    info.update(copy.deepcopy(dict(extra or {})))
    return info
