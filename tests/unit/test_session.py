"""The task session on fakes: a kill at every phase does the right step of the ladder, the
ladder's waits are on the injected clock (fake time here), and the result maps to one status."""

from __future__ import annotations

import re
import threading
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.unit.fakes import LAUNCH, FakeClock, FakeDisks, FakeFirewall, FakeHypervisor, FakeRemote, fake_key_factory
from vm_isolation.config import Settings, VmSettings
from vm_isolation.domainxml import Owner
from vm_isolation.guest import Guest, GuestFactory, GuestRequest
from vm_isolation.launch_script import LaunchSpec
from vm_isolation.leases import Leases
from vm_isolation.session import KillStep, SessionIO, SessionPhase, TaskSession
from vm_isolation.statuses import ExitStatus, Reason, RunResult, TaskState, task_outcome
from vm_isolation.waiting import Deadline, poll_until

WAIT_S = 10.0
NAME = "vmiso-t-0123456789"


class ScriptedGuest:
    """The guest side of the session's SSH: the sandbox mkdir (held while ``upload_gate`` is
    clear), the launcher (start marker, then 'runs' until released) and kill commands (a signal
    in ``ends_on`` ends the command before the kill command returns). Anything else is refused."""

    def __init__(self, ends_on: frozenset[int] = frozenset({15})) -> None:
        self.ends_on = ends_on
        self.signals: list[int] = []
        self.release = threading.Event()
        self.upload_gate = threading.Event()
        self.upload_gate.set()
        self.uploading = threading.Event()
        self.session: TaskSession | None = None

    def connect(self, host: str, *, host_key: str, client_key: object, deadline: object,
                user: str = "root") -> FakeRemote:
        return FakeRemote(host, host_key, handler=self.handle)

    def handle(self, remote: FakeRemote, command: str, out: Callable[[bytes], None],
               err: Callable[[bytes], None]) -> int:
        if command.startswith("mkdir -p "):
            self.uploading.set()
            assert self.upload_gate.wait(WAIT_S)
            return 0
        killed = re.fullmatch(r"kill -(\d+) -- -(\d+) 2>/dev/null; true", command)
        if killed:
            signum = int(killed.group(1))
            self.signals.append(signum)
            if signum in self.ends_on:
                self.release.set()
                assert self.session is not None and self.session.run_ended.wait(WAIT_S)
            return 0
        launched = re.fullmatch(LAUNCH, command)
        if launched:
            err(f"VMISO-STARTED {launched.group(1)} 100\n".encode())
            assert self.release.wait(WAIT_S)
            return 128 + self.signals[-1] if self.signals else 0
        raise AssertionError(f"unexpected command in the guest: {command!r}")


class Mode:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.started_pgid = threading.Event()

    def prepare(self, guest: Guest, undo: ExitStack) -> None:
        self.calls.append("prepare")
        undo.callback(self.calls.append, "prepare undone")

    def launch_spec(self, guest: Guest) -> LaunchSpec:
        return LaunchSpec(workdir="/tmp", env={}, shell_command="sleep 1000")

    def started(self, guest: Guest, pgid: int) -> None:
        self.calls.append(f"started {pgid}")
        self.started_pgid.set()

    def run_ended(self) -> None:
        self.calls.append("run ended")

    def finish(self, guest: Guest, status: ExitStatus) -> None:
        self.calls.append(f"finish {status.code}")


World = tuple[TaskSession, ScriptedGuest, FakeHypervisor, Mode, FakeClock]


@pytest.fixture
def make_world(tmp_path: Path) -> Iterator[Callable[..., World]]:
    guests: list[ScriptedGuest] = []

    def make(*, gives_lease: bool = True, ends_on: frozenset[int] = frozenset({15})) -> World:
        settings = replace(Settings(), vm=VmSettings(overlay_dir=tmp_path / "o", key_dir=tmp_path / "k",
                                                     console_dir=tmp_path, boot_timeout_s=WAIT_S))
        hv = FakeHypervisor(gives_lease=gives_lease)
        guest = ScriptedGuest(ends_on)
        guests.append(guest)
        factory = GuestFactory(settings, hv, Leases(hv, status_dir=tmp_path / "none", release_command="true"),
                                domain_type="qemu", connect=guest.connect, make_key=fake_key_factory,
                                disks=FakeDisks(), firewall=FakeFirewall())
        sandbox = tmp_path / "sandbox"
        sandbox.mkdir(exist_ok=True)
        (sandbox / "input.txt").write_text("data")
        request = GuestRequest(name=NAME, base_image=tmp_path / "base.qcow2", owner=Owner(task_id="t"))
        clock = FakeClock()
        mode = Mode()
        session = TaskSession(factory, request, mode, SessionIO(out=lambda b: None, err=lambda b: None),
                              upload_from=sandbox, guest_sandbox="/mnt/mesos/sandbox", clock=clock)
        guest.session = session
        return session, guest, hv, mode, clock

    yield make
    for guest in guests:
        guest.release.set()
        guest.upload_gate.set()


def _run_in_thread(session: TaskSession) -> tuple[threading.Thread, list[RunResult]]:
    results: list[RunResult] = []
    thread = threading.Thread(target=lambda: results.append(session.run()), daemon=True)
    thread.start()
    return thread, results


def _wait(condition: Callable[[], bool], what: str) -> None:
    poll_until(lambda: True if condition() else None, Deadline.after(WAIT_S), interval_s=0.01, what=what)


def _finish(thread: threading.Thread, results: list[RunResult]) -> RunResult:
    thread.join(WAIT_S)
    assert results, "the session did not end"
    return results[0]


def test_a_command_that_ends_on_its_own_runs_every_phase_and_tears_down(make_world: Callable[..., World]) -> None:
    session, guest, hv, mode, _ = make_world()
    guest.release.set()
    result = session.run()
    assert result.exit == ExitStatus(0) and result.error is None and result.started
    assert mode.calls == ["prepare", "started 100", "run ended", "finish 0", "prepare undone"]
    assert {"upload", "run", "exit_status", "overlay", "ssh"} <= set(result.timings)
    assert session.phase is SessionPhase.ENDED and hv.domains == {}
    assert task_outcome(result).state is TaskState.FINISHED


def test_a_kill_before_the_boot_cancels_it_and_nothing_is_defined(make_world: Callable[..., World]) -> None:
    session, _, hv, mode, _ = make_world()
    assert session.kill("killed by the framework", 5.0)
    result = session.run()
    assert result.kill_reason == "killed by the framework" and not result.started
    assert ("define", NAME) not in hv.calls and mode.calls == []
    assert task_outcome(result).reason is Reason.KILLED_DURING_LAUNCH


def test_a_kill_while_booting_powers_the_domain_off_and_the_boot_ends(make_world: Callable[..., World]) -> None:
    session, _, hv, _, _ = make_world(gives_lease=False)
    thread, results = _run_in_thread(session)
    _wait(lambda: ("start", NAME) in hv.calls, "the domain to start")
    assert session.phase is SessionPhase.BOOT
    assert session.kill_ladder(5.0, 2.0) == [KillStep.CANCEL]
    assert hv.calls.count(("destroy", NAME)) >= 1
    session.kill("killed by the framework", 5.0)  # sets the reason; the boot notices the cancel
    result = _finish(thread, results)
    assert task_outcome(result).state is TaskState.KILLED and not result.started
    assert hv.domains == {}


def test_a_kill_during_the_upload_powers_off_and_the_command_never_starts(make_world: Callable[..., World]) -> None:
    session, guest, hv, mode, _ = make_world()
    guest.upload_gate.clear()
    thread, results = _run_in_thread(session)
    _wait(guest.uploading.is_set, "the upload to begin")
    assert session.phase is SessionPhase.UPLOAD
    assert session.kill("the executor was shut down", 1.0)
    _wait(lambda: ("destroy", NAME) in hv.calls, "the power-off")
    guest.upload_gate.set()
    result = _finish(thread, results)
    assert not result.started and "started 100" not in " ".join(mode.calls)
    assert task_outcome(result).reason is Reason.KILLED_DURING_LAUNCH
    assert guest.signals == []


@pytest.mark.parametrize(("ends_on", "steps", "waited"), [
    (frozenset({15}), [KillStep.SIGTERM], []),
    (frozenset({9}), [KillStep.SIGTERM, KillStep.SIGKILL], [3.0]),
    (frozenset(), [KillStep.SIGTERM, KillStep.SIGKILL, KillStep.POWER_OFF], [3.0, 0.5]),
])
def test_the_ladder_on_a_running_command_climbs_only_as_far_as_needed(
        make_world: Callable[..., World], ends_on: frozenset[int], steps: list[KillStep], waited: list[float]) -> None:
    session, guest, hv, mode, clock = make_world(ends_on=ends_on)
    thread, results = _run_in_thread(session)
    assert mode.started_pgid.wait(WAIT_S)
    assert session.kill_ladder(3.0, 0.5) == steps
    assert clock.sleeps == waited, "every wait of the ladder is on the session's clock"
    assert guest.signals == [15, 9][:len([s for s in steps if s is not KillStep.POWER_OFF])]
    guest.release.set()
    _finish(thread, results)
    teardown = 1
    assert hv.calls.count(("destroy", NAME)) == teardown + (KillStep.POWER_OFF in steps)


def test_a_killed_running_command_is_reported_killed_with_its_exit(make_world: Callable[..., World]) -> None:
    session, _, _, mode, _ = make_world()
    thread, results = _run_in_thread(session)
    assert mode.started_pgid.wait(WAIT_S)
    assert session.kill("killed by the framework", 3.0)
    assert not session.kill("a second kill", 3.0), "the first kill's reason is the one reported"
    result = _finish(thread, results)
    outcome = task_outcome(result)
    assert outcome.state is TaskState.KILLED and "SIGTERM" in outcome.message
    assert outcome.message.startswith("killed by the framework")


def test_a_launch_budget_kill_leaves_a_started_command_alone(make_world: Callable[..., World]) -> None:
    session, guest, _, mode, _ = make_world()
    thread, results = _run_in_thread(session)
    assert mode.started_pgid.wait(WAIT_S)
    assert not session.kill("over the registration budget", 0.0, only_before_start=True)
    assert guest.signals == [] and session.kill_reason is None
    guest.release.set()
    assert _finish(thread, results).exit == ExitStatus(0)
    assert not session.kill("too late", 1.0), "an ended session cannot be killed"


@pytest.mark.parametrize(("result", "state", "reason"), [
    (RunResult(exit=ExitStatus(0), started=True), TaskState.FINISHED, None),
    (RunResult(exit=ExitStatus(3), started=True), TaskState.FAILED, Reason.COMMAND_FAILED),
    (RunResult(exit=ExitStatus(143), started=True, kill_reason="k"), TaskState.KILLED, None),
    (RunResult(error=OSError("x"), started=True, guest_lost="gone"), TaskState.FAILED, Reason.COMMAND_FAILED),
    (RunResult(error=OSError("x"), started=True, guest_lost="gone", kill_reason="k"), TaskState.KILLED, None),
    (RunResult(error=OSError("x"), kill_reason="k"), TaskState.KILLED, Reason.KILLED_DURING_LAUNCH),
    (RunResult(error=OSError("x")), TaskState.FAILED, Reason.LAUNCH_FAILED),
])
def test_the_outcome_is_one_function_of_the_result(result: RunResult, state: TaskState,
                                                   reason: Reason | None) -> None:
    outcome = task_outcome(result)
    assert (outcome.state, outcome.reason) == (state, reason)
