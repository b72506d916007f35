"""vm-isolation-scheduler: a Mesos framework that keeps groups of long-lived VM instances
running on VM-capable agents, declared through an HTTP API.

    vm-isolation-scheduler --master HOST:PORT|zk://HOST:PORT/mesos [--listen HOST:PORT]
                           [--store sqlite:PATH|zk://HOST:PORT[,...]/PATH]
                           [--attribute NAME:VALUE ...] [--name NAME]
                           [--user USER] [--role ROLE] [--failover-timeout SECONDS]
                           [--executor PATH] [--executor-config PATH] [--verbose]

It registers with checkpointing and a failover timeout, keeps its framework id in the store and
re-registers with it after a restart (kill it at any point: it reconciles with the master and
adopts what runs). With a ZooKeeper store several schedulers may run: one is elected leader and
acts, the others answer only ``/v1/health`` (503 elsewhere) until they are elected.
SIGTERM/SIGINT disconnect it without tearing the framework down: the instances keep running
until it comes back (or the failover timeout passes). Exit status 0 after SIGTERM/SIGINT, 1 when
the master removed the framework, the loop failed or the leader lost its ZooKeeper session, 2
for bad arguments or an unusable store.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from ..scheduler.api import Api, serve
from ..scheduler.core import InstanceScheduler
from ..scheduler.mesos_driver import MesosDriver
from ..scheduler.placement import parse_constraints
from ..scheduler.service import EventLoop
from ..scheduler.store import Store, StoreError, open_store
from ..scheduler.taskinfo import ExecutorCommand
from ..scheduler.zkstore import ZkStore
from ..waiting import SYSTEM_CLOCK
from .common import configure_logging

log = logging.getLogger("vm-isolation-scheduler")
DEFAULT_STORE = "sqlite:/var/lib/vm-isolation/scheduler.db"
DEFAULT_FAILOVER_S = 7 * 86400.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vm-isolation-scheduler", description=__doc__.split("\n\n")[0])
    p.add_argument("--master", required=True, help="HOST:PORT of a master, or zk://HOST:PORT[,...]/mesos")
    p.add_argument("--listen", default="127.0.0.1:8091", metavar="HOST:PORT", help="the HTTP API (default %(default)s)")
    p.add_argument("--store", default=DEFAULT_STORE,
                   help="durable state: sqlite:PATH or zk://HOST:PORT[,...]/PATH (default %(default)s)")
    p.add_argument("--attribute", action="append", default=None, metavar="NAME:VALUE",
                   help="agents must have this attribute (repeatable; default vt_enabled:1)")
    p.add_argument("--name", default="vm-isolation-scheduler", help="the framework's name")
    p.add_argument("--user", default="root", help="the user executors run as (with the agent's --switch_user)")
    p.add_argument("--role", default="*", help="the framework's role")
    p.add_argument("--failover-timeout", type=float, default=DEFAULT_FAILOVER_S, metavar="SECONDS",
                   help="how long the master keeps the framework's tasks while it is away (default one week)")
    p.add_argument("--executor", default=str(Path(sys.executable).parent / "vm-isolation-executor"),
                   help="vm-isolation-executor's path on the agents (default: next to this interpreter)")
    p.add_argument("--executor-config", help="--config PATH passed to the executor")
    p.add_argument("--verbose", action="store_true")
    return p


def _address(raw: str) -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--listen {raw!r} is not HOST:PORT")
    return host, int(port)


def _framework_info(args: argparse.Namespace) -> dict[str, Any]:
    return {"user": args.user, "name": args.name, "roles": [args.role], "checkpoint": True,
            "failover_timeout": float(args.failover_timeout),
            "capabilities": [{"type": "MULTI_ROLE"}, {"type": "TASK_KILLING_STATE"}]}


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging("vm-isolation-scheduler", args.verbose)
    try:
        required = parse_constraints(args.attribute if args.attribute is not None else ["vt_enabled:1"])
        host, port = _address(args.listen)
        if args.master.startswith(("zk://", "zoo://")) and importlib.util.find_spec("kazoo") is None:
            raise ValueError("a zk:// master needs the kazoo package (pip install kazoo)")
        store = open_store(args.store)
    except (ValueError, StoreError) as exc:
        print(f"vm-isolation-scheduler: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    lost = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    api = Api(None, standby=store.leader if isinstance(store, ZkStore) else lambda: None)
    server = serve(api, host, port)
    log.info("API on http://%s:%d/v1/instances; master %s", host, server.server_address[1], args.master)
    if isinstance(store, ZkStore):
        def on_lost() -> None:
            lost.set()
            stop.set()
        store.on_lost = on_lost
        log.info("standing by until this scheduler is elected leader")
        if not store.wait_for_leadership(f"{socket.gethostname()}:{server.server_address[1]}", stop):
            server.shutdown()
            store.close()
            return 0
        log.info("elected leader")
    code = _lead(args, store, required, api, stop)
    server.shutdown()
    store.close()
    if lost.is_set():
        print("vm-isolation-scheduler: lost the ZooKeeper session (no longer the leader): exiting", file=sys.stderr)
        return 1
    return code


def _lead(args: argparse.Namespace, store: Store, required: dict[str, str], api: Api, stop: threading.Event) -> int:
    """Run as the acting scheduler until ``stop`` is set or the loop fails."""
    executor = ExecutorCommand(args.executor, args.executor_config)
    loop: EventLoop
    driver = MesosDriver(args.master, _framework_info(args), lambda kind, payload: loop.post(kind, payload),
                         framework_id=store.framework_id())
    core = InstanceScheduler(store, driver, SYSTEM_CLOCK, executor, required=required)
    loop = EventLoop(core, on_exit=stop.set)
    loop.start()
    api.loop = loop
    log.info("framework id %s", store.framework_id() or "(new)")
    driver.start()
    stop.wait()
    api.loop = None
    driver.stop()
    loop.stop()
    if loop.failure is not None:
        print(f"vm-isolation-scheduler: {loop.failure}", file=sys.stderr)
        return 1
    log.info("stopped; the framework stays registered for its failover timeout")
    return 0
