"""Who owns a guest, judged by a lock the kernel drops when the owner dies — not by its pid.

An executor holds an exclusive ``flock`` on its own *owner file* for as long as it lives:

    <[vm] owner_dir>/<uuid>.owner      mode 0600, JSON: framework_id, executor_id, pid,
                                       start_time, journal (its sandbox journal), t

The kernel releases the lock the moment the process is gone, however it goes: SIGKILL of its
session or process group (the Mesos POSIX launcher), of its cgroup (the Linux launcher), the
OOM killer. Unlike a pid, the lock means the same thing in every pid namespace: under the
agent's ``namespaces/pid`` isolator ``os.getpid()`` is the pid inside the container, which on
the host is another process or none at all. So a reaper on the host asks the lock, and the
pid stays in the records only for people reading them.

The file is created under a temporary name, locked, written, and only then renamed into place
(the lock belongs to the open file, so it survives the rename): whoever lists ``owner_dir``
never sees an owner file that is not yet locked. A clean exit removes the file; a dead owner's
file is removed by the reaper once what its journal lists is gone.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import StorageError

log = logging.getLogger(__name__)

SUFFIX = ".owner"
MAX_RECORD_BYTES = 64 * 1024


class Liveness(enum.Enum):
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"
    """The lock could not be tried (permissions, I/O): never reap on that."""


@dataclass(frozen=True)
class OwnerRecord:
    """What an owner file says (written by its owner, so not trusted beyond being read)."""

    path: Path
    framework_id: str = ""
    executor_id: str = ""
    pid: int = 0
    start_time: str = ""
    journal: str = ""


class OwnerFile:
    """This process's owner file, locked until :meth:`release` or the process's death."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def create(cls, owner_dir: Path, *, framework_id: str = "", executor_id: str = "", pid: int = 0,
               start_time: str = "", journal: Optional[Path] = None) -> OwnerFile:
        """Create, lock and fill a new owner file in ``owner_dir``; StorageError if impossible."""
        name = uuid.uuid4().hex
        tmp, final = owner_dir / f".{name}.tmp", owner_dir / f"{name}{SUFFIX}"
        record = {"framework_id": framework_id, "executor_id": executor_id, "pid": pid,
                  "start_time": start_time, "journal": str(journal or ""), "t": round(time.time(), 3)}
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(
                f"cannot create an owner file in {owner_dir}: {exc.strerror or exc}; host set-up "
                f"(scripts/host-setup.sh) makes it (mode 1777), or set [vm] owner_dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, json.dumps(record, sort_keys=True).encode() + b"\n")
            os.fsync(fd)
            os.rename(tmp, final)
        except OSError as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write the owner file {final}: {exc.strerror or exc}") from None
        return cls(final, fd)

    def release(self) -> None:
        """Remove the file and drop the lock (a clean exit, after every guest is gone)."""
        if self._fd < 0:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove the owner file %s: %s", self.path, exc)
        os.close(self._fd)
        self._fd = -1


def liveness(path: Path) -> Liveness:
    """Whether the process that created owner file ``path`` still holds its lock.

    A missing file is a dead owner: the owner removes it only when it exits cleanly, and
    ``/run`` is empty after a reboot, when no owner survives either.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return Liveness.DEAD
    except OSError as exc:
        log.warning("cannot open the owner file %s (%s): its owner counts as alive", path, exc)
        return Liveness.UNKNOWN
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return Liveness.ALIVE
        log.warning("cannot try the lock of %s (%s): its owner counts as alive", path, exc)
        return Liveness.UNKNOWN
    finally:
        os.close(fd)  # also drops the shared lock, if it was taken
    return Liveness.DEAD


def is_owner_file_path(path: Path, owner_dir: Path) -> bool:
    """True for ``<owner_dir>/<32 hex>.owner`` exactly: the only paths the reaper deletes."""
    stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else ""
    return (path.parent == owner_dir and len(stem) == 32
            and all(c in "0123456789abcdef" for c in stem))


def owner_files(owner_dir: Path) -> list[Path]:
    """The owner files in ``owner_dir`` (temporary and foreign names skipped)."""
    try:
        entries = sorted(owner_dir.iterdir())
    except FileNotFoundError:
        return []
    return [p for p in entries if is_owner_file_path(p, owner_dir)]


def read_owner_file(path: Path) -> OwnerRecord:
    """The record in ``path``; fields that are missing or of the wrong type read as empty.
    Raises OSError if it cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        raw = os.read(fd, MAX_RECORD_BYTES)
    finally:
        os.close(fd)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = {}
    if not isinstance(data, dict):
        data = {}

    def text(key: str) -> str:
        value = data.get(key, "")
        return value if isinstance(value, str) else ""

    pid = data.get("pid", 0)
    return OwnerRecord(path, framework_id=text("framework_id"), executor_id=text("executor_id"),
                       pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else 0,
                       start_time=text("start_time"), journal=text("journal"))
