"""Wrap mode: a framework's own executor runs inside one guest and reports to the agent itself.

``vm-isolation-executor --wrap -- CMD [ARG...]`` is the process the agent launched and watches.
It never subscribes (the agent keeps one subscriber per executor id and the newest wins);
instead it boots a guest, uploads the sandbox, and starts CMD there with the agent's
environment rewritten for the guest (:func:`guest_environment`), so the inner executor
subscribes from inside the VM. It starts in the guest counterpart of the wrapper's own working
directory (:func:`guest_workdir`: Hadoop runs ``cd <dir> && <executor command>``). The wrapper
lives exactly as long as the inner executor, streams its output into the sandbox, copies back
what it wrote, and exits with its status.
SIGTERM is forwarded; a guest that dies or an SSH session lost for good makes the wrapper exit
non-zero, so the agent reports the tasks as failed ("Executor terminated").
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

from . import sandbox
from .config import MesosEnvironment, Settings
from .domainxml import Owner
from .errors import HostError, VmIsolationError
from .guest import Guest, GuestFactory, GuestRequest
from .ids import domain_name_for
from .journal import NO_JOURNAL, ResourceJournal
from .launch_script import LaunchSpec, guest_base_environment
from .procinfo import birth_time, process_start_wallclock
from .session import SessionIO, TaskSession
from .statuses import ExitStatus, RunResult
from .warm import WarmFactory

log = logging.getLogger(__name__)

# Host paths that mean nothing in the guest, and the shell's own bookkeeping: not passed on.
HOST_ONLY_VARIABLES = frozenset({"MESOS_DOMAIN_SOCKET", "MESOS_NATIVE_JAVA_LIBRARY", "MESOS_NATIVE_LIBRARY",
                                 "PATH", "HOME", "PWD", "OLDPWD", "SHLVL", "_"})
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
EXIT_WRAPPER_FAILED = 1
REACH_TIMEOUT_S = 3


@dataclass(frozen=True)
class InnerCommand:
    """The framework's executor command: an argv, or a shell string."""

    argv: tuple[str, ...] = ()
    shell: Optional[str] = None
    tunnel: bool = False
    """When the guest cannot reach the agent directly, tunnel the endpoint over SSH (v1 only)."""


def guest_environment(env: MesosEnvironment, *, agent_endpoint: str, guest_ip: str,
                      guest_sandbox: str, home: str = "/root") -> dict[str, str]:
    """The environment the agent gave the wrapper, rewritten for an executor inside the guest.

    Everything the agent set is passed on (its MESOS_* variables, --executor_environment_variables,
    the ExecutorInfo's CommandInfo.environment such as HADOOP_OPTS or JAVA_HOME), except host-only
    paths, the shell's bookkeeping and our own VM_ISOLATION_* settings.

    The agent endpoint (v1: MESOS_AGENT_ENDPOINT; the C++ library and v0 drivers:
    MESOS_SLAVE_PID) becomes an address the guest can reach; the sandbox paths become the
    guest's; LIBPROCESS_IP and LIBPROCESS_ADVERTISE_IP become the guest's address so that a
    v0 (libprocess) executor binds there and the agent can connect back to it.
    """
    given = {**env.environment, **env.variables}
    variables = {k: v for k, v in given.items()
                 if k not in HOST_ONLY_VARIABLES and not k.startswith("VM_ISOLATION_") and _IDENTIFIER.fullmatch(k)}
    pid_id = variables.get("MESOS_SLAVE_PID", "slave(1)@").split("@", 1)[0] or "slave(1)"
    variables.update(
        MESOS_AGENT_ENDPOINT=agent_endpoint,
        MESOS_SLAVE_PID=f"{pid_id}@{agent_endpoint}",
        MESOS_DIRECTORY=guest_sandbox,
        MESOS_SANDBOX=guest_sandbox,
        LIBPROCESS_IP=guest_ip,
        LIBPROCESS_ADVERTISE_IP=guest_ip,
    )
    variables.update(guest_base_environment(home))
    return variables


def guest_workdir(host_sandbox: Path, host_cwd: Path, guest_sandbox: str) -> str:
    """The guest directory the inner executor starts in: the wrapper's working directory taken
    relative to the host sandbox (Hadoop on Mesos runs ``cd <dir> && <executor command>``),
    under the guest sandbox; the guest sandbox itself if that directory is outside the sandbox.

    Both paths are resolved first, so a symlink out of the sandbox counts as outside.
    """
    try:
        relative = host_cwd.resolve().relative_to(host_sandbox.resolve())
    except ValueError:
        return guest_sandbox
    return str(PurePosixPath(guest_sandbox, *relative.parts))


def inner_launch_spec(env: MesosEnvironment, command: InnerCommand, *, guest_ip: str, agent_endpoint: str,
                      guest_sandbox: str, host_cwd: Path, home: str = "/root") -> LaunchSpec:
    """What the launcher runs in the guest for the inner executor (values reach the shell only
    through the launcher's shlex.quote)."""
    variables = guest_environment(env, agent_endpoint=agent_endpoint, guest_ip=guest_ip, guest_sandbox=guest_sandbox,
                                  home=home)
    workdir = guest_workdir(env.directory, host_cwd, guest_sandbox)
    if command.shell is not None:
        return LaunchSpec(workdir=workdir, env=variables, shell_command=command.shell)
    return LaunchSpec(workdir=workdir, env=variables, executable=command.argv[0], arguments=command.argv)


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=REACH_TIMEOUT_S):
            return True
    except OSError:
        return False


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise HostError(f"MESOS_AGENT_ENDPOINT={endpoint!r} is not HOST:PORT")
    return host, int(port)


class Wrapper:
    """Runs one inner executor in one guest (the :class:`TaskSession`'s mode); :meth:`run`
    maps the session's result to the process exit status."""

    def __init__(self, settings: Settings, env: MesosEnvironment, launcher: GuestFactory | WarmFactory,
                 command: InnerCommand,
                 *, bridge_address: Callable[[], str], out: Callable[[bytes], None],
                 err: Callable[[bytes], None], journal: ResourceJournal = NO_JOURNAL,
                 owner: Optional[Owner] = None, wallclock: Callable[[], float] = time.time,
                 host_cwd: Optional[Path] = None) -> None:
        self.settings = settings
        self.env = env
        self.launcher = launcher
        self.command = command
        self._bridge_address = bridge_address
        self._err = err
        self._journal = journal
        self._owner = owner or Owner()
        """The executor's owner record (its owner file, pid and ids): recorded on the guest."""
        self._wallclock = wallclock
        self._host_cwd = host_cwd if host_cwd is not None else env.directory
        """Where the agent (or the framework's ``cd``) started us: mapped into the guest sandbox."""
        self.session = TaskSession(launcher, self._request(), self,
                                   SessionIO(out=out, err=err, progress=self._progress),
                                   upload_from=env.directory, guest_sandbox=settings.executor.guest_sandbox)
        self._endpoint = ""
        self._budget: Optional[threading.Timer] = None
        self._budget_s = 0.0
        self._terminating = False
        self._over_budget = False

    def run(self) -> int:
        spent = self._registration_window_spent_s()
        remaining = self.settings.executor.wrap_boot_budget_s - spent
        if remaining <= 0:
            self._say_over_budget(spent)
            return EXIT_WRAPPER_FAILED
        log.info("%.1f s of the registration window already spent (fetch, start-up): %.1f s left for boot, "
                 "SSH and the sandbox upload ([executor] wrap_boot_budget_s)", spent, remaining)
        self._budget_s = spent + remaining
        self._budget = threading.Timer(remaining, self._budget_expired)
        self._budget.daemon = True
        self._budget.start()
        try:
            result = self.session.run()
        finally:
            self._budget.cancel()
        return self._exit_status(result)

    def _exit_status(self, result: RunResult) -> int:
        """The inner executor's exit status; EXIT_WRAPPER_FAILED, saying why, if it never ended
        on its own."""
        if result.exit is not None and result.error is None:
            log.info("inner executor exited with %s", result.exit.describe())
            return result.exit.code
        if self._over_budget:
            self._say_over_budget(self._budget_s)
        elif self._terminating and not result.started:
            log.warning("terminated while the guest booted")
        elif result.started:
            log.error("lost the inner executor: %s", result.guest_lost or result.error)
        else:
            log.error("%s", result.error)
        return EXIT_WRAPPER_FAILED

    def _registration_window_spent_s(self) -> float:
        """Seconds since the agent's executor registration timer started: it starts before the
        fetch, right after the agent created the sandbox, so the sandbox's creation time is the
        best bound (our own process start where the filesystem keeps no creation time)."""
        started = birth_time(self.env.directory) or process_start_wallclock(os.getpid())
        return max(0.0, self._wallclock() - started) if started else 0.0

    def _budget_expired(self) -> None:
        """Stop whatever is in progress (boot, SSH, upload) unless the inner executor started."""
        self._over_budget = True
        if not self.session.kill("over the registration budget", 0.0, only_before_start=True):
            self._over_budget = False

    def _say_over_budget(self, seconds: float) -> None:
        log.error("the inner executor could not be started within %.0f s of the agent's executor registration "
                  "window ([executor] wrap_boot_budget_s, counted from the sandbox's creation: the fetch, the "
                  "boot, SSH and the sandbox upload): giving up now rather than letting the agent's "
                  "--executor_registration_timeout (1 min by default) expire silently; raise both for large "
                  "sandboxes or slow hosts", seconds)

    def terminate(self) -> None:
        """SIGTERM from the agent: forward it (the session's ladder: SIGKILL, then the guest
        powered off, all within the agent's shutdown grace period, which ends in our SIGKILL)."""
        self._terminating = True
        budget = max(0.5, self.env.shutdown_grace_period_s - 1.0)
        self.session.kill("terminated by the agent", budget * 0.75, sigkill_wait_s=budget * 0.25)

    # --- the session's mode hooks ------------------------------------------------------------
    def prepare(self, guest: Guest, undo: ExitStack) -> None:
        self._endpoint = self._reachable_agent_endpoint(guest, undo)

    def launch_spec(self, guest: Guest) -> LaunchSpec:
        return inner_launch_spec(self.env, self.command, guest_ip=guest.ip, agent_endpoint=self._endpoint,
                                 guest_sandbox=self.settings.executor.guest_sandbox, host_cwd=self._host_cwd,
                                 home=guest.home)

    def started(self, guest: Guest, pgid: int) -> None:
        if self._budget is not None:
            self._budget.cancel()
        log.info("inner executor started in %s (process group %d)", guest.name, pgid)

    def run_ended(self) -> None:
        """Nothing runs beside the inner executor."""

    def finish(self, guest: Guest, status: ExitStatus) -> None:
        if not self.settings.executor.wrap_copy_back:
            return
        try:
            n = sandbox.copy_back(guest.remote, self.settings.executor.guest_sandbox, self.env.directory)
            log.info("copied %d file(s) back from the guest sandbox", n)
        except VmIsolationError as exc:
            log.warning("could not copy files back from the guest: %s", exc)

    def _reachable_agent_endpoint(self, guest: Guest, undo: ExitStack) -> str:
        """host:port of the agent as the guest can reach it; HostError saying how to fix it.

        The check connects from the host to its own address on the guests' bridge: it tells
        whether the agent listens there. With ``[network] isolation = on`` the host is closed to
        guests, so that port is then opened for this guest only (:meth:`_open_agent_port`), until
        the inner executor is gone. The SSH tunnel needs no opening: it rides the host's own
        session into the guest.
        """
        host, port = split_endpoint(self.env.agent_endpoint)
        bridge = self._bridge_address()
        if _listening(bridge, port):
            self._open_agent_port(guest, port, undo)
            return f"{bridge}:{port}"
        if self.command.tunnel and _listening(host, port):
            guest.remote.forward_to_host(port, host, port)
            log.info("agent %s does not listen on %s, the host's address on the guests' network: tunnelled over "
                     "SSH to the guest's 127.0.0.1:%d (v1 HTTP executors only)", self.env.agent_endpoint, bridge, port)
            return f"127.0.0.1:{port}"
        raise HostError(
            f"the agent ({self.env.agent_endpoint}) is not reachable from the guest at {bridge}:{port}, the "
            f"host's address on the guests' network{', nor through the SSH tunnel' if self.command.tunnel else ''}: "
            f"start the agent with --ip={bridge} or --ip=0.0.0.0 so it listens there, or (v1 HTTP executors) "
            f"pass --tunnel to vm-isolation-executor")

    def _open_agent_port(self, guest: Guest, port: int, undo: ExitStack) -> None:
        """Let this guest (its leased IP, which the address guard keeps it from changing) reach the
        agent's port on the host's bridge address; journaled first, so a reaper closes it if we
        die, and closed before the guest is torn down."""
        if not self.settings.network.enforced:
            return
        firewall = self.launcher.firewall
        address = f"{guest.ip}:{port}"
        self._journal.creating("agent_port", guest.name, task_id=self._owner.task_id, address=address)

        def close() -> None:
            try:
                firewall.close_port(guest.ip, port)
            except VmIsolationError as exc:
                log.error("could not close the agent port %s of %s (%s); vm-isolation-reap will retry",
                          address, guest.name, exc)
                return
            self._journal.removed("agent_port", guest.name)
        undo.callback(close)
        firewall.open_port(guest.ip, port)
        log.info("opened the agent's port %d on the host's bridge address for %s (%s) only", port, guest.name,
                 guest.ip)

    def _progress(self, phase: str, seconds: float) -> None:
        self._err(f"vm-isolation: {phase} done ({seconds:.2f} s)\n".encode())

    def _request(self) -> GuestRequest:
        image = self.settings.executor.wrap_image
        return GuestRequest(
            name=domain_name_for(self.env.executor_id),
            base_image=self.settings.images.base(image),
            kernel=self.settings.images.kernel_for(image),
            profile=self.settings.images.profile(image),
            memory_mib=self.settings.vm.default_memory_mib,
            owner=self._owner,
            console_log=self.env.directory / "console.log",
            journal=self._journal,
            image=image,
        )

