"""What /proc says about a process: who owns a guest is recorded as (pid, start time), so a
reused pid is never mistaken for the owner."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path
from typing import Optional

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


_STATX_BTIME = 0x800
_AT_FDCWD = -100
_STATX_SIZE = 256
_BTIME_OFFSET = 80  # struct statx: stx_btime follows mask..attributes_mask and stx_atime


def birth_time(path: Path) -> Optional[float]:
    """When ``path`` was created (statx's btime, Unix time), or None where the kernel, libc or
    filesystem cannot tell. Python 3.11 has no os.statx; this is the one ctypes call for it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        statx = libc.statx
    except (OSError, AttributeError):
        return None
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if statx(_AT_FDCWD, os.fsencode(path), 0, _STATX_BTIME, buf) != 0:
        return None
    (mask,) = struct.unpack_from("<I", buf.raw, 0)
    if not mask & _STATX_BTIME:
        return None
    seconds, nanoseconds = struct.unpack_from("<qI", buf.raw, _BTIME_OFFSET)
    return seconds + nanoseconds / 1e9 if seconds > 0 else None  # some filesystems report 0


def process_start_wallclock(pid: int, proc: Path = PROC) -> Optional[float]:
    """Unix time ``pid`` started (its stat start time after the boot time in /proc/stat)."""
    ticks = start_time(pid, proc)
    try:
        btime = next(int(line.split()[1]) for line in (proc / "stat").read_text().splitlines()
                     if line.startswith("btime "))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return btime + int(ticks) / os.sysconf("SC_CLK_TCK") if ticks else None
