"""python -m bench.scheduler: what the scheduler's own parts cost on this host (SCALING.md).

    python -m bench.scheduler [--agents 1000] [--instances 5000] [--writes 500] [--zookeeper]

* store writes: ``put_task`` latency (each is one durable commit) on SQLite (fsync'd, in a
  temporary directory under /var/tmp) and, with --zookeeper, on a local ZooKeeper server from
  Debian's package (one node, its data on the same disk);
* decisions: one offer per agent from --agents agents, --instances instances in groups of 50
  placed by the real InstanceScheduler on a recording driver, once with the SQLite store and
  once with a store that keeps nothing (the decision cost alone).

Prints a Markdown table; nothing here talks to Mesos.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

from vm_isolation.scheduler.core import InstanceScheduler
from vm_isolation.scheduler.model import parse_group
from vm_isolation.scheduler.placement import Offer
from vm_isolation.scheduler.store import GroupRecord, SqliteStore, Store, TaskRecord
from vm_isolation.scheduler.taskinfo import ExecutorCommand


class _Driver:
    def __init__(self) -> None:
        self.launched = 0

    def launch(self, offer_id: str, tasks: list[dict[str, Any]]) -> None:
        self.launched += len(tasks)

    def decline(self, offer_ids: list[str], refuse_s: float) -> None: ...
    def kill(self, task_id: str, agent_id: str) -> None: ...
    def reconcile(self, tasks: list[tuple[str, str]]) -> None: ...
    def suppress(self) -> None: ...
    def revive(self) -> None: ...


class _NullStore:
    def framework_id(self) -> Optional[str]:
        return None

    def set_framework_id(self, framework_id: Optional[str]) -> None: ...
    def groups(self) -> dict[str, GroupRecord]:
        return {}

    def put_group(self, record: GroupRecord) -> None: ...
    def remove_group(self, name: str) -> None: ...
    def tasks(self) -> dict[str, TaskRecord]:
        return {}

    def put_task(self, record: TaskRecord) -> None: ...
    def remove_task(self, instance: str) -> None: ...
    def close(self) -> None: ...


def write_latencies_ms(store: Store, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        store.put_task(TaskRecord(f"bench-{i}", f"bench-{i}.x", "agent", "running"))
        out.append((time.perf_counter() - t0) * 1000)
    return out


class _SteppedClock:
    """Time that moves only when told (past the relaunch back-off), so the measured decisions
    are the scheduler's work, not its waits."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if not event.is_set():
            self.now += seconds
        return event.is_set()


def decisions(store: Store, agents: int, instances: int) -> tuple[float, int]:
    """Seconds to place ``instances`` on one offer per agent, and how many were launched."""
    clock = _SteppedClock()
    driver = _Driver()
    core = InstanceScheduler(store, driver, clock, ExecutorCommand("/x"))
    core.on_registered("fw")
    for g in range(instances // 50):
        core.create(parse_group({"name": f"g{g}", "command": "x", "count": 50, "cpus": 0.2, "mem": 128}))
    clock.now += 10
    offers = [Offer(f"o{a}", f"agent-{a}", f"h{a}", 8.0, 16384.0, {"vt_enabled": "1"}) for a in range(agents)]
    t0 = time.perf_counter()
    core.on_offers(offers)
    return time.perf_counter() - t0, driver.launched


def _row(what: str, ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100)
    rate = 1000 / statistics.mean(ms)
    return f"| {what} | {len(ms)} | {statistics.median(ms):.2f} | {q[94]:.2f} | {max(ms):.2f} | {rate:.0f} |"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scheduler", description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--instances", type=int, default=5000)
    p.add_argument("--writes", type=int, default=500)
    p.add_argument("--zookeeper", action="store_true", help="also measure a local ZooKeeper server")
    args = p.parse_args(argv)
    rows = ["| store write (put_task) | n | median ms | p95 ms | max ms | writes/s (1 client) |",
            "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        sqlite = SqliteStore(Path(tmp) / "bench.db")
        rows.append(_row("SQLite, synchronous=FULL, WAL", write_latencies_ms(sqlite, args.writes)))
        sqlite.close()
        if args.zookeeper:
            rows.append(_zookeeper_row(Path(tmp), args.writes))
        print("\n".join(rows))
        print()
        print(f"| placing {args.instances} instances on {args.agents} offers | seconds | launched | launches/s |")
        print("|---|---|---|---|")
        for name, make in (("decisions only (no store)", lambda: _NullStore()),
                           ("with the SQLite store", lambda: SqliteStore(Path(tmp) / "place.db"))):
            seconds, launched = decisions(make(), args.agents, args.instances)
            print(f"| {name} | {seconds:.2f} | {launched} | {launched / seconds:.0f} |")
    return 0


def _zookeeper_row(base: Path, n: int) -> str:
    from tests.mesos.schedulerproc import ZooKeeperServer
    from vm_isolation.scheduler.zkstore import ZkStore

    server = ZooKeeperServer(base / "zk")
    server.start()
    try:
        store = ZkStore(server.hosts, "/bench")
        try:
            return _row("ZooKeeper 3.8 (one local server)", write_latencies_ms(store, n))
        finally:
            store.close()
    finally:
        server.stop()



if __name__ == "__main__":
    raise SystemExit(main())
