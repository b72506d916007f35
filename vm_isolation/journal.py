"""The sandbox journal: each resource of a guest is written down before it is created.

The domain's libvirt ``<metadata>`` names its owner, but it only exists once the domain is
defined; the overlay and the SSH key directory exist before that, and the DHCP lease outlives
an undefined domain. So the executor also keeps a journal in its sandbox:

    <sandbox>/.vm-isolation/journal.jsonl     (directory 0700, file 0600)

One JSON object per line, appended and flushed to disk before the resource is created:

    {"op": "owner", "framework_id", "executor_id", "container_id", "pid", "start_time",
     "owner_file", "t"}
    {"op": "create", "kind": "key_dir" | "overlay" | "seed" | "domain" | "lease" | "launcher" | "agent_port",
     "domain": "vmiso-...", "task_id", "path" | "mac" + "network" | "address", "t"}

(``seed``: a cloud-init guest's NoCloud volume next to its overlay, see :mod:`imagekinds.cloudinit`;
``agent_port``: wrap mode's opening of the agent's port for one guest, ``address`` is
"guest-ip:port"; see :mod:`hostfirewall`.)
    {"op": "remove", "kind", "domain", "t"}          after the resource is gone

:func:`read_journal` replays a journal into what was created and never removed; the reaper
(:mod:`reaper`) removes those once the owner recorded in the journal is gone. A torn last line
(a crash in the middle of a write) is skipped. Nothing secret is written: paths, names, MACs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from .domainxml import Owner
from .errors import StorageError

log = logging.getLogger(__name__)

JOURNAL_DIR = ".vm-isolation"
JOURNAL_FILE = "journal.jsonl"
KINDS = ("key_dir", "overlay", "seed", "domain", "lease", "launcher", "agent_port")


class ResourceJournal(Protocol):
    """What a guest's boot writes to (see :class:`Journal`; :data:`NO_JOURNAL` writes nothing)."""

    def creating(self, kind: str, domain: str, **detail: str) -> None: ...
    def removed(self, kind: str, domain: str) -> None: ...


class _NoJournal:
    def creating(self, kind: str, domain: str, **detail: str) -> None:
        pass

    def removed(self, kind: str, domain: str) -> None:
        pass


NO_JOURNAL: ResourceJournal = _NoJournal()


def journal_path(sandbox: Path) -> Path:
    return sandbox / JOURNAL_DIR / JOURNAL_FILE


class Journal:
    """An append-only journal file; thread-safe, one write + fdatasync per record."""

    def __init__(self, path: Path, owner: Owner, *, wallclock: Callable[[], float] = time.time) -> None:
        """Open (append to) ``path`` and record ``owner``; StorageError if that is impossible."""
        self.path = path
        self._lock = threading.Lock()
        self._wallclock = wallclock
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open the journal {path}: {exc.strerror or exc}; the executor "
                               "records every guest resource there before creating it") from None
        try:
            self._write({"op": "owner", "framework_id": owner.framework_id, "executor_id": owner.executor_id,
                         "container_id": owner.container_id, "pid": owner.executor_pid,
                         "start_time": owner.executor_start_time, "owner_file": owner.owner_file})
        except StorageError:
            self.close()
            raise

    @classmethod
    def in_sandbox(cls, sandbox: Path, owner: Owner) -> Journal:
        return cls(journal_path(sandbox), owner)

    def creating(self, kind: str, domain: str, **detail: str) -> None:
        """Record that ``kind`` is about to be created; StorageError if it cannot be recorded
        (then it must not be created)."""
        self._write({"op": "create", "kind": kind, "domain": domain, **detail})

    def removed(self, kind: str, domain: str) -> None:
        """Record that ``kind`` is gone. Never raises: teardown goes on (the reaper's next pass
        finds the resource absent and skips it)."""
        try:
            self._write({"op": "remove", "kind": kind, "domain": domain})
        except StorageError as exc:
            log.warning("%s", exc)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps({**record, "t": round(self._wallclock(), 3)}, sort_keys=True) + "\n"
        with self._lock:
            if self._fd < 0:
                raise StorageError(f"the journal {self.path} is closed")
            try:
                os.write(self._fd, line.encode())
                os.fdatasync(self._fd)
            except OSError as exc:
                raise StorageError(f"cannot write the journal {self.path}: {exc.strerror or exc}; "
                                   "free space in the agent's work directory") from None


# --- reading ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resource:
    """A resource created and (as far as the journal knows) never removed."""

    kind: str
    domain: str
    task_id: str = ""
    path: str = ""
    mac: str = ""
    network: str = ""
    address: str = ""
    """agent_port: "guest-ip:port"."""


@dataclass
class JournalState:
    path: Path
    owner: Optional[Owner] = None
    outstanding: list[Resource] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Lines that could not be read (a torn last line is the usual one)."""


def read_journal(path: Path) -> JournalState:
    """Replay ``path``: its owner and what was created but not removed, oldest first.

    Raises OSError if the file cannot be read at all.
    """
    state = JournalState(path)
    live: dict[tuple[str, str], Resource] = {}
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            record = _parse_line(raw)
            if record is None:
                state.problems.append(f"{path}:{number}: not a journal record; skipped")
                continue
            op, kind, domain = record.get("op"), str(record.get("kind", "")), str(record.get("domain", ""))
            if op == "owner" and state.owner is None:
                state.owner = Owner(framework_id=str(record.get("framework_id", "")),
                                    executor_id=str(record.get("executor_id", "")),
                                    container_id=str(record.get("container_id", "")),
                                    executor_pid=_int(record.get("pid")),
                                    executor_start_time=str(record.get("start_time", "")),
                                    owner_file=str(record.get("owner_file", "")))
            elif op == "create" and kind in KINDS and domain:
                live[(kind, domain)] = Resource(kind, domain, **{
                    k: str(record[k]) for k in ("task_id", "path", "mac", "network", "address") if k in record})
            elif op == "remove":
                live.pop((kind, domain), None)
                if kind == "overlay":  # the launcher script lived on the guest's overlay
                    live.pop(("launcher", domain), None)
            else:
                state.problems.append(f"{path}:{number}: unknown record {str(op)[:40]!r}; skipped")
    state.outstanding = list(live.values())
    return state


def _parse_line(raw: bytes) -> Optional[dict[str, Any]]:
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def earlier_runs(sandbox: Path) -> list[Path]:
    """The journals of this executor's earlier runs: ``runs/<container>/`` siblings of ``sandbox``
    in the agent's layout (``.../executors/<id>/runs/<container>``), never ``sandbox``'s own."""
    own = sandbox.resolve()
    found = []
    try:
        siblings = sorted(sandbox.parent.iterdir())
    except OSError:
        return []
    for run_dir in siblings:
        if run_dir.is_symlink() or run_dir.resolve() == own:
            continue  # runs/latest points at a run that is listed anyway
        candidate = journal_path(run_dir)
        if candidate.is_file() and not candidate.is_symlink():
            found.append(candidate)
    return found


SANDBOX_GLOB = "slaves/*/frameworks/*/executors/*/runs/*"
"""Executor sandboxes under a Mesos agent's ``--work_dir``."""


def journals_under(work_dir: Path) -> list[Path]:
    """Every journal in the sandboxes under an agent's work directory (each once: the
    ``runs/latest`` symlink is skipped)."""
    found = []
    for run_dir in sorted(work_dir.glob(SANDBOX_GLOB)):
        candidate = journal_path(run_dir)
        if not run_dir.is_symlink() and candidate.is_file() and not candidate.is_symlink():
            found.append(candidate)
    return found
