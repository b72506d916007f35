"""Processes for the scheduler's real-cluster tests: the vm-isolation-scheduler CLI (SIGKILL
and start it at will) and a ZooKeeper server from Debian's ``zookeeper`` package."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from tests.mesos.cluster import free_port
from tests.mesos.framework import EXECUTOR
from vm_isolation.waiting import Deadline, poll_until

SCHEDULER = Path(sys.executable).parent / "vm-isolation-scheduler"
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")


class SchedulerProcess:
    """The real vm-isolation-scheduler CLI, its logs in ``base`` (one per run)."""

    def __init__(self, master: str, base: Path, store: Optional[str] = None, name: str = "sched") -> None:
        self.master, self.base, self.name = master, base, name
        self.port = free_port("127.0.0.1")
        self.store = store or f"sqlite:{base / 'scheduler.db'}"
        self.runs = 0
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def log(self) -> Path:
        return self.base / f"{self.name}.{self.runs}.log"

    def start(self, *, wait_registered: bool = True) -> None:
        self.runs += 1
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(SCHEDULER), "--master", self.master, "--listen", f"127.0.0.1:{self.port}", "--store",
                 self.store, "--executor", str(EXECUTOR), "--name", "vmiso-scheduler-test",
                 "--failover-timeout", "900", "--verbose"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait_registered:
            self.wait_registered(60)
        else:
            poll_until(lambda: True if self._health() is not None else None, Deadline.after(60),
                       what=f"{self.name}'s API")

    def wait_registered(self, timeout_s: float) -> None:
        poll_until(lambda: True if (self._health() or {}).get("registered") else None, Deadline.after(timeout_s),
                   what=f"{self.name} to register")

    def _health(self) -> Optional[dict[str, Any]]:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.process.returncode}: {self.log_tail()}")
        try:
            return dict(self.api("GET", "/v1/health")[1])
        except OSError:
            return None

    def health(self) -> dict[str, Any]:
        found = self._health()
        assert found is not None
        return found

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def instances(self, group: str) -> list[dict[str, Any]]:
        status, found = self.api("GET", f"/v1/instances/{group}")
        assert status == 200, found
        return list(found["instances"])


class ZooKeeperServer:
    """A standalone ZooKeeper (Debian's jar) on a free port with its data under ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port("127.0.0.1")
        self.process: Optional[subprocess.Popen[bytes]] = None

    @staticmethod
    def problem() -> Optional[str]:
        if not ZOOKEEPER_JAR.exists() or shutil.which("java") is None:
            return f"{ZOOKEEPER_JAR} or java is missing: apt-get install zookeeper"
        return None

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        data = self.base / "data"
        data.mkdir(parents=True)
        cfg = self.base / "zoo.cfg"
        cfg.write_text(f"tickTime=1000\ndataDir={data}\nclientPort={self.port}\nclientPortAddress=127.0.0.1\n"
                       "admin.enableServer=false\nmaxSessionTimeout=20000\n")
        with (self.base / "zookeeper.log").open("wb") as log:
            self.process = subprocess.Popen(
                ["java", "-Xmx128m", "-cp", str(ZOOKEEPER_JAR), "org.apache.zookeeper.server.ZooKeeperServerMain",
                 str(cfg)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        poll_until(self._answers, Deadline.after(60), what="ZooKeeper to answer")

    def _answers(self) -> Optional[bool]:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"zookeeper exited {self.process.returncode}: "
                                 f"{(self.base / 'zookeeper.log').read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"srvr")
                return True if b"Zookeeper version" in sock.recv(4096) else None
        except OSError:
            return None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
