"""The SQLite store: what the scheduler writes is there after a reopen, even after a SIGKILL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vm_isolation.scheduler.model import parse_group
from vm_isolation.scheduler.store import GroupRecord, SqliteStore, StoreError, TaskRecord, open_store


def test_groups_tasks_and_the_framework_id_round_trip(tmp_path: Path) -> None:
    """Each kind of row comes back equal after close and reopen; removals stick."""
    spec = parse_group({"name": "web", "command": "sleep 1", "count": 2, "env": {"B": "2", "A": "1"}})
    store = SqliteStore(tmp_path / "s.db")
    store.set_framework_id("fw-1")
    store.put_group(GroupRecord(spec))
    store.put_group(GroupRecord(parse_group({"name": "db", "command": "x"}), deleting=True))
    store.put_task(TaskRecord("web-0", "web-0.aa", "agent-1", "running"))
    store.put_task(TaskRecord("web-1", "web-1.bb", "agent-2", "launching"))
    store.put_task(TaskRecord("web-1", "web-1.cc", "agent-2", "launching"))  # the instance's new task replaces it
    store.remove_task("web-0")
    store.close()
    again = SqliteStore(tmp_path / "s.db")
    assert again.framework_id() == "fw-1"
    assert again.groups() == {"db": GroupRecord(parse_group({"name": "db", "command": "x"}), True),
                              "web": GroupRecord(spec)}
    assert again.tasks() == {"web-1": TaskRecord("web-1", "web-1.cc", "agent-2", "launching")}
    again.set_framework_id(None)
    again.remove_group("db")
    assert again.framework_id() is None and list(again.groups()) == ["web"]


def test_a_write_survives_the_writer_being_killed(tmp_path: Path) -> None:
    """A process that writes and then dies by SIGKILL (no close) leaves its rows readable."""
    path = tmp_path / "s.db"
    code = ("import os, signal, sys; from pathlib import Path\n"
            "from vm_isolation.scheduler.store import SqliteStore, TaskRecord\n"
            "s = SqliteStore(Path(sys.argv[1])); s.set_framework_id('fw-9')\n"
            "s.put_task(TaskRecord('web-0', 'web-0.11', 'a', 'launching'))\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], timeout=60)
    assert done.returncode == -9
    store = SqliteStore(path)
    assert store.framework_id() == "fw-9" and list(store.tasks()) == ["web-0"]


def test_an_unusable_path_is_a_clear_error(tmp_path: Path) -> None:
    """A store under a regular file fails with StoreError naming the path."""
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="file"):
        SqliteStore(tmp_path / "file" / "s.db")


def test_store_uris(tmp_path: Path) -> None:
    """sqlite:PATH and a bare path open SQLite; an unknown scheme is refused."""
    open_store(f"sqlite:{tmp_path / 'a.db'}").close()
    open_store(str(tmp_path / "b.db")).close()
    with pytest.raises(ValueError, match="unknown store"):
        open_store("etcd:x")
