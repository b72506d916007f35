"""The SQLite store: what the scheduler writes is there after a reopen, even after a SIGKILL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.store_contract import check_store_contract
from vm_isolation.scheduler.store import SqliteStore, StoreError, open_store


def test_the_sqlite_store_keeps_the_store_contract(tmp_path: Path) -> None:
    """check_store_contract on one SQLite file."""
    check_store_contract(lambda: SqliteStore(tmp_path / "s.db"))


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
    for bad in ("zk://", "zk://h:1", "zk://h:1/", "zk://h:1/a/../b", "zk:///a"):
        with pytest.raises(ValueError, match="ZooKeeper store"):
            open_store(bad)
