"""One task's statuses, over its task session (:mod:`session`), on its own thread.

Statuses are honest: STARTING when the worker begins, RUNNING only when the launcher's start
marker shows the task's process exists in the guest, then exactly one terminal status whose
``data`` holds the per-phase timings as JSON.

Kill (the session's ladder): before the command runs, the boot is cancelled and the domain
powered off so no wait lingers; once it runs, SIGTERM goes to the task's process group in the
guest, SIGKILL after the grace period, and the domain is powered off if even that does not end
it. The terminal status is :func:`statuses.task_outcome` of the session's result.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Mapping, Optional, Protocol

from .checks import Checker, CheckTracker, HealthTracker, ProbeResult, run_probe
from .checkspec import CheckSpec
from .config import MesosEnvironment, Settings
from .domainxml import Owner
from .guest import Guest, GuestRequest
from .ids import domain_name_for
from .journal import NO_JOURNAL, ResourceJournal
from .launch_script import LaunchSpec, guest_base_environment
from .session import DESTROY_AFTER_SIGKILL_S, GuestFactory, SessionIO, TaskSession
from .statuses import ExitStatus, Reason, RunResult, TaskState, task_outcome
from .taskinfo import TaskSpec

log = logging.getLogger(__name__)

# Agent variables a task in Mesos does not see (they are the executor's credentials / plumbing).
PRIVATE_VARIABLES = {"MESOS_EXECUTOR_AUTHENTICATION_TOKEN", "MESOS_DOMAIN_SOCKET"}


class StatusSink(Protocol):
    def send_update(self, task_id: str, state: str, *, reason: Optional[str] = None,
                    message: Optional[str] = None, data: Optional[bytes] = None,
                    healthy: Optional[bool] = None, check_status: Optional[Mapping[str, Any]] = None) -> bytes: ...


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    env: MesosEnvironment
    launcher: GuestFactory
    """Where guests come from: the launcher, or the warm pool in front of it (:mod:`warm`)."""
    agent: StatusSink
    container_id: str = ""
    mirror_stdout: Optional[Callable[[bytes], None]] = None
    mirror_stderr: Optional[Callable[[bytes], None]] = None
    journal: ResourceJournal = NO_JOURNAL
    owner: Owner = Owner()
    """The executor's owner record (owner file, pid, ids); each guest adds its task id."""
    task_killing: bool = False
    """The framework opted in to TASK_KILLING (its TASK_KILLING_STATE capability)."""


class TaskWorker:
    """Reports one task's statuses over its :class:`TaskSession` (and is the session's mode)."""

    def __init__(self, spec: TaskSpec, ctx: WorkerContext,
                 on_done: Callable[[TaskWorker], None]) -> None:
        self.spec = spec
        self.ctx = ctx
        self._on_done = on_done
        self.task_dir = ctx.env.directory / "tasks" / spec.dir_name
        self.finished = threading.Event()
        self.terminal_uuid: Optional[bytes] = None
        self.terminal_state: Optional[TaskState] = None
        self._lock = threading.Lock()
        self._killing = False
        self._started_at = time.monotonic()
        self._status_lock = threading.Lock()
        self._terminal_sent = False
        self._healthy: Optional[bool] = None
        self._check_status: Optional[Mapping[str, Any]] = None
        self._checkers: list[Checker] = []
        self._out: Callable[[bytes], None] = lambda chunk: None
        self._err: Callable[[bytes], None] = lambda chunk: None
        self.session = TaskSession(ctx.launcher, self._guest_request(), self,
                                   SessionIO(out=lambda b: self._out(b), err=lambda b: self._err(b),
                                             progress=self._progress),
                                   upload_from=ctx.env.directory, guest_sandbox=ctx.settings.executor.guest_sandbox)
        self._thread = threading.Thread(target=self._run, name=f"task-{spec.dir_name[:40]}", daemon=True)

    # --- public, callable from any thread (never blocks) ---------------------------------
    def start(self) -> None:
        self._thread.start()

    def kill(self, grace_s: Optional[float], why: str, *, sigkill_wait_s: float = DESTROY_AFTER_SIGKILL_S) -> None:
        """Start killing the task (:meth:`TaskSession.kill`): SIGTERM, SIGKILL after ``grace_s``
        (if None: the TaskInfo's kill policy, else ``[executor] kill_grace_s``, as Mesos's
        command executor does), the guest powered off ``sigkill_wait_s`` later if the command
        still runs. Returns at once."""
        with self._lock:
            if self._killing or self.finished.is_set():
                return
            self._killing = True
        if self.session.started and self.ctx.task_killing:
            self._send(TaskState.KILLING, message=why)
        grace = next(g for g in (grace_s, self.spec.kill_grace_s, self.ctx.settings.executor.kill_grace_s)
                     if g is not None)
        self.session.kill(why, grace, sigkill_wait_s=sigkill_wait_s)

    def join(self, timeout_s: Optional[float] = None) -> None:
        self._thread.join(timeout_s)

    # --- the worker thread --------------------------------------------------------------
    def _run(self) -> None:
        self._send(TaskState.STARTING, message="booting a guest")
        try:
            self.task_dir.mkdir(parents=True, exist_ok=True)
            with open(self.task_dir / "stdout", "ab", buffering=0) as out, \
                    open(self.task_dir / "stderr", "ab", buffering=0) as err:
                self._out = self._tee(out, self.ctx.mirror_stdout)
                self._err = self._tee(err, self.ctx.mirror_stderr)
                self._err(f"vm-isolation: booting {self.session.name} ({self.spec.vcpus} vCPU, "
                          f"{self.spec.memory_mib} MiB, image {self.spec.image})\n".encode())
                result = self.session.run()
        except Exception as exc:  # noqa: BLE001 - e.g. an unwritable sandbox: still a terminal status
            result = RunResult(error=exc, kill_reason=self.session.kill_reason)
        outcome = task_outcome(result)
        timings = dict(result.timings, total=round(time.monotonic() - self._started_at, 3))
        self.terminal_state = outcome.state
        self.terminal_uuid = self._send(outcome.state, reason=outcome.reason, message=outcome.message,
                                        data=json.dumps(timings).encode())
        self.finished.set()
        self._on_done(self)

    def _progress(self, phase: str, seconds: float) -> None:
        self._err(f"vm-isolation: [{time.monotonic() - self._started_at:6.2f} s] {phase} done "
                  f"({seconds:.2f} s)\n".encode())

    # --- the session's mode hooks ------------------------------------------------------------
    def prepare(self, guest: Guest, undo: ExitStack) -> None:
        """A generic task needs nothing of its own in the guest before the upload."""

    def launch_spec(self, guest: Guest) -> LaunchSpec:
        sandbox = self.ctx.settings.executor.guest_sandbox
        env = {k: v for k, v in self.ctx.env.variables.items()
               if k.startswith("MESOS_") and k not in PRIVATE_VARIABLES}
        env.update(guest_base_environment(guest.home), MESOS_SANDBOX=sandbox, MESOS_DIRECTORY=sandbox,
                   MESOS_TASK_ID=self.spec.task_id)
        env.update(self.spec.command.environment)
        cmd = self.spec.command
        if cmd.shell:
            return LaunchSpec(workdir=sandbox, env=env, shell_command=cmd.value)
        return LaunchSpec(workdir=sandbox, env=env, executable=cmd.value,
                          arguments=cmd.arguments or (cmd.value,))

    def started(self, guest: Guest, pgid: int) -> None:
        self._send(TaskState.RUNNING, message=f"running in guest {guest.name}")
        self._start_checks(guest)

    def run_ended(self) -> None:
        for checker in self._checkers:
            checker.stop.set()

    def finish(self, guest: Guest, status: ExitStatus) -> None:
        """Nothing to copy back: a generic task's output was streamed into the sandbox."""

    # --- health checks and checks (their own threads) ----------------------------------------
    def _start_checks(self, guest: Guest) -> None:
        launch = self.launch_spec(guest)
        health, check = self.spec.health_check, self.spec.check
        started = time.monotonic()
        if health is not None:
            tracker = HealthTracker(health, started)

            def on_health(result: ProbeResult) -> None:
                verdict = tracker.feed(result, time.monotonic())
                if verdict is None:
                    return
                self._healthy = verdict.healthy
                self._send(TaskState.RUNNING, reason=Reason.HEALTH_CHECK_STATUS_UPDATED,
                           message=f"health check {'passed' if verdict.healthy else 'failed'}: {verdict.detail}",
                           only_while_running=True)
                if verdict.kill:
                    self.kill(None, f"the health check failed {verdict.failures} times in a row ({verdict.detail})")

            self._checkers.append(Checker(health, self._prober(guest, health, launch), on_health,
                                          name=f"health-{self._thread.name}"))
        if check is not None:
            checks = CheckTracker()

            def on_check(result: ProbeResult) -> None:
                changed = checks.feed(result)
                if changed is not None:
                    self._check_status = changed
                    self._send(TaskState.RUNNING, reason=Reason.CHECK_STATUS_UPDATED,
                               message=f"check: {result.detail}", only_while_running=True)

            self._checkers.append(Checker(check, self._prober(guest, check, launch), on_check,
                                          name=f"check-{self._thread.name}"))
        for checker in self._checkers:
            if self.session.run_ended.is_set():
                checker.stop.set()
            checker.start()

    @staticmethod
    def _prober(guest: Guest, spec: CheckSpec, launch: LaunchSpec) -> Callable[[], ProbeResult]:
        return lambda: run_probe(guest.remote, spec.probe, spec.timeout_s, workdir=launch.workdir, env=launch.env)

    # --- helpers ---------------------------------------------------------------------------
    def _guest_request(self) -> GuestRequest:
        return GuestRequest(
            name=domain_name_for(self.spec.task_id),
            base_image=self.ctx.settings.images.base(self.spec.image),
            kernel=self.ctx.settings.images.kernel_for(self.spec.image),
            profile=self.ctx.settings.images.profile(self.spec.image),
            vcpus=self.spec.vcpus,
            memory_mib=self.spec.memory_mib,
            owner=self.ctx.owner.for_task(self.spec.task_id, self.ctx.container_id),
            console_log=self.task_dir / "console.log",
            journal=self.ctx.journal,
            image=self.spec.image,
        )

    def _send(self, state: TaskState, *, reason: Optional[Reason] = None, message: Optional[str] = None,
              data: Optional[bytes] = None, only_while_running: bool = False) -> bytes:
        """Send a status with the latest health and check results. Serialised, so a check's
        TASK_RUNNING can never follow the terminal status (``only_while_running``: dropped then)."""
        with self._status_lock:
            if self._terminal_sent or (only_while_running and (self.session.run_ended.is_set()
                                                               or self.session.cancelled.is_set())):
                return b""
            self._terminal_sent = state.terminal
            log.info("task %s: %s%s", self.spec.task_id, state.value, f" ({message})" if message else "")
            return self.ctx.agent.send_update(self.spec.task_id, state.value,
                                              reason=reason.value if reason else None, message=message,
                                              data=data, healthy=self._healthy, check_status=self._check_status)

    @staticmethod
    def _tee(fh: BinaryIO, mirror: Optional[Callable[[bytes], None]]) -> Callable[[bytes], None]:
        def sink(chunk: bytes) -> None:
            fh.write(chunk)
            if mirror is not None:
                mirror(chunk)

        return sink

