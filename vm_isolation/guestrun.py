"""Running a launcher in a booted guest: upload it, start it, watch for its start marker.

The launcher's first stderr line is its start marker (see bin/vmLauncherTemplate.sh.j2); it is
taken off the stream here and reported through ``on_started`` with the task's process group,
so "running" is only ever said once the task's process really exists in the guest.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

from .errors import VmIsolationError
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
        self._head = b""
        self._seen = False

    def __call__(self, chunk: bytes) -> None:
        if self._seen:
            self._sink(chunk)
            return
        self._head += chunk
        line, newline, rest = self._head.partition(b"\n")
        if not newline:
            return
        self._seen = True
        pgid = parse_started(line.decode("utf-8", "replace"), self._nonce)
        if pgid is None:
            self._sink(self._head)  # the launcher failed before starting the task: keep its words
            return
        self._on_started(pgid)
        if rest:
            self._sink(rest)

    def flush(self) -> None:
        if not self._seen and self._head:
            self._sink(self._head)


def run_launcher(
    guest: Guest,
    spec: LaunchSpec,
    *,
    on_started: Callable[[int], None],
    on_stdout: Sink,
    on_stderr: Sink,
) -> ExitStatus:
    """Upload ``spec``'s launcher, run it to completion, return the task's exit status."""
    script_path = f"/tmp/vmiso-launch-{spec.nonce}.sh"
    # Inside the guest, so it goes with the overlay; recorded so the journal is complete.
    guest.journal.creating("launcher", guest.name, path=script_path)
    guest.remote.put(render_launcher(spec).encode(), script_path, mode=0o700)
    splitter = _MarkerSplitter(spec.nonce, on_started, on_stderr)
    code = guest.remote.run(f"/bin/sh {script_path}", on_stdout=on_stdout, on_stderr=splitter)
    splitter.flush()
    return ExitStatus(code)


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
