"""A real Mesos cluster for tests: one mesos-master and its mesos-agents, started from MESOS_HOME.

Each daemon gets a temporary work directory, a free port and a log file in the test's tmp dir.
Readiness is read over HTTP (the master's ``/master/state`` lists the agent under ``slaves``;
the agent's ``/state`` has its id). :meth:`MesosCluster.stop` tears every framework down
through the master, waits until the agents have no container left (so every executor they
started has exited), stops the daemons, and only then SIGKILLs any executor that survived,
which it reports as an error. Nothing here sleeps except through ``poll_until``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from vm_isolation.waiting import Deadline, WaitTimeout, poll_until

READY_S = 60.0
STOP_S = 60.0
HTTP_TIMEOUT_S = 5.0
# NOTE: the default isolation (posix/cpu,posix/mem) aborts the agent on this kind of host
# ("Check failed: !subsystemSet.empty()"); the cgroups isolators work.
ISOLATION = "cgroups/cpu,cgroups/mem"
CGROUP_HIERARCHIES = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class MesosHome:
    """A Mesos installation (``make install`` layout): sbin/, bin/, libexec/mesos/."""

    root: Path

    @property
    def master(self) -> Path:
        return self.root / "sbin" / "mesos-master"

    @property
    def agent(self) -> Path:
        return self.root / "sbin" / "mesos-agent"

    @property
    def execute(self) -> Path:
        return self.root / "bin" / "mesos-execute"

    @property
    def libexec(self) -> Path:
        return self.root / "libexec" / "mesos"

    def problem(self) -> Optional[str]:
        """Why this is not a usable Mesos, or None."""
        for path in (self.master, self.agent, self.execute, self.libexec / "mesos-containerizer",
                     self.libexec / "mesos-fetcher", self.libexec / "mesos-executor"):
            if not os.access(path, os.X_OK):
                return f"{path} is missing or not executable"
        try:
            out = subprocess.run([str(self.agent), "--version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{self.agent} --version failed: {exc}"
        if out.returncode != 0 or not out.stdout.startswith("mesos "):
            return (f"{self.agent} --version exited {out.returncode}: {(out.stdout + out.stderr).strip()[-500:]} "
                    f"(runtime libraries missing? run {self.root / 'install-runtime.sh'})")
        return None


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def http_json(url: str, timeout_s: float = HTTP_TIMEOUT_S) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def _try_json(url: str) -> Any:
    try:
        return http_json(url)
    except (OSError, ValueError):
        return None


class Daemon:
    """One mesos-master or mesos-agent process, its output in a log file."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout_s)


@dataclass
class Agent:
    """A running mesos-agent."""

    daemon: Daemon
    ip: str
    port: int
    work_dir: Path
    launcher_dir: Path
    cgroups_root: str
    id: str = ""
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def state(self) -> Any:
        return http_json(f"{self.url}/state")

    def containers(self) -> list[Any]:
        found = http_json(f"{self.url}/containers")
        return list(found) if isinstance(found, list) else []

    def executor_pid(self, executor_id: str) -> Optional[int]:
        """The host pid of a live executor, as the agent's /containers reports it (None: not there)."""
        try:
            containers = self.containers()
        except (OSError, ValueError):
            return None
        for c in containers:
            if c.get("executor_id") == executor_id and c.get("status", {}).get("executor_pid"):
                return int(c["status"]["executor_pid"])
        return None

    def executor_directory(self, framework_id: str, executor_id: str) -> str:
        """The sandbox of an executor, live or completed, as the agent's /state reports it."""
        state = self.state()
        for fw in state.get("frameworks", []) + state.get("completed_frameworks", []):
            if fw.get("id") != framework_id:
                continue
            for ex in fw.get("executors", []) + fw.get("completed_executors", []):
                if ex.get("id") == executor_id:
                    return str(ex["directory"])
        raise LookupError(f"agent {self.id} does not know executor {executor_id} of framework {framework_id}")

    def read_file(self, path: str) -> str:
        """A file through the agent's /files/read endpoint (what the web UI's sandbox view uses)."""
        query = urllib.parse.urlencode({"path": path, "offset": 0, "length": 4 * 1024 * 1024})
        return str(http_json(f"{self.url}/files/read?{query}")["data"])


@dataclass
class MesosCluster:
    """A master and its agents under ``base``; :meth:`stop` ends everything they started."""

    home: MesosHome
    base: Path
    master_ip: str = "127.0.0.1"
    master_port: int = 0
    master: Optional[Daemon] = None
    agents: list[Agent] = field(default_factory=list)
    killed_executors: list[str] = field(default_factory=list)

    @property
    def master_address(self) -> str:
        return f"{self.master_ip}:{self.master_port}"

    @property
    def master_url(self) -> str:
        return f"http://{self.master_address}"

    def start_master(self, flags: tuple[str, ...] = ()) -> None:
        """The master, with ``flags`` added (e.g. ``--agent_ping_timeout=1secs``)."""
        self.master_port = free_port(self.master_ip)
        work = self.base / "master"
        work.mkdir(parents=True)
        self.master = Daemon("master", [str(self.home.master), f"--ip={self.master_ip}",
                                        f"--port={self.master_port}", f"--work_dir={work}",
                                        "--registry=in_memory", *flags], self.base / "master.log")
        poll_until(lambda: self._up(self.master, f"{self.master_url}/master/state"), Deadline.after(READY_S),
                   what="the master's /master/state")

    def start_agent(self, *, ip: str = "127.0.0.1", launcher_dir: Optional[Path] = None,
                    attributes: Optional[str] = None, resources: str = "cpus:2;mem:4096",
                    isolation: str = ISOLATION, flags: tuple[str, ...] = ()) -> Agent:
        """An agent registered with the master (it is listed under ``slaves``); ``flags`` are
        passed on as they are (e.g. ``--executor_registration_timeout=20secs``)."""
        port = free_port(ip)
        name = f"agent-{port}"
        work = self.base / name / "work"
        work.mkdir(parents=True)
        # Each agent its own cgroups root: a second agent on the host would otherwise treat
        # the first one's containers under the shared default root ("mesos") as orphans.
        cgroups_root = f"vmiso_test_{os.getpid()}_{port}"
        launcher = launcher_dir or self.home.libexec
        argv = [str(self.home.agent), f"--master={self.master_address}", f"--ip={ip}", f"--port={port}",
                f"--work_dir={work}", f"--launcher_dir={launcher}", "--no-systemd_enable_support",
                f"--resources={resources}", f"--isolation={isolation}", "--containerizers=mesos",
                f"--cgroups_root={cgroups_root}", *flags]
        if attributes:
            argv.append(f"--attributes={attributes}")
        agent = Agent(Daemon(name, argv, self.base / f"{name}.log"), ip, port, work, launcher, cgroups_root)
        self.agents.append(agent)
        self._wait_registered(agent)
        return agent

    def restart_agent(self, agent: Agent, *flags: str) -> None:
        """SIGKILL the agent (its executors live on, as after a crash) and start it again on the
        same port and work directory, with ``flags`` added (e.g. ``--recover=cleanup``); returns
        once it is registered again."""
        agent.daemon.process.kill()
        agent.daemon.process.wait()
        argv = [a for a in agent.daemon.argv if not a.startswith("--recover=")] + list(flags)
        agent.restarts += 1
        agent.daemon = Daemon(agent.daemon.name, argv, self.base / f"{agent.daemon.name}.{agent.restarts}.log")
        self._wait_registered(agent)

    def cleanup_agent(self, agent: Agent) -> int:
        """SIGKILL the agent, run it once with ``--recover=cleanup`` (it kills every executor it
        recovers, then exits by itself), and return that run's exit status; then start it again
        as before and wait until it is registered."""
        agent.daemon.process.kill()
        agent.daemon.process.wait()
        argv = [a for a in agent.daemon.argv if not a.startswith("--recover=")]
        agent.restarts += 1
        cleanup = Daemon(agent.daemon.name, [*argv, "--recover=cleanup"],
                         self.base / f"{agent.daemon.name}.{agent.restarts}.cleanup.log")
        code = cleanup.process.wait(READY_S)
        agent.daemon = Daemon(agent.daemon.name, argv, self.base / f"{agent.daemon.name}.{agent.restarts}.log")
        self._wait_registered(agent)
        return code

    def _wait_registered(self, agent: Agent) -> None:
        name = agent.daemon.name
        state = poll_until(lambda: self._up(agent.daemon, f"{agent.url}/state", key="id"), Deadline.after(READY_S),
                           what=f"{name}'s /state")
        agent.id = str(state["id"])
        poll_until(lambda: True if agent.id in self.registered_agents() else self._check_alive(agent.daemon),
                   Deadline.after(READY_S), what=f"{name} listed under the master's slaves")

    def registered_agents(self) -> set[str]:
        state = _try_json(f"{self.master_url}/master/state") or {}
        return {str(s["id"]) for s in state.get("slaves", []) if s.get("active")}

    def active_frameworks(self) -> list[str]:
        state = _try_json(f"{self.master_url}/master/state") or {}
        return [str(f["id"]) for f in state.get("frameworks", [])]

    def task_state(self, framework_id: str, task_id: str) -> str:
        """The state the master holds for a task, of a live or a completed framework."""
        state = http_json(f"{self.master_url}/master/state")
        for fw in state.get("frameworks", []) + state.get("completed_frameworks", []):
            if fw.get("id") == framework_id:
                for task in fw.get("tasks", []) + fw.get("completed_tasks", []):
                    if task.get("id") == task_id:
                        return str(task["state"])
        raise LookupError(f"the master does not know task {task_id} of framework {framework_id}")

    def teardown_framework(self, framework_id: str) -> None:
        """The operator's way: POST /master/teardown."""
        body = urllib.parse.urlencode({"frameworkId": framework_id}).encode()
        urllib.request.urlopen(f"{self.master_url}/master/teardown", data=body, timeout=HTTP_TIMEOUT_S).close()

    # --- stopping ------------------------------------------------------------------------
    def stop(self) -> None:
        """Tear frameworks down, wait for the agents' containers to go, stop the daemons;
        then SIGKILL executors that survived (recorded in :attr:`killed_executors`)."""
        pids = self._executor_pids()
        for framework_id in self.active_frameworks():
            with contextlib.suppress(OSError):
                self.teardown_framework(framework_id)
        with contextlib.suppress(WaitTimeout):
            poll_until(lambda: True if not self._executor_pids() else None, Deadline.after(STOP_S),
                       what="the agents' containers to end")
        pids |= self._executor_pids()
        for agent in self.agents:
            agent.daemon.stop()
        if self.master is not None:
            self.master.stop()
        for pid in sorted(pids):
            if _alive(pid):
                self.killed_executors.append(f"{pid}: {_cmdline(pid)}")
                os.kill(pid, signal.SIGKILL)
        for agent in self.agents:
            _remove_cgroups(agent.cgroups_root)
        _unmount_under(self.base)


    def _executor_pids(self) -> set[int]:
        pids: set[int] = set()
        for agent in self.agents:
            if not agent.daemon.alive():
                continue
            try:
                containers = agent.containers()
            except (OSError, ValueError):
                continue
            pids |= {int(c["status"]["executor_pid"]) for c in containers
                     if c.get("status", {}).get("executor_pid")}
        return pids

    # --- readiness -----------------------------------------------------------------------
    def _up(self, daemon: Optional[Daemon], url: str, key: Optional[str] = None) -> Any:
        assert daemon is not None
        self._check_alive(daemon)
        found = _try_json(url)
        if found is None or (key is not None and not found.get(key)):
            return None
        return found

    @staticmethod
    def _check_alive(daemon: Daemon) -> None:
        if not daemon.alive():
            raise RuntimeError(f"{daemon.name} exited with {daemon.process.returncode}; the end of "
                               f"{daemon.log}:\n{daemon.log_tail()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _remove_cgroups(root: str) -> None:
    """The agent leaves its (empty) cgroups root behind: remove it, deepest first."""
    for hierarchy in CGROUP_HIERARCHIES.iterdir() if CGROUP_HIERARCHIES.is_dir() else []:
        top = hierarchy / root
        if not top.is_dir():
            continue
        for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                path.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _unmount_under(base: Path) -> None:
    """An agent with the filesystem/linux isolator bind-mounts its work directory onto itself
    and leaves that mount behind; unmount whatever is mounted under ``base``, deepest first."""
    root = str(base.resolve())
    points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted({p for p in points if p == root or p.startswith(root + "/")}, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
