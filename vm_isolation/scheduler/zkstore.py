"""The scheduler's durable state in ZooKeeper, and its leader election: the only module that
imports kazoo.

Layout under ``ROOT`` (default ``/vm-isolation/scheduler/<framework name>``)::

    framework_id          data: the framework id (absent until the first registration)
    groups/<name>         data: {"spec": {...}, "deleting": bool}
    tasks/<instance>      data: {"task_id": ..., "agent_id": ..., "phase": ...}
    leader/               kazoo's Lock recipe: the scheduler holding it is the one that acts

Names are safe path components by construction (:data:`~.model.NAME_PATTERN`), and every
stored value is JSON. Each :class:`Store` method is one synchronous ZooKeeper call, so a
write the method returned from is durable (ZooKeeper acknowledges after a quorum logged it).

Leadership: :meth:`ZkStore.wait_for_leadership` blocks until this process holds the lock. A
leader whose ZooKeeper session is lost must stop acting at once — another may be elected —
so ``on_lost`` is called (the CLI exits non-zero and its supervisor restarts it as a standby).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable, Optional

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError

from .model import group_from_json
from .store import GroupRecord, StoreError, TaskRecord

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 30.0


class ZkStore:
    """:class:`~.store.Store` in ZooKeeper (``hosts``: ``host:port[,host:port...]``)."""

    def __init__(self, hosts: str, root: str, *, on_lost: Callable[[], None] = lambda: None) -> None:
        self.root = root.rstrip("/")
        self.on_lost = on_lost
        self._leader = threading.Event()
        try:
            self._zk = KazooClient(hosts=hosts, timeout=10.0)
            self._zk.add_listener(self._state)
            self._zk.start(timeout=CONNECT_TIMEOUT_S)
            for sub in ("groups", "tasks", "leader"):
                self._zk.ensure_path(f"{self.root}/{sub}")
        except (KazooException, OSError) as exc:
            raise StoreError(f"cannot use ZooKeeper {hosts} at {self.root}: {exc!r}") from exc
        self._lock = self._zk.Lock(f"{self.root}/leader")

    def _state(self, state: str) -> None:
        # NOTE: kazoo calls listeners on its own thread; they must not block.
        if state == KazooState.LOST and self._leader.is_set():
            log.error("the ZooKeeper session was lost: this scheduler is no longer the leader")
            self._leader.clear()
            self.on_lost()
        elif state == KazooState.SUSPENDED:
            log.warning("the ZooKeeper connection is suspended (reconnecting)")

    # --- leadership ---------------------------------------------------------------------------
    def wait_for_leadership(self, identifier: str, stop: threading.Event) -> bool:
        """Block until this process leads (True) or ``stop`` is set (False)."""
        self._lock.identifier = identifier
        while not stop.is_set():
            try:
                if self._lock.acquire(timeout=1.0):
                    self._leader.set()
                    return True
            except KazooException as exc:  # a lock timeout is not an error: try again
                log.debug("leader election: %r", exc)
        return False

    def leader(self) -> Optional[str]:
        """The identifier of the leading scheduler, if any."""
        contenders = self._lock.contenders()
        return str(contenders[0]) if contenders else None

    @property
    def is_leader(self) -> bool:
        return self._leader.is_set()

    # --- the store ------------------------------------------------------------------------------
    def _get(self, path: str) -> Optional[Any]:
        try:
            data, _ = self._zk.get(f"{self.root}/{path}")
        except NoNodeError:
            return None
        except KazooException as exc:
            raise StoreError(f"ZooKeeper {self.root}/{path}: {exc!r}") from exc
        return json.loads(data.decode())

    def _put(self, path: str, value: Any) -> None:
        full, data = f"{self.root}/{path}", json.dumps(value, sort_keys=True).encode()
        try:
            try:
                self._zk.set(full, data)
            except NoNodeError:
                try:
                    self._zk.create(full, data, makepath=True)
                except NodeExistsError:
                    self._zk.set(full, data)
        except KazooException as exc:
            raise StoreError(f"ZooKeeper {full}: {exc!r}") from exc

    def _delete(self, path: str) -> None:
        try:
            self._zk.delete(f"{self.root}/{path}")
        except NoNodeError:
            pass
        except KazooException as exc:
            raise StoreError(f"ZooKeeper {self.root}/{path}: {exc!r}") from exc

    def _children(self, path: str) -> list[str]:
        try:
            return sorted(self._zk.get_children(f"{self.root}/{path}"))
        except KazooException as exc:
            raise StoreError(f"ZooKeeper {self.root}/{path}: {exc!r}") from exc

    def framework_id(self) -> Optional[str]:
        found = self._get("framework_id")
        return str(found) if found is not None else None

    def set_framework_id(self, framework_id: Optional[str]) -> None:
        if framework_id is None:
            self._delete("framework_id")
        else:
            self._put("framework_id", framework_id)

    def groups(self) -> dict[str, GroupRecord]:
        out = {}
        for name in self._children("groups"):
            found = self._get(f"groups/{name}")
            if found is not None:
                out[name] = GroupRecord(group_from_json(found["spec"]), bool(found["deleting"]))
        return out

    def put_group(self, record: GroupRecord) -> None:
        self._put(f"groups/{record.spec.name}", {"spec": record.spec.to_json(), "deleting": record.deleting})

    def remove_group(self, name: str) -> None:
        self._delete(f"groups/{name}")

    def tasks(self) -> dict[str, TaskRecord]:
        out = {}
        for instance in self._children("tasks"):
            found = self._get(f"tasks/{instance}")
            if found is not None:
                out[instance] = TaskRecord(instance, str(found["task_id"]), str(found["agent_id"]),
                                           str(found["phase"]))
        return out

    def put_task(self, record: TaskRecord) -> None:
        self._put(f"tasks/{record.instance}",
                  {"task_id": record.task_id, "agent_id": record.agent_id, "phase": record.phase})

    def remove_task(self, instance: str) -> None:
        self._delete(f"tasks/{instance}")

    def close(self) -> None:
        try:
            if self._leader.is_set():
                self._lock.release()
            self._zk.stop()
            self._zk.close()
        except KazooException as exc:
            log.warning("closing the ZooKeeper client: %r", exc)
