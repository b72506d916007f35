"""``os::killtree(pid, SIGKILL, groups=true, sessions=true)``, as the POSIX launcher destroys a container.

Starting at ``pid`` (or, if it already exited, at every process still in the process group
or session it led), visit children, process-group members and session members, stopping
each visited process with SIGSTOP so it cannot fork away while we look; then send the
signal to all of them and SIGCONT. The group and session of the root's parent (the agent
itself) are never followed. Linux only: processes are read from ``/proc``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    parent: int
    group: int
    session: int


def read_process(pid: int) -> Optional[ProcInfo]:
    """One process from ``/proc/<pid>/stat``, or None if it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may contain spaces or parentheses itself.
    fields = text[text.rindex(")") + 2:].split()
    return ProcInfo(pid, int(fields[1]), int(fields[2]), int(fields[3]))


def list_processes() -> list[ProcInfo]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = read_process(int(entry))
            if info is not None:
                found.append(info)
    return found


def killtree(pid: int, signum: int = signal.SIGKILL) -> set[int]:
    """Signal the process tree, process group and session of ``pid``; return the pids signalled."""
    processes = list_processes()
    root = next((p for p in processes if p.pid == pid), None)
    skip_groups: set[int] = set()
    skip_sessions: set[int] = set()
    if root is not None:
        parent = next((p for p in processes if p.pid == root.parent), None)
        if parent is not None:
            skip_groups.add(parent.group)
            skip_sessions.add(parent.session)
        start = [pid]
    else:
        start = [p.pid for p in processes if pid in (p.group, p.session)]
    visited = _stop_all(start, skip_groups, skip_sessions)
    for target in visited:
        _signal(target, signum)
        _signal(target, signal.SIGCONT)
    if visited:
        log.info("killtree %d: sent signal %d to %s", pid, signum, sorted(visited))
    return visited


def _stop_all(start: list[int], seen_groups: set[int], seen_sessions: set[int]) -> set[int]:
    pending = deque(start)
    visited: set[int] = set()
    while pending:
        current = pending.popleft()
        if current in visited or current == os.getpid():
            continue
        info = read_process(current)
        if info is None:
            continue
        _signal(current, signal.SIGSTOP)
        visited.add(current)
        # Re-read after the stop: the stopped process cannot add children any more.
        processes = list_processes()
        pending.extend(p.pid for p in processes if p.parent == current)
        if info.group not in seen_groups:
            seen_groups.add(info.group)
            pending.extend(p.pid for p in processes if p.group == info.group)
        if info.session not in seen_sessions:
            seen_sessions.add(info.session)
            pending.extend(p.pid for p in processes if p.session == info.session)
    return visited


def _signal(pid: int, signum: int) -> None:
    # Already gone, or not ours (its pid was reused): nothing to do.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)
