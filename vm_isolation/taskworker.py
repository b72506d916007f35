"""One task in one guest: boot, upload the sandbox, run, report, tear down — on its own thread.

Statuses are honest: STARTING when the worker begins, RUNNING only when the launcher's start
marker shows the task's process exists in the guest, then exactly one terminal status whose
``data`` holds the per-phase timings as JSON.

Kill: before the command runs, the boot is cancelled (and the domain destroyed so no wait
lingers); once it runs, SIGTERM goes to the task's process group in the guest, SIGKILL after
the grace period, and the domain is destroyed if even that does not end it.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Callable, Mapping, Optional, Protocol

from . import sandbox
from .checks import Checker, CheckTracker, HealthTracker, ProbeResult, run_probe
from .checkspec import CheckSpec
from .config import MesosEnvironment, Settings
from .domainxml import Owner
from .errors import VmIsolationError
from .guest import Cancelled, Guest, GuestLauncher, GuestRequest, console_tail
from .ids import domain_name_for
from .journal import NO_JOURNAL, ResourceJournal
from .launcher import GUEST_PATH, LaunchSpec
from .statuses import Outcome, Reason, TaskState, outcome_for_error
from .taskrun import ExitStatus, run_launcher, signal_task, watch_guest
from .tasks import TaskSpec

log = logging.getLogger(__name__)

# Agent variables a task in Mesos does not see (they are the executor's credentials / plumbing).
PRIVATE_VARIABLES = {"MESOS_EXECUTOR_AUTHENTICATION_TOKEN", "MESOS_DOMAIN_SOCKET"}
DESTROY_AFTER_SIGKILL_S = 2.0


class StatusSink(Protocol):
    def send_update(self, task_id: str, state: str, *, reason: Optional[str] = None,
                    message: Optional[str] = None, data: Optional[bytes] = None,
                    healthy: Optional[bool] = None, check_status: Optional[Mapping[str, Any]] = None) -> bytes: ...


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    env: MesosEnvironment
    launcher: GuestLauncher
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
    def __init__(self, spec: TaskSpec, ctx: WorkerContext,
                 on_done: Callable[[TaskWorker], None]) -> None:
        self.spec = spec
        self.ctx = ctx
        self._on_done = on_done
        self.task_dir = ctx.env.directory / "tasks" / spec.dir_name
        self.cancel = threading.Event()
        self.run_ended = threading.Event()
        self.finished = threading.Event()
        self.terminal_uuid: Optional[bytes] = None
        self.terminal_state: Optional[TaskState] = None
        self._lock = threading.Lock()
        self._guest: Optional[Guest] = None
        self._pgid: Optional[int] = None
        self._kill_reason: Optional[str] = None
        self._timings: dict[str, float] = {}
        self._domain = domain_name_for(spec.task_id)
        self._guest_lost = ""
        self._started_at = time.monotonic()
        self._status_lock = threading.Lock()
        self._terminal_sent = False
        self._healthy: Optional[bool] = None
        self._check_status: Optional[Mapping[str, Any]] = None
        self._checkers: list[Checker] = []
        self._thread = threading.Thread(target=self._run, name=f"task-{spec.dir_name[:40]}", daemon=True)

    # --- public, callable from any thread (never blocks) ---------------------------------
    def start(self) -> None:
        self._thread.start()

    def kill(self, grace_s: Optional[float], why: str, *, sigkill_wait_s: float = DESTROY_AFTER_SIGKILL_S) -> None:
        """Start killing the task: SIGTERM, SIGKILL after ``grace_s``, destroy the domain
        ``sigkill_wait_s`` later if the command still runs. Returns at once (the escalation runs
        on its own thread)."""
        with self._lock:
            if self._kill_reason is not None or self.finished.is_set():
                return
            self._kill_reason = why
            self.cancel.set()
            running = self._pgid is not None
        if running and self.ctx.task_killing:
            self._send(TaskState.KILLING, message=why)
        grace = self.ctx.settings.executor.kill_grace_s if grace_s is None else grace_s
        threading.Thread(target=self._escalate, args=(grace, sigkill_wait_s), name="kill-" + self._thread.name,
                         daemon=True).start()

    def join(self, timeout_s: Optional[float] = None) -> None:
        self._thread.join(timeout_s)

    # --- the worker thread --------------------------------------------------------------
    def _run(self) -> None:
        self._send(TaskState.STARTING, message="booting a guest")
        try:
            self.task_dir.mkdir(parents=True, exist_ok=True)
            with open(self.task_dir / "stdout", "ab", buffering=0) as out, \
                    open(self.task_dir / "stderr", "ab", buffering=0) as err:
                outcome = self._boot_and_run(self._tee(out, self.ctx.mirror_stdout),
                                             self._tee(err, self.ctx.mirror_stderr))
        except Exception as exc:  # noqa: BLE001 - every failure must end in a terminal status
            outcome = self._outcome_for_failure(exc)
        self._timings["total"] = round(time.monotonic() - self._started_at, 3)
        self.terminal_state = outcome.state
        self.terminal_uuid = self._send(outcome.state, reason=outcome.reason, message=outcome.message,
                                        data=json.dumps(self._timings).encode())
        self.finished.set()
        self._on_done(self)

    def _boot_and_run(self, out: Callable[[bytes], None], err: Callable[[bytes], None]) -> Outcome:
        request = self._guest_request()
        t0 = time.monotonic()

        def progress(phase: str, seconds: float) -> None:
            err(f"vm-isolation: [{time.monotonic() - t0:6.2f} s] {phase} done ({seconds:.2f} s)\n".encode())

        err(f"vm-isolation: booting {request.name} ({self.spec.vcpus} vCPU, {self.spec.memory_mib} MiB, "
            f"image {self.spec.image})\n".encode())
        with self.ctx.launcher.boot(request, cancel=self.cancel, progress=progress) as guest:
            self._timings.update(guest.timings)
            with self._lock:
                if self.cancel.is_set():
                    raise Cancelled("killed while booting")
                self._guest = guest
            self._timed("upload", lambda: self._upload(guest), progress)
            run_started = time.monotonic()
            watch_guest(self.ctx.launcher.hypervisor.state, guest, self.run_ended,
                        lambda state: self._guest_stopped(guest, state))
            try:
                status = run_launcher(guest, self._launch_spec(), on_started=self._on_started,
                                      on_stdout=out, on_stderr=err)
            finally:
                self.run_ended.set()
                for checker in self._checkers:
                    checker.stop.set()
            self._timings["run"] = round(time.monotonic() - run_started, 3)
            progress("run", self._timings["run"])
        return self._outcome_for_exit(status)

    def _timed(self, phase: str, step: Callable[[], None],
               progress: Callable[[str, float], None]) -> None:
        started = time.monotonic()
        step()
        self._timings[phase] = round(time.monotonic() - started, 3)
        progress(phase, self._timings[phase])

    def _on_started(self, pgid: int) -> None:
        with self._lock:
            self._pgid = pgid
            guest = self._guest
        self._send(TaskState.RUNNING, message=f"running in guest {guest.name if guest else ''}")
        if guest is not None:
            self._start_checks(guest)

    # --- health checks and checks (their own threads) ----------------------------------------
    def _start_checks(self, guest: Guest) -> None:
        launch = self._launch_spec()
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
            if self.run_ended.is_set():
                checker.stop.set()
            checker.start()

    @staticmethod
    def _prober(guest: Guest, spec: CheckSpec, launch: LaunchSpec) -> Callable[[], ProbeResult]:
        return lambda: run_probe(guest.remote, spec.probe, spec.timeout_s, workdir=launch.workdir, env=launch.env)

    # --- outcomes --------------------------------------------------------------------------
    def _outcome_for_exit(self, status: ExitStatus) -> Outcome:
        self._timings["exit_status"] = status.code
        if self._kill_reason is not None:
            return Outcome(TaskState.KILLED, None, f"{self._kill_reason}; task ended with {status.describe()}")
        if status.code == 0:
            return Outcome(TaskState.FINISHED, None, "command exited with status 0")
        return Outcome(TaskState.FAILED, Reason.COMMAND_FAILED, f"command exited with {status.describe()}")

    def _guest_stopped(self, guest: Guest, state: str) -> None:
        self._guest_lost = f"the guest {guest.name} stopped while the command ran (state {state})"
        log.error("task %s: %s", self.spec.task_id, self._guest_lost)

    def _outcome_for_failure(self, exc: BaseException) -> Outcome:
        if self._guest_lost and self._kill_reason is None:
            tail = console_tail(self.task_dir / "console.log")
            return Outcome(TaskState.FAILED, Reason.COMMAND_FAILED,
                           self._guest_lost + (f"\n--- last lines of the guest console ---\n{tail}" if tail else ""))
        if self._kill_reason is not None:
            reason = None if self._pgid is not None else Reason.KILLED_DURING_LAUNCH
            return Outcome(TaskState.KILLED, reason, self._kill_reason)
        if not isinstance(exc, VmIsolationError):
            log.exception("task %s: unexpected failure", self.spec.task_id)
        return outcome_for_error(exc)

    # --- kill escalation (own thread) --------------------------------------------------------
    def _escalate(self, grace_s: float, sigkill_wait_s: float) -> None:
        with self._lock:
            guest, pgid = self._guest, self._pgid
        if guest is None:
            # Still booting: the cancel event stops the boot at its next check; destroying the
            # domain makes any wait in progress (lease, SSH) end now rather than at its deadline.
            self._destroy()
            return
        if pgid is not None:
            self._signal(guest, pgid, signal.SIGTERM)
            if self.run_ended.wait(grace_s):
                return
            self._signal(guest, pgid, signal.SIGKILL)
            if self.run_ended.wait(sigkill_wait_s):
                return
        self._destroy()

    def _signal(self, guest: Guest, pgid: int, signum: int) -> None:
        try:
            signal_task(guest, pgid, signum)
        except VmIsolationError as exc:
            log.warning("task %s: could not send signal %d: %s", self.spec.task_id, signum, exc)

    def _destroy(self) -> None:
        name = self._domain
        if name:
            try:
                self.ctx.launcher.hypervisor.destroy(name)
            except VmIsolationError as exc:
                log.warning("task %s: destroy %s failed: %s", self.spec.task_id, name, exc)

    # --- helpers ---------------------------------------------------------------------------
    def _guest_request(self) -> GuestRequest:
        return GuestRequest(
            name=self._domain,
            base_image=self.ctx.settings.images.base(self.spec.image),
            profile=self.ctx.settings.images.profile(self.spec.image),
            vcpus=self.spec.vcpus,
            memory_mib=self.spec.memory_mib,
            owner=replace(self.ctx.owner, task_id=self.spec.task_id,
                          container_id=self.ctx.container_id or self.ctx.owner.container_id),
            console_log=self.task_dir / "console.log",
            journal=self.ctx.journal,
        )

    def _launch_spec(self) -> LaunchSpec:
        sandbox = self.ctx.settings.executor.guest_sandbox
        env = {k: v for k, v in self.ctx.env.variables.items()
               if k.startswith("MESOS_") and k not in PRIVATE_VARIABLES}
        home = self._guest.home if self._guest is not None else "/root"
        env.update(PATH=GUEST_PATH, HOME=home, MESOS_SANDBOX=sandbox, MESOS_DIRECTORY=sandbox,
                   MESOS_TASK_ID=self.spec.task_id)
        env.update(self.spec.command.environment)
        cmd = self.spec.command
        if cmd.shell:
            return LaunchSpec(workdir=sandbox, env=env, shell_command=cmd.value)
        return LaunchSpec(workdir=sandbox, env=env, executable=cmd.value,
                          arguments=cmd.arguments or (cmd.value,))

    def _upload(self, guest: Guest) -> None:
        """Copy what the agent fetched into the sandbox into the guest's sandbox."""
        sandbox.upload(guest.remote, self.ctx.env.directory, self.ctx.settings.executor.guest_sandbox)

    def _send(self, state: TaskState, *, reason: Optional[Reason] = None, message: Optional[str] = None,
              data: Optional[bytes] = None, only_while_running: bool = False) -> bytes:
        """Send a status with the latest health and check results. Serialised, so a check's
        TASK_RUNNING can never follow the terminal status (``only_while_running``: dropped then)."""
        with self._status_lock:
            if self._terminal_sent or (only_while_running and (self.run_ended.is_set() or self.cancel.is_set())):
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

