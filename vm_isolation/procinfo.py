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
