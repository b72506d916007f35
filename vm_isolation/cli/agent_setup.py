"""vm-isolation-agent-setup: a Mesos launcher directory whose command executor is vm-isolation-executor.

    vm-isolation-agent-setup --launcher-dir DIR --mesos-libexec PATH [--executor PATH]

The agent runs its command executor as ``realpath(<--launcher_dir>/mesos-executor)`` and every
other helper (``mesos-containerizer``, ``mesos-fetcher``, ``mesos-default-executor``, ...) from
the same directory. This makes DIR with a symlink to each helper in PATH (the Mesos
``libexec/mesos`` directory) except ``mesos-executor``, which becomes a symlink to
vm-isolation-executor (default: the one installed beside this Python). Start the agent with
``--launcher_dir=DIR``: tasks without an ExecutorInfo then run in VMs.

Re-running changes nothing and says so. An existing entry that is not the symlink this would
make (a real file, or a symlink elsewhere) is never overwritten. Exit status: 0 done or
already done, 1 refused (an entry is in the way), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

COMMAND_EXECUTOR = "mesos-executor"
REQUIRED_HELPERS = ("mesos-containerizer", "mesos-fetcher")

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2


class SetupError(Exception):
    """The set-up cannot be done as asked; ``code`` is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class SetupReport:
    """What :func:`set_up_launcher_dir` created and what was already in place."""

    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def default_executor() -> Path:
    """The vm-isolation-executor console script beside this interpreter (the same virtualenv)."""
    return Path(sys.executable).parent / "vm-isolation-executor"


def planned_links(libexec: Path, executor: Path) -> dict[str, Path]:
    """Entry name -> the absolute target of its symlink."""
    links = {p.name: p.absolute() for p in sorted(libexec.iterdir()) if p.name != COMMAND_EXECUTOR}
    links[COMMAND_EXECUTOR] = executor.absolute()
    return links


def validate(libexec: Path, executor: Path, launcher_dir: Path) -> None:
    """SetupError (usage) unless libexec looks like Mesos's and executor is runnable."""
    if not libexec.is_dir():
        raise SetupError(f"--mesos-libexec {libexec} is not a directory: give Mesos's libexec/mesos", EXIT_USAGE)
    missing = [h for h in REQUIRED_HELPERS if not (libexec / h).is_file()]
    if missing:
        raise SetupError(f"--mesos-libexec {libexec} has no {', '.join(missing)}: it is not Mesos's libexec/mesos "
                         f"(e.g. $MESOS_HOME/libexec/mesos)", EXIT_USAGE)
    if not (executor.is_file() and os.access(executor, os.X_OK)):
        raise SetupError(f"--executor {executor} is not an executable file: give the path of vm-isolation-executor",
                         EXIT_USAGE)
    if launcher_dir.resolve() == libexec.resolve():
        raise SetupError(f"--launcher-dir must not be the Mesos libexec directory itself ({libexec})", EXIT_USAGE)
    if launcher_dir.exists() and not launcher_dir.is_dir():
        raise SetupError(f"--launcher-dir {launcher_dir} exists and is not a directory", EXIT_USAGE)


def set_up_launcher_dir(launcher_dir: Path, libexec: Path, executor: Path) -> SetupReport:
    """Make ``launcher_dir`` (idempotent); SetupError if an entry is in the way, before creating anything."""
    validate(libexec, executor, launcher_dir)
    links = planned_links(libexec, executor)
    report = SetupReport()
    todo: dict[str, Path] = {}
    for name, target in links.items():
        entry = launcher_dir / name
        if entry.is_symlink() and Path(os.readlink(entry)) == target:
            report.unchanged.append(name)
        elif entry.is_symlink() or entry.exists():
            what = f"a symlink to {os.readlink(entry)}" if entry.is_symlink() else "a real file, not a symlink"
            raise SetupError(f"{entry} is {what}; this would make it a symlink to {target}. Remove it first if "
                             f"that is what you want (nothing was changed)", EXIT_REFUSED)
        else:
            todo[name] = target
    launcher_dir.mkdir(parents=True, exist_ok=True)
    for name, target in todo.items():
        (launcher_dir / name).symlink_to(target)
        report.created.append(name)
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vm-isolation-agent-setup", description=__doc__.split("\n\n")[0])
    p.add_argument("--launcher-dir", type=Path, required=True, metavar="DIR",
                   help="the directory to make; give it to the agent as --launcher_dir")
    p.add_argument("--mesos-libexec", type=Path, required=True, metavar="PATH",
                   help="Mesos's own helper directory (e.g. $MESOS_HOME/libexec/mesos)")
    p.add_argument("--executor", type=Path, default=None, metavar="PATH",
                   help=f"the executor to install as mesos-executor (default {default_executor()})")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    executor = args.executor or default_executor()
    try:
        report = set_up_launcher_dir(args.launcher_dir, args.mesos_libexec, executor)
    except SetupError as exc:
        print(f"vm-isolation-agent-setup: {exc}", file=sys.stderr)
        return exc.code
    if report.created:
        print(f"{args.launcher_dir}: created {len(report.created)} symlink(s) ({', '.join(report.created)}); "
              f"{COMMAND_EXECUTOR} -> {executor.absolute()}")
    else:
        print(f"{args.launcher_dir}: already set up ({len(report.unchanged)} symlinks in place), nothing changed")
    print(f"start the agent with --launcher_dir={args.launcher_dir.absolute()}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
