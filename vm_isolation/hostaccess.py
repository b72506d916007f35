"""What this process's user may use on the host: checked once at executor start-up.

With the agent's default ``--switch_user`` the executor runs as the framework's user, not root.
That user needs libvirtd's read-write socket and write access to the overlay, key and owner
directories; ``scripts/host-setup.sh --executor-user NAME`` grants exactly that. Without it,
every task would fail somewhere in its boot with an error about one path; this module names all
of them at once, with the user and the fix, for the executor to put in each task's TASK_FAILED.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from .config import Settings

LIBVIRT_SYSTEM_URI = "qemu:///system"
LIBVIRT_SOCKET = Path("/run/libvirt/libvirt-sock")


def access_problems(settings: Settings) -> list[str]:
    """What the effective user cannot use, one phrase each (empty: all usable)."""
    problems = []
    if settings.libvirt.uri == LIBVIRT_SYSTEM_URI and LIBVIRT_SOCKET.exists() \
            and not os.access(LIBVIRT_SOCKET, os.R_OK | os.W_OK):
        problems.append(f"libvirtd's socket {LIBVIRT_SOCKET}")
    for what, path in (("[vm] overlay_dir", settings.vm.overlay_dir), ("[vm] key_dir", settings.vm.key_dir),
                       ("[vm] owner_dir", settings.vm.owner_dir)):
        if not os.access(path, os.W_OK | os.X_OK):
            problems.append(f"{what} {path} (not writable)")
    return problems


def describe(problems: list[str]) -> str:
    """The message for ``problems``: who we run as, what is missing, and how to fix it."""
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return (f"the executor runs as user {user!r} (uid {uid}; the agent's --switch_user runs executors as the "
            f"framework's user), who cannot use: {'; '.join(problems)}. On this agent host run "
            f"`scripts/host-setup.sh --executor-user {user}` (README: Which user, which access), or start the "
            f"agent with --switch_user=false")
