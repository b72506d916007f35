"""Sandbox, environment and process of one executor run, as the agent and containerizer make them.

* Sandbox: ``<work_dir>/slaves/<aid>/frameworks/<fid>/executors/<eid>/runs/<cid>/`` plus the
  ``runs/latest`` symlink (src/slave/paths.cpp); given files are copied in by base name, a
  stand-in for the fetcher.
* Environment, lowest priority first: the agent's own ``LIBPROCESS_IP``; the operator's
  ``--executor_environment_variables`` (``extra_env`` here); ``LIBPROCESS_PORT=0`` and the
  agent's ``MESOS_*`` variables (``executorEnvironment()``, so they win over ``extra_env``);
  ``MESOS_SANDBOX`` (containerizer); ``CommandInfo.environment`` minus secrets; finally a
  default ``PATH`` if none was given. Nothing else is inherited (Mesos >= 1.0).
* Command: ``shell`` (default true) runs ``/bin/sh -c value`` with argv[0] ``sh``; otherwise
  ``execvp(value, arguments)`` with ``arguments[0]`` as argv[0], ``PATH`` taken from the
  executor's environment. The working directory is the sandbox; stdout/stderr are appended
  to the sandbox's ``stdout``/``stderr`` files.
* The process gets its own session and process group, like the launch helper.

NOTE: the agent here does not switch user (as with ``--switch_user=false``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import VmIsolationError
from .wire import format_duration

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RECOVERY_TIMEOUT_S = 15 * 60.0
"""``--recovery_timeout`` default."""
EXECUTOR_REREGISTER_TIMEOUT_S = 2.0
"""``EXECUTOR_REREGISTER_TIMEOUT``, given to executors as MESOS_SUBSCRIPTION_BACKOFF_MAX."""


class LaunchError(VmIsolationError):
    """The executor's command could not be started (missing program, bad sandbox, ...)."""


@dataclass(frozen=True)
class AgentIdentity:
    """What an executor's environment says about the agent and framework."""

    agent_id: str
    framework_id: str
    endpoint: str
    """``ip:port`` of the agent's HTTP server."""
    checkpoint: bool


def sandbox_path(work_dir: Path, identity: AgentIdentity, executor_id: str, container_id: str) -> Path:
    return (work_dir / "slaves" / identity.agent_id / "frameworks" / identity.framework_id
            / "executors" / executor_id / "runs" / container_id)


def create_sandbox(path: Path, files: Sequence[Path]) -> None:
    """Make the run directory, point ``runs/latest`` at it and copy ``files`` in."""
    path.mkdir(parents=True)
    latest = path.parent / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(path.name)
    for source in files:
        target = path / Path(source).name
        if Path(source).is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target)


def executor_environment(identity: AgentIdentity, executor_id: str, sandbox: Path, grace_period_s: float,
                         extra_env: Mapping[str, str], command: Mapping[str, Any],
                         agent_environ: Mapping[str, str]) -> dict[str, str]:
    """The complete environment of the executor process, in the agent's priority order."""
    env: dict[str, str] = {}
    if "LIBPROCESS_IP" in agent_environ:
        env["LIBPROCESS_IP"] = agent_environ["LIBPROCESS_IP"]
    env.update(extra_env)
    env["LIBPROCESS_PORT"] = "0"
    env.update(_mesos_variables(identity, executor_id, sandbox, grace_period_s))
    env["MESOS_SANDBOX"] = str(sandbox)
    env.update(_command_variables(command))
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def _mesos_variables(identity: AgentIdentity, executor_id: str, sandbox: Path,
                     grace_period_s: float) -> dict[str, str]:
    env = {
        "MESOS_FRAMEWORK_ID": identity.framework_id,
        "MESOS_EXECUTOR_ID": executor_id,
        "MESOS_DIRECTORY": str(sandbox),
        "MESOS_SLAVE_ID": identity.agent_id,
        "MESOS_SLAVE_PID": f"slave(1)@{identity.endpoint}",
        "MESOS_AGENT_ENDPOINT": identity.endpoint,
        "MESOS_CHECKPOINT": "1" if identity.checkpoint else "0",
        "MESOS_HTTP_COMMAND_EXECUTOR": "0",
        "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD": format_duration(grace_period_s),
    }
    if identity.checkpoint:
        env["MESOS_RECOVERY_TIMEOUT"] = format_duration(RECOVERY_TIMEOUT_S)
        env["MESOS_SUBSCRIPTION_BACKOFF_MAX"] = format_duration(EXECUTOR_REREGISTER_TIMEOUT_S)
    return env


def _command_variables(command: Mapping[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for variable in command.get("environment", {}).get("variables", []):
        if variable.get("type", "VALUE") == "SECRET":
            # Resolved by the environment_secret isolator in a real agent; there is none here.
            log.warning("skipping secret environment variable %s: no secret resolver", variable.get("name"))
            continue
        env[str(variable["name"])] = str(variable.get("value", ""))
    return env


def command_argv(command: Mapping[str, Any]) -> tuple[str, list[str]]:
    """``(program, argv)`` for a CommandInfo, following launch.cpp's exec rules.

    NOTE: with ``shell=false`` and no ``arguments`` the real launcher execs with an empty
    argv; Python cannot, so argv is then ``[value]``.
    """
    value = str(command.get("value", ""))
    if command.get("shell", True):
        return "/bin/sh", ["sh", "-c", value]
    arguments = [str(a) for a in command.get("arguments", [])]
    return value, arguments or [value]


def spawn(executor_id: str, command: Mapping[str, Any], env: Mapping[str, str],
          sandbox: Path) -> subprocess.Popen[bytes]:
    """Start the executor in its own session; raise :class:`LaunchError` if it cannot start."""
    program, argv = command_argv(command)
    with open(sandbox / "stdout", "ab") as out, open(sandbox / "stderr", "ab") as err:
        try:
            proc = subprocess.Popen(
                argv, executable=program, env=dict(env), cwd=sandbox, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True, close_fds=True,
            )
        except OSError as exc:
            raise LaunchError(f"cannot start executor {executor_id!r}: {program!r} ({exc}); "
                              f"check CommandInfo.value/shell and the executor's PATH") from exc
    log.info("executor %s started as pid %d in %s: %s", executor_id, proc.pid, sandbox, argv)
    return proc


def write_pid_marker(meta_dir: Path, pid: int) -> None:
    """Checkpointing agents record ``pids/forked.pid`` in the run's meta directory."""
    pids = meta_dir / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    (pids / "forked.pid").write_text(str(pid))


def agent_environ() -> Mapping[str, str]:
    """The agent process's own environment: only ``LIBPROCESS_IP`` is passed on from it."""
    return os.environ
