"""One task's guest from admission to teardown, for both modes: the task session.

A :class:`TaskSession` owns everything between "this task gets a guest" and "nothing of it is
left": the domain name, the boot (:meth:`GuestFactory.boot`), the mode's own preparation,
the sandbox upload, the guest watch, the run, and the kill ladder. Its phases are explicit
(:class:`SessionPhase`), like the boot's; the mode (a generic task, or wrap mode's inner
executor) plugs in through :class:`Mode` and never touches the hypervisor.

:meth:`TaskSession.kill` is the one way to stop a session, at any phase and from any thread:

* before the command started (admitted, booting, preparing, uploading): the boot is cancelled
  and the domain powered off, so a wait in progress (lease, SSH, upload) ends now rather than
  at its deadline;
* once it runs: SIGTERM to the task's process group, SIGKILL after the grace period, the
  domain powered off if even that does not end it (:class:`KillStep`).

Every wait of the ladder is on the injected :class:`Clock`, so it is unit-tested in fake time.
:meth:`TaskSession.run` returns a frozen :class:`RunResult`; :func:`statuses.task_outcome`
turns it into the task's status, and wrap mode into its exit status.
"""

from __future__ import annotations

import enum
import logging
import signal
import threading
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol

from . import sandbox
from .console import console_tail
from .errors import VmIsolationError
from .guest import Cancelled, Guest, GuestRequest, ProgressFn
from .guestrun import Sink, run_launcher, signal_task, watch_guest
from .launch_script import LaunchSpec
from .statuses import ExitStatus, RunResult
from .waiting import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

DESTROY_AFTER_SIGKILL_S = 2.0
"""How long the ladder waits after SIGKILL before it powers the guest off."""


class SessionPhase(enum.StrEnum):
    """A session's phases, in order (the boot's own are :class:`guest.Phase`)."""

    ADMITTED = "admitted"
    BOOT = "boot"
    PREPARE = "prepare"
    UPLOAD = "upload"
    RUN = "run"
    ENDED = "ended"


class KillStep(enum.StrEnum):
    """What the kill ladder did, in order."""

    CANCEL = "cancel"
    """Before the command started: the boot cancelled and the domain powered off."""
    SIGTERM = "sigterm"
    SIGKILL = "sigkill"
    POWER_OFF = "power-off"
    """The command outlived SIGKILL (or never reported): the domain powered off."""


class GuestFactory(Protocol):
    """Where a session's guest comes from: a :class:`guest.GuestFactory` (cold boot) or a
    :class:`warm.WarmFactory` (the warm pool first)."""

    def boot(self, request: GuestRequest, *, cancel: Optional[threading.Event] = ...,
             progress: ProgressFn = ...) -> AbstractContextManager[Guest]: ...
    def domain_state(self, name: str) -> Optional[str]: ...
    def power_off(self, name: str) -> None: ...


class Mode(Protocol):
    """What a mode adds to the common flow; every hook runs on the session's thread except
    :meth:`started`, which runs on the SSH reader's."""

    def prepare(self, guest: Guest, undo: ExitStack) -> None:
        """Before the upload: the mode's own per-guest resources, each undo on ``undo``."""

    def launch_spec(self, guest: Guest) -> LaunchSpec:
        """What the launcher runs in the guest."""

    def started(self, guest: Guest, pgid: int) -> None:
        """The command's process exists in the guest (its start marker came)."""

    def run_ended(self) -> None:
        """The run is over, however it ended (called before :meth:`finish` and teardown)."""

    def finish(self, guest: Guest, status: ExitStatus) -> None:
        """The command exited; the guest is still there (e.g. to copy files back)."""


@dataclass(frozen=True)
class SessionIO:
    """Where a session's output goes: the command's streams and per-phase progress lines."""

    out: Sink
    err: Sink
    progress: ProgressFn = lambda phase, seconds: None


class TaskSession:
    """One task's guest: :meth:`run` on one thread, :meth:`kill` from any other."""

    def __init__(self, factory: GuestFactory, request: GuestRequest, mode: Mode, io: SessionIO, *,
                 upload_from: Path, guest_sandbox: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.factory = factory
        self.request = request
        self.mode = mode
        self.io = io
        self._upload_from = upload_from
        self._guest_sandbox = guest_sandbox
        self._clock = clock
        self.cancelled = threading.Event()
        """Set by the first :meth:`kill`: the boot stops at its next step."""
        self.run_ended = threading.Event()
        """Set once the command is over (or will never run)."""
        self._lock = threading.Lock()
        self._phase = SessionPhase.ADMITTED
        self._guest: Optional[Guest] = None
        self._pgid: Optional[int] = None
        self._kill_reason: Optional[str] = None
        self._guest_lost = ""
        self._timings: dict[str, float] = {}

    @property
    def name(self) -> str:
        """The guest's domain name (chosen at admission, so a kill before the boot finds it)."""
        return self.request.name

    @property
    def phase(self) -> SessionPhase:
        return self._phase

    @property
    def started(self) -> bool:
        return self._pgid is not None

    @property
    def kill_reason(self) -> Optional[str]:
        return self._kill_reason

    # --- the run -------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Boot, prepare, upload, run; tear down; the frozen result. Never raises."""
        status: Optional[ExitStatus] = None
        error: Optional[BaseException] = None
        try:
            status = self._boot_and_run()
        except Exception as exc:  # noqa: BLE001 - every failure must end in a result
            error = exc
            if not isinstance(exc, VmIsolationError):
                log.exception("%s: unexpected failure", self.name)
        finally:
            self._phase = SessionPhase.ENDED
            self.run_ended.set()
        console = self._guest.console_log if self._guest is not None else self.request.console_log
        tail = console_tail(console) if self._guest_lost and console else ""
        return RunResult(exit=status, error=error, started=self.started, kill_reason=self._kill_reason,
                         guest_lost=self._guest_lost, console_tail=tail, timings=dict(self._timings))

    def _boot_and_run(self) -> ExitStatus:
        self._enter(SessionPhase.BOOT)
        with self.factory.boot(self.request, cancel=self.cancelled, progress=self.io.progress) as guest:
            self._timings.update(guest.timings)
            with self._lock:
                self._check_cancel("killed while booting")
                self._guest = guest
            with ExitStack() as undo:
                self._enter(SessionPhase.PREPARE)
                self.mode.prepare(guest, undo)
                self._timed(SessionPhase.UPLOAD, lambda: sandbox.upload(guest.remote, self._upload_from,
                                                                         self._guest_sandbox))
                with self._lock:
                    self._check_cancel("killed before the command started")
                    self._phase = SessionPhase.RUN
                status = self._timed(SessionPhase.RUN, lambda: self._run(guest))
                self._timings["exit_status"] = status.code
                self.mode.finish(guest, status)
                return status

    def _run(self, guest: Guest) -> ExitStatus:
        watch_guest(self.factory.domain_state, guest, self.run_ended, lambda state: self._lost(guest, state))
        try:
            return run_launcher(guest, self.mode.launch_spec(guest), on_started=lambda pgid: self._started(guest, pgid),
                                on_stdout=self.io.out, on_stderr=self.io.err)
        finally:
            self.run_ended.set()
            self.mode.run_ended()

    def _started(self, guest: Guest, pgid: int) -> None:
        with self._lock:
            self._pgid = pgid
        self.mode.started(guest, pgid)

    def _lost(self, guest: Guest, state: str) -> None:
        self._guest_lost = f"the guest {guest.name} stopped while the command ran (state {state})"
        log.error("%s", self._guest_lost)

    def _enter(self, phase: SessionPhase) -> None:
        self._check_cancel(f"killed before the {phase.value} phase")
        self._phase = phase

    def _check_cancel(self, why: str) -> None:
        if self.cancelled.is_set():
            raise Cancelled(why)

    def _timed(self, phase: SessionPhase, step: Callable[[], object]) -> ExitStatus:
        self._phase = phase
        started = self._clock.monotonic()
        result = step()
        elapsed = self._clock.monotonic() - started
        self._timings[phase.value] = round(elapsed, 3)
        self.io.progress(phase.value, elapsed)
        return result  # type: ignore[return-value]

    # --- killing -------------------------------------------------------------------------
    def kill(self, reason: str, grace_s: float, *, sigkill_wait_s: float = DESTROY_AFTER_SIGKILL_S,
             only_before_start: bool = False) -> bool:
        """Start stopping the session; returns at once (the ladder runs on its own thread).

        The first kill's reason is the one reported; later kills change nothing. With
        ``only_before_start`` nothing happens once the command runs (a launch budget that
        must not kill a command that did start). True if this call started the ladder.
        """
        with self._lock:
            if self._kill_reason is not None or self._phase is SessionPhase.ENDED:
                return False
            if only_before_start and self._pgid is not None:
                return False
            self._kill_reason = reason
            self.cancelled.set()
        threading.Thread(target=self.kill_ladder, args=(grace_s, sigkill_wait_s), daemon=True,
                         name=f"kill-{self.name}").start()
        return True

    def kill_ladder(self, grace_s: float, sigkill_wait_s: float) -> list[KillStep]:
        """The ladder itself, synchronous (on the kill thread; called directly by tests)."""
        with self._lock:
            guest, pgid = self._guest, self._pgid
        if guest is None or pgid is None:
            self._power_off()
            return [KillStep.CANCEL]
        steps = [KillStep.SIGTERM]
        self._signal(guest, pgid, signal.SIGTERM)
        if self._clock.wait(self.run_ended, grace_s):
            return steps
        steps.append(KillStep.SIGKILL)
        self._signal(guest, pgid, signal.SIGKILL)
        if self._clock.wait(self.run_ended, sigkill_wait_s):
            return steps
        log.warning("%s: the command outlived SIGKILL by %.1f s: powering the guest off", self.name, sigkill_wait_s)
        steps.append(KillStep.POWER_OFF)
        self._power_off()
        return steps

    def _signal(self, guest: Guest, pgid: int, signum: int) -> None:
        try:
            signal_task(guest, pgid, signum)
        except VmIsolationError as exc:
            log.warning("%s: could not send signal %d to the task: %s", self.name, signum, exc)

    def _power_off(self) -> None:
        try:
            self.factory.power_off(self.name)
        except VmIsolationError as exc:
            log.warning("%s: could not power the guest off: %s", self.name, exc)
