"""Moving a Mesos sandbox into a guest and back.

What the agent fetched into the executor's sandbox (URIs, a framework's tarball) is copied into
the guest's sandbox before the work starts; in wrap mode, what the inner executor wrote there
is copied back afterwards. Our own files (stdout, stderr, tasks/) are never copied in, symlinks
are never followed, and nothing is written outside the sandbox on either side.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from .hosttypes import RemoteSession

log = logging.getLogger(__name__)

OWN_ENTRIES = frozenset({"stdout", "stderr", "tasks", ".vm-isolation", "console.log"})
"""Top-level sandbox entries that are the executor's own, not the task's (``console.log`` is wrap
mode's guest console, which qemu writes while it runs: never uploaded, never overwritten)."""


def upload(remote: RemoteSession, host_dir: Path, guest_dir: str) -> int:
    """Copy ``host_dir`` (minus our own entries) to ``guest_dir``; returns the files copied."""
    files: list[Path] = []
    dirs: list[str] = [guest_dir]
    for entry in sorted(host_dir.iterdir()) if host_dir.is_dir() else []:
        if entry.name in OWN_ENTRIES or entry.is_symlink():
            continue
        if entry.is_dir():
            dirs.append(f"{guest_dir}/{entry.name}")
            for path in sorted(entry.rglob("*")):
                if path.is_symlink():
                    continue
                if path.is_dir():
                    dirs.append(f"{guest_dir}/{path.relative_to(host_dir)}")
                elif path.is_file():
                    files.append(path)
        elif entry.is_file():
            files.append(entry)
    if not files and dirs == [guest_dir]:
        # Nothing to copy: the launcher creates the directory it starts in, which is guest_dir
        # or below it (its `mkdir -p`), so one SSH exec less before the task starts.
        return 0
    remote.run("mkdir -p " + " ".join(shlex.quote(d) for d in dirs), timeout_s=60)
    for path in files:
        remote.put_file(path, f"{guest_dir}/{path.relative_to(host_dir)}")
    return len(files)


def copy_back(remote: RemoteSession, guest_dir: str, host_dir: Path) -> int:
    """Copy regular files under ``guest_dir`` that are new or changed into ``host_dir``.

    Our own entries on the host side are never overwritten, symlinks on the host side are not
    followed, and a path with ``..`` (``find`` prints none, but the guest is not trusted) is
    skipped. Returns the files copied.
    """
    code, out, _err = remote.run_capture(f"cd {shlex.quote(guest_dir)} && find . -type f -print0",
                                         timeout_s=60)
    if code != 0:
        log.warning("could not list the guest sandbox %s (status %d)", guest_dir, code)
        return 0
    copied = 0
    root = host_dir.resolve()
    for raw in out.split(b"\0"):
        try:
            parts = [p for p in raw.decode("utf-8").split("/") if p not in ("", ".")]
        except UnicodeDecodeError:
            log.warning("not copying back a guest file whose name is not UTF-8: %r", raw)
            continue
        if not parts or ".." in parts or parts[0] in OWN_ENTRIES:
            continue
        target = host_dir.joinpath(*parts)
        if target.is_symlink() or not target.resolve().is_relative_to(root):
            continue
        data = remote.get(f"{guest_dir}/{'/'.join(parts)}")
        if target.is_file() and target.read_bytes() == data:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        copied += 1
    return copied
