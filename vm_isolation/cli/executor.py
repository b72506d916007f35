"""vm-isolation-executor: the Mesos executor that runs each task in its own guest.

A framework names it as its executor command (``ExecutorInfo.command``), or an operator
installs it as the agent's command executor. The agent starts it with only ``MESOS_*``
variables; the host configuration comes from /etc/vm-isolation/mesos.conf (``--config``).

    vm-isolation-executor [--config PATH]       run as an executor (started by the agent)
    vm-isolation-executor --wrap [--config PATH] -- CMD [ARG...]
    vm-isolation-executor --wrap --shell 'CMD'  run the framework's own executor CMD in a guest
    vm-isolation-executor --check [--config P]  print what it would use, and exit

Unknown ``--flag=value`` arguments (such as the ``--launcher_dir`` the agent passes to its
command executor) are ignored. Exit status: 0 after the last task's terminal update was
acknowledged or after SHUTDOWN; 1 when the agent was lost or the executor could not start.
"""

from __future__ import annotations

import gc
import sys

# Start-up is on every task's path to TASK_RUNNING (the agent starts an executor per task or
# framework): the cyclic collector would run a dozen times over the import-time objects of the
# modules below (~20 ms of ~0.2 s here); it is enabled again, with those objects frozen out of
# its way, once the executor is ready to serve (_ready). Only when this is the program (a
# process that merely imports the module, such as a test run, keeps its collector).
if sys.argv and sys.argv[0].rsplit("/", 1)[-1] in ("vm-isolation-executor", "executor.py"):
    gc.disable()

import argparse
import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import BinaryIO, Callable, Optional

from ..accel import resolve_domain_type
from ..config import MesosEnvironment, Settings, load_settings, mesos_environment
from ..domainxml import Owner
from ..errors import VmIsolationError
from ..executor import Executor
from ..guest import GuestFactory
from ..hostaccess import access_problems, describe
from ..hostnet import bridge_ipv4
from ..hypervisor import LibvirtHypervisor
from ..journal import Journal, earlier_runs, journal_path
from ..ownership import OwnerFile
from ..procinfo import own_start_time
from ..reaper import reap
from ..reaperwatch import reaper_watch_running
from ..warm import WarmFactory
from ..wiring import agent_ports, guest_factory, real_hypervisor, real_launcher, real_leases
from ..wrap import InnerCommand, Wrapper
from .common import configure_logging

log = logging.getLogger("vm-isolation-executor")
FIRST_CONNECT_S = 15.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vm-isolation-executor", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help="configuration file (default /etc/vm-isolation/mesos.conf)")
    p.add_argument("--check", action="store_true", help="print the configuration it would use and exit")
    p.add_argument("--wrap", action="store_true",
                   help="wrap mode: run the executor command given after -- (or --shell) inside a guest")
    p.add_argument("--shell", help="wrap mode: the inner executor as a shell command")
    p.add_argument("--tunnel", action="store_true",
                   help="wrap mode: if the guest cannot reach the agent, tunnel its endpoint over SSH (v1 only)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    inner = argv[argv.index("--") + 1:] if "--" in argv else []
    args, unknown = _parser().parse_known_args(argv[:argv.index("--")] if "--" in argv else argv)
    configure_logging("vm-isolation-executor")
    if unknown:
        log.info("ignoring arguments meant for Mesos's own executor: %s", " ".join(unknown))
    try:
        settings = load_settings(args.config)
    except VmIsolationError as exc:
        log.error("%s", exc)
        return 1
    if args.check:
        return _check(settings)
    problems = access_problems(settings)
    host_problem = describe(problems) if problems else None
    if host_problem:
        log.error("%s", host_problem)
    try:
        env = mesos_environment()
        owner_file, owner = _own(settings, env)
        journal = Journal.in_sandbox(env.directory, owner)
    except VmIsolationError as exc:
        log.error("%s", exc)
        return 1
    try:
        return _serve(args, inner, settings, env, owner, journal, host_problem)
    finally:
        journal.close()
        if owner_file is not None:
            owner_file.release()  # only now: every guest of ours is gone (or left to the reaper)


def _own(settings: Settings, env: MesosEnvironment) -> tuple[Optional[OwnerFile], Owner]:
    """This process's owner file (locked while it lives) and the owner record every guest carries.
    Without an owner file (its directory unusable) guests are owned by pid alone."""
    pid, started = os.getpid(), own_start_time()
    try:
        owner_file: Optional[OwnerFile] = OwnerFile.create(
            settings.vm.owner_dir, framework_id=env.framework_id, executor_id=env.executor_id, pid=pid,
            start_time=started, journal=journal_path(env.directory))
    except VmIsolationError as exc:
        log.error("%s; guests are then owned by pid only (wrong under the agent's pid namespaces)", exc)
        owner_file = None
    if not reaper_watch_running(settings):
        log.warning("no vm-isolation-reap --watch is running on this host: if this executor is "
                    "SIGKILLed (as the agent destroys containers), its guests keep running until a "
                    "reaper runs; host set-up (python -m vm_isolation.hostsetup) starts the watcher")
    return owner_file, Owner(framework_id=env.framework_id, executor_id=env.executor_id,
                             container_id=env.directory.name, executor_pid=pid, executor_start_time=started,
                             owner_file=str(owner_file.path) if owner_file else "")


def _serve(args: argparse.Namespace, inner: list[str], settings: Settings, env: MesosEnvironment, owner: Owner,
           journal: Journal, host_problem: Optional[str]) -> int:
    # Started by the agent at any time, maybe while libvirtd restarts (2-8 s): wait a little.
    hypervisor = real_hypervisor(settings, first_connect_s=FIRST_CONNECT_S)
    _reap_earlier_run(settings, hypervisor, env)
    launcher = guest_factory(settings, real_launcher(settings, hypervisor))
    if args.wrap:
        if host_problem:
            return 1  # logged above; the agent reports the tasks as failed (executor terminated)
        return _wrap(settings, env, launcher, hypervisor, InnerCommand(tuple(inner), args.shell, args.tunnel),
                     journal, owner)
    # Imported here: pymesos must be imported on the main thread, and only when serving.
    from ..mesos import AgentConnection

    _ready()

    executor = Executor(settings, env, launcher, journal=journal, owner=owner, host_problem=host_problem,
                        mirror_stdout=_mirror(sys.stdout.buffer), mirror_stderr=_mirror(sys.stderr.buffer))
    connection = AgentConnection(env, executor)
    executor.attach(connection)
    _on_sigterm(executor.on_shutdown)
    log.info("starting: framework %s, executor %s, agent %s, checkpoint %s",
             env.framework_id, env.executor_id, env.agent_endpoint, "on" if env.checkpoint else "off")
    connection.start()
    code = executor.wait()
    connection.stop()
    connection.join(5.0)
    log.info("exiting with status %d", code)
    return code


def _wrap(settings: Settings, env: MesosEnvironment, launcher: GuestFactory | WarmFactory,
          hypervisor: LibvirtHypervisor, command: InnerCommand, journal: Journal, owner: Owner) -> int:
    if bool(command.argv) == (command.shell is not None):
        log.error("--wrap needs the inner executor either after -- (argv) or as --shell 'COMMAND'")
        return 2
    bridge = hypervisor.network(settings.libvirt.network).bridge
    wrapper = Wrapper(settings, env, launcher, command,
                      bridge_address=lambda: bridge_ipv4(bridge),
                      out=_mirror(sys.stdout.buffer), err=_mirror(sys.stderr.buffer), journal=journal,
                      owner=owner, host_cwd=Path.cwd())
    _on_sigterm(wrapper.terminate)
    _ready()
    log.info("wrap mode: executor %s of framework %s, agent %s", env.executor_id, env.framework_id,
             env.agent_endpoint)
    code = wrapper.run()
    log.info("exiting with status %d", code)
    return code


def _ready() -> None:
    """Start-up is over: what it allocated is kept out of the collector's way, which runs again."""
    gc.freeze()
    gc.enable()


def _reap_earlier_run(settings: Settings, hypervisor: LibvirtHypervisor, env: MesosEnvironment) -> None:
    """Remove what an earlier, crashed run of this same executor left behind: its domains (by
    their owner metadata) and whatever its journal (a sibling run directory) lists."""
    try:
        report = reap(settings, hypervisor, real_leases(hypervisor), journals=earlier_runs(env.directory),
                      only_executor_id=env.executor_id, only_framework_id=env.framework_id,
                      ports=agent_ports(settings))
    except VmIsolationError as exc:
        log.warning("could not check for leftovers of an earlier run: %s", exc)
        return
    for line in report.removed:
        log.warning("leftover of an earlier run of this executor: %s", line)
    for line in report.errors:
        log.error("could not remove a leftover: %s", line)


def _mirror(stream: BinaryIO) -> Callable[[bytes], None]:
    """Tasks' output also goes to our own stdout/stderr: the agent's sandbox stdout/stderr."""
    lock = threading.Lock()

    def mirror(chunk: bytes) -> None:
        with lock:
            stream.write(chunk)
            stream.flush()

    return mirror


def _on_sigterm(shutdown: Callable[[], None]) -> None:
    """SIGTERM (an operator, or a wrapper) is treated like the agent's SHUTDOWN."""
    def handler(signum: int, frame: Optional[FrameType]) -> None:
        log.warning("SIGTERM: shutting down")
        threading.Thread(target=shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)


def _check(s: Settings) -> int:
    print(f"configuration: {s.source}")
    print(f"libvirt: {s.libvirt.uri}, network {s.libvirt.network}, domain type "
          f"{resolve_domain_type(s.libvirt.domain_type)} (configured {s.libvirt.domain_type})")
    print(f"images: fast kernel {s.images.fast_kernel}; Debian kernel {s.images.kernel} with initrd "
          f"{s.images.initrd}; default {s.images.default}")
    missing = 0
    for name, path in sorted(s.images.bases.items()):
        missing += not path.exists()
        where = f"  image {name}: {path}{'' if path.exists() else ' (MISSING)'}"
        if s.images.profile(name).kind != "direct-kernel":  # boots its own kernel from its disk
            print(f"{where}, kind {s.images.profile(name).kind} (its own kernel)")
            continue
        kernel = s.images.kernel_for(name)
        missing += not kernel.path.exists()
        print(f"{where}, kernel {kernel.kind} ({kernel.path}{'' if kernel.path.exists() else ', MISSING'})")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
