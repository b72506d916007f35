"""The scheduler's durable state: the interface and its SQLite implementation.

What must survive a SIGKILL of the scheduler at any instant lives here: the declared groups
(and whether each is being deleted), the mapping instance -> (task id, agent id, phase), and the
framework id. The scheduler writes a task record *before* it sends the launch, so a restart
always knows every task id it may have launched and asks the master about each (explicit
reconciliation) before it launches anything for that instance again.

:class:`SqliteStore` keeps everything in one file; every method is one transaction
(``sqlite3`` in autocommit mode plus ``BEGIN IMMEDIATE`` where two statements must go
together), with ``synchronous=FULL`` so that a committed write survives a crash of the
process and of the host.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

from .model import GroupSpec, group_from_json


@dataclass(frozen=True)
class GroupRecord:
    spec: GroupSpec
    deleting: bool = False


@dataclass(frozen=True)
class TaskRecord:
    """The one task an instance has (or last had)."""

    instance: str
    task_id: str
    agent_id: str
    phase: str
    """A :class:`~vm_isolation.scheduler.instances.Phase` value."""


class Store(Protocol):
    def framework_id(self) -> Optional[str]: ...
    def set_framework_id(self, framework_id: Optional[str]) -> None: ...
    def groups(self) -> dict[str, GroupRecord]: ...
    def put_group(self, record: GroupRecord) -> None: ...
    def remove_group(self, name: str) -> None: ...
    def tasks(self) -> dict[str, TaskRecord]: ...
    def put_task(self, record: TaskRecord) -> None: ...
    def remove_task(self, instance: str) -> None: ...
    def close(self) -> None: ...


class StoreError(Exception):
    """The store cannot be opened or used (the message names the file and the cause)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS groups (name TEXT PRIMARY KEY, spec TEXT NOT NULL, deleting INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (instance TEXT PRIMARY KEY, task_id TEXT NOT NULL UNIQUE,
                                  agent_id TEXT NOT NULL, phase TEXT NOT NULL);
"""


class SqliteStore:
    """:class:`Store` in one SQLite file (created with its directory if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from exc

    def _run(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {exc}") from exc

    def framework_id(self) -> Optional[str]:
        rows = self._run("SELECT value FROM meta WHERE key = 'framework_id'")
        return str(rows[0][0]) if rows else None

    def set_framework_id(self, framework_id: Optional[str]) -> None:
        if framework_id is None:
            self._run("DELETE FROM meta WHERE key = 'framework_id'")
        else:
            self._run("INSERT OR REPLACE INTO meta (key, value) VALUES ('framework_id', ?)", (framework_id,))

    def groups(self) -> dict[str, GroupRecord]:
        rows = self._run("SELECT name, spec, deleting FROM groups ORDER BY name")
        return {str(name): GroupRecord(group_from_json(json.loads(str(spec))), bool(deleting))
                for name, spec, deleting in rows}

    def put_group(self, record: GroupRecord) -> None:
        self._run("INSERT OR REPLACE INTO groups (name, spec, deleting) VALUES (?, ?, ?)",
                  (record.spec.name, json.dumps(record.spec.to_json(), sort_keys=True), int(record.deleting)))

    def remove_group(self, name: str) -> None:
        self._run("DELETE FROM groups WHERE name = ?", (name,))

    def tasks(self) -> dict[str, TaskRecord]:
        rows = self._run("SELECT instance, task_id, agent_id, phase FROM tasks ORDER BY instance")
        return {str(i): TaskRecord(str(i), str(t), str(a), str(p)) for i, t, a, p in rows}

    def put_task(self, record: TaskRecord) -> None:
        self._run("INSERT OR REPLACE INTO tasks (instance, task_id, agent_id, phase) VALUES (?, ?, ?, ?)",
                  (record.instance, record.task_id, record.agent_id, record.phase))

    def remove_task(self, instance: str) -> None:
        self._run("DELETE FROM tasks WHERE instance = ?", (instance,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_store(uri: str) -> Store:
    """``sqlite:PATH`` (or a bare path) -> :class:`SqliteStore`, ``zk://HOSTS/PATH`` -> ZkStore;
    ValueError for anything else."""
    scheme, sep, rest = uri.partition(":")
    if sep and scheme == "sqlite":
        return SqliteStore(Path(rest))
    if sep and scheme == "zk":
        hosts, root = parse_zk_uri(uri)
        from .zkstore import ZkStore  # only then is kazoo needed
        return ZkStore(hosts, root)
    if not sep or "/" in scheme:
        return SqliteStore(Path(uri))
    raise ValueError(f"unknown store {uri!r}: use sqlite:PATH or zk://HOST:PORT[,...]/PATH")


def parse_zk_uri(uri: str) -> tuple[str, str]:
    """``zk://h1:2181,h2:2181/vm-isolation/scheduler`` -> (hosts, root path)."""
    rest = uri[len("zk://"):] if uri.startswith("zk://") else ""
    hosts, slash, root = rest.partition("/")
    if not hosts or not slash or not root.strip("/"):
        raise ValueError(f"ZooKeeper store {uri!r} is not zk://HOST:PORT[,HOST:PORT...]/PATH")
    if any(part in ("", ".", "..") for part in root.strip("/").split("/")):
        raise ValueError(f"ZooKeeper store {uri!r}: the path must not have empty, . or .. components")
    return hosts, "/" + root.strip("/")
