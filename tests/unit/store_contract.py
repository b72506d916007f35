"""The contract every scheduler Store keeps, run against each implementation."""

from __future__ import annotations

from typing import Callable

from vm_isolation.scheduler.model import parse_group
from vm_isolation.scheduler.store import GroupRecord, Store, TaskRecord


def check_store_contract(open_store: Callable[[], Store]) -> None:
    """What every Store must do: each kind of row comes back equal after close and reopen, a
    task row is replaced by the instance's next task, removals stick (run on SQLite here and
    on ZooKeeper in tests/mesos/test_scheduler_zk.py)."""
    spec = parse_group({"name": "web", "command": "sleep 1", "count": 2, "env": {"B": "2", "A": "1"}})
    store = open_store()
    store.set_framework_id("fw-1")
    store.put_group(GroupRecord(spec))
    store.put_group(GroupRecord(parse_group({"name": "db", "command": "x"}), deleting=True))
    store.put_task(TaskRecord("web-0", "web-0.aa", "agent-1", "running"))
    store.put_task(TaskRecord("web-1", "web-1.bb", "agent-2", "launching"))
    store.put_task(TaskRecord("web-1", "web-1.cc", "agent-2", "launching"))
    store.remove_task("web-0")
    store.remove_task("never-0")
    store.close()
    again = open_store()
    assert again.framework_id() == "fw-1"
    assert again.groups() == {"db": GroupRecord(parse_group({"name": "db", "command": "x"}), True),
                              "web": GroupRecord(spec)}
    assert again.tasks() == {"web-1": TaskRecord("web-1", "web-1.cc", "agent-2", "launching")}
    again.set_framework_id(None)
    again.remove_group("db")
    assert again.framework_id() is None and list(again.groups()) == ["web"]
    again.close()
