"""The per-task launcher script: the only module that imports Jinja2.

``bin/vmLauncherTemplate.sh.j2`` is rendered with ``StrictUndefined`` (a missing value is an
error, not an empty string) and without HTML autoescaping (the target is a shell, not HTML);
instead every interpolated value goes through ``shlex.quote``. Values a shell cannot carry at
all (NUL) and environment names a process environment cannot carry (empty, containing ``=``)
are refused with InvalidTask.
"""

from __future__ import annotations

import secrets
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import jinja2

from .errors import InvalidTask

TEMPLATE_NAME = "vmLauncherTemplate.sh.j2"
STARTED_MARKER = "VMISO-STARTED"
GUEST_RUN_DIR = "/run/vmiso"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH for commands in the guest when nothing else sets it (the Mesos agent's default PATH)."""
GUEST_HOME = "/root"


def guest_base_environment(home: str = GUEST_HOME) -> dict[str, str]:
    """The variables every command in a guest starts from (the one place PATH and HOME are set)."""
    return {"PATH": GUEST_PATH, "HOME": home}


@dataclass(frozen=True)
class LaunchSpec:
    """What to run in the guest: a shell command, or an executable with argv."""

    workdir: str
    env: Mapping[str, str]
    shell_command: Optional[str] = None
    executable: Optional[str] = None
    arguments: Sequence[str] = ()
    """argv as given; arguments[0] is argv[0] (Mesos CommandInfo semantics)."""
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    rundir: str = GUEST_RUN_DIR
    """Where the launcher keeps the task's pid file."""

    @property
    def pidfile(self) -> str:
        return f"{self.rundir}/{self.nonce}.pid"


def template_path() -> Path:
    """The template in a source checkout (bin/), else where the package installed it."""
    here = Path(__file__).resolve().parent.parent / "bin" / TEMPLATE_NAME
    if here.exists():
        return here
    return Path(sys.prefix) / "share" / "vm-isolation" / TEMPLATE_NAME


def render_launcher(spec: LaunchSpec, template: Optional[Path] = None) -> str:
    """The launcher script for ``spec``; InvalidTask if a value cannot be passed safely."""
    _validate(spec)
    path = template or template_path()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(path.parent)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # the target is sh: values are quoted by the `q` filter instead
        keep_trailing_newline=True,
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    arguments = list(spec.arguments)
    return env.get_template(path.name).render(
        workdir=spec.workdir,
        rundir=spec.rundir,
        assignments=[f"{name}={value}" for name, value in spec.env.items()],
        shell_command=spec.shell_command,
        executable=spec.executable or "",
        argv0=arguments[0] if arguments else (spec.executable or ""),
        arguments=arguments[1:],
        pidfile=spec.pidfile,
        nonce=spec.nonce,
    )


def parse_started(line: str, nonce: str) -> Optional[int]:
    """The task's process-group id if ``line`` is this launch's start marker, else None."""
    parts = line.strip().split(" ")
    if len(parts) == 3 and parts[0] == STARTED_MARKER and parts[1] == nonce and parts[2].isdigit():
        return int(parts[2])
    return None


def _validate(spec: LaunchSpec) -> None:
    if (spec.shell_command is None) == (spec.executable is None):
        raise InvalidTask("a task needs exactly one of a shell command or an executable")
    if spec.executable is not None and not spec.executable:
        raise InvalidTask("the command's value (the executable) is empty")
    for name, value in spec.env.items():
        if not name or "=" in name or "\0" in name:
            raise InvalidTask(
                f"environment variable name {name!r} cannot be passed to a process: "
                f"names must be non-empty and contain neither '=' nor NUL"
            )
        if "\0" in value:
            raise InvalidTask(f"environment variable {name!r} has a NUL character in its value")
    texts = [spec.workdir, spec.rundir, spec.shell_command or "", spec.executable or "", *spec.arguments]
    if any("\0" in text for text in texts):
        raise InvalidTask("the command contains a NUL character, which no process can receive")
