"""Running a launcher in a booted guest: send it, start it, watch for its start marker.

The launcher's first stderr line is its start marker (see bin/vmLauncherTemplate.sh.j2); it is
taken off the stream here and reported through ``on_started`` with the task's process group,
so "running" is only ever said once the task's process really exists in the guest.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

from .errors import TransferError, VmIsolationError
from .guest import Guest
from .launch_script import LaunchSpec, parse_started, render_launcher
from .statuses import ExitStatus

log = logging.getLogger(__name__)
Sink = Callable[[bytes], None]
GUEST_WATCH_INTERVAL_S = 1.0


class _MarkerSplitter:
    """Passes stderr through, except the first line, which must be the start marker."""

    def __init__(self, nonce: str, on_started: Callable[[int], None], sink: Sink) -> None:
        self._nonce = nonce
        self._on_started = on_started
        self._sink = sink
        self.head = b""
        self.seen = False
        """The first stderr line has come (the marker or the launcher's own words)."""
        self.started = False
        """It was the start marker."""

    def __call__(self, chunk: bytes) -> None:
        if self.seen:
            self._sink(chunk)
            return
        self.head += chunk
        line, newline, rest = self.head.partition(b"\n")
        if not newline:
            return
        self.seen = True
        pgid = parse_started(line.decode("utf-8", "replace"), self._nonce)
        if pgid is None:
            self._sink(self.head)  # the launcher failed before starting the task: keep its words
            return
        self.started = True
        self._on_started(pgid)
        if rest:
            self._sink(rest)

    def flush(self) -> None:
        if not self.seen and self.head:
            self._sink(self.head)


def run_launcher(
    guest: Guest,
    spec: LaunchSpec,
    *,
    on_started: Callable[[int], None],
    on_stdout: Sink,
    on_stderr: Sink,
) -> ExitStatus:
    """Upload ``spec``'s launcher, run it to completion, return the task's exit status."""
    script_path = launcher_path(spec.nonce)
    # Inside the guest, so it goes with the overlay; recorded so the journal is complete.
    guest.journal.creating("launcher", guest.name, path=script_path)
    splitter = _MarkerSplitter(spec.nonce, on_started, on_stderr)
    code = guest.remote.run(launch_command(script_path), stdin=render_launcher(spec).encode(), on_stdout=on_stdout,
                            on_stderr=splitter)
    splitter.flush()
    if code == WRITE_FAILED and not splitter.started:
        raise TransferError(f"could not write the launcher to {script_path} in {guest.name}: "
                            f"{splitter.head.decode('utf-8', 'replace').strip()[:300] or 'no message'}",
                            phase="upload")
    return ExitStatus(code)


WRITE_FAILED = 121
"""The launch command's status when the launcher could not be written (the template's own
set-up failures are 120)."""


def launcher_path(nonce: str) -> str:
    return f"/tmp/vmiso-launch-{nonce}.sh"


def launch_command(script_path: str) -> str:
    """One SSH exec that writes the launcher (sent on stdin, 0600) and runs it: one channel and
    one guest shell instead of an SFTP session for the file and a second channel to run it
    (~60 ms less before TASK_RUNNING under emulation). ``cat`` reads the script to EOF, so the
    task's stdin is at EOF as before; ``script_path`` is ours (hex nonce), never a task's value."""
    return f"umask 077; cat > {script_path} || exit {WRITE_FAILED}; exec /bin/sh {script_path}"


def watch_guest(state_of: Callable[[str], Optional[str]], guest: Guest, until: threading.Event,
                on_lost: Callable[[str], None], interval_s: float = GUEST_WATCH_INTERVAL_S) -> threading.Thread:
    """Start a thread that, until ``until`` is set, checks every ``interval_s`` that the guest's
    domain still runs. If it stopped (powered off, crashed, destroyed from outside) it calls
    ``on_lost(state)`` and closes the guest's SSH session, which ends a run() in progress: the
    session would otherwise hang until TCP gives up, minutes later."""
    def watch() -> None:
        while not until.wait(interval_s):
            try:
                state = state_of(guest.name)
            except VmIsolationError as exc:
                log.warning("cannot read the state of %s: %s", guest.name, exc)
                continue
            if state != "running":
                on_lost(state or "gone")
                guest.remote.close()
                return

    thread = threading.Thread(target=watch, daemon=True, name=f"watch-{guest.name}")
    thread.start()
    return thread


def signal_task(guest: Guest, pgid: int, signum: int) -> None:
    """Send ``signum`` to the task's whole process group (it may already be gone)."""
    guest.remote.run(f"kill -{int(signum)} -- -{int(pgid)} 2>/dev/null; true", timeout_s=15)
