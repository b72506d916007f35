"""What /proc says about a process: who owns a guest is recorded as (pid, start time), so a
reused pid is never mistaken for the owner."""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def stat_fields(pid: int, proc: Path = PROC) -> list[str]:
    """The fields of /proc/PID/stat after the command name, starting with the state (field 3).

    The command name (field 2) may hold spaces and ')', so the split is after the last ')'.
    Raises OSError (FileNotFoundError when there is no such process).
    """
    text = (proc / str(pid) / "stat").read_text()
    return text.rsplit(")", 1)[-1].split()


def start_time(pid: int, proc: Path = PROC) -> str:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), '' if unreadable."""
    try:
        fields = stat_fields(pid, proc)
    except OSError:
        return ""
    return fields[19] if len(fields) > 19 else ""


def own_start_time() -> str:
    return start_time(os.getpid())


class ProcProcessTable:
    """Which owners are alive, read from ``/proc`` (the reaper's ``ProcessTable``)."""

    def __init__(self, proc: Path = PROC) -> None:
        self._proc = proc

    def is_alive(self, pid: int, start_time: str) -> bool:
        if pid <= 0:
            return False
        try:
            rest = stat_fields(pid, self._proc)
        except (FileNotFoundError, ProcessLookupError):
            return False
        except OSError:
            return True  # cannot tell: never reap what might still be owned
        if not rest or rest[0] in ("Z", "X"):
            return False  # a zombie executor is gone; only its parent has not reaped it yet
        if not start_time:
            return True
        return len(rest) > 19 and rest[19] == start_time
