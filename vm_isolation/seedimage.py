"""NoCloud seed volumes: the only module that runs ``xorriso``.

A seed is an ISO 9660 image labelled ``cidata`` holding ``user-data`` and ``meta-data``
(:mod:`cloudseed` makes their content). xorriso builds it from files in a private work
directory (the guest's 0700 key directory) with no root and no loop device; the volume is then
copied to its place next to the overlay, created 0600 with ``O_EXCL`` (it holds the guest's
host private key), where qemu reads it as a read-only disk.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping

from .errors import StorageError

XORRISO = "xorriso"
VOLUME_LABEL = "cidata"
_TIMEOUT_S = 60


def write_seed(files: Mapping[str, str], path: Path, work_dir: Path) -> Path:
    """Write a ``cidata`` volume holding ``files`` (name -> text) to ``path`` (which must not
    exist); ``work_dir`` is a private directory for the intermediate files. StorageError says
    what failed."""
    work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seed-", dir=work_dir) as tmp:
        source = Path(tmp) / "cidata"
        source.mkdir(mode=0o700)
        for name, text in files.items():
            if "/" in name or name in ("", ".", ".."):
                raise StorageError(f"seed file name {name!r} is not a plain file name")
            (source / name).write_text(text, encoding="utf-8")
        iso = Path(tmp) / "seed.iso"
        _xorriso(["-as", "mkisofs", "-quiet", "-volid", VOLUME_LABEL, "-joliet", "-rock",
                  "-output", str(iso), *(str(source / name) for name in sorted(files))],
                 what=f"build the NoCloud seed for {path.name}")
        _copy_private(iso, path)
    return path


def read_seed(path: Path, work_dir: Path) -> dict[str, str]:
    """The files of a seed volume (name -> text), and its volume label under ``""``."""
    with tempfile.TemporaryDirectory(prefix="seed-read-", dir=work_dir) as tmp:
        out = Path(tmp) / "files"
        _xorriso(["-osirrox", "on", "-indev", str(path), "-extract", "/", str(out)],
                 what=f"read the seed {path}")
        label = _xorriso(["-indev", str(path), "-pvd_info"], what=f"read the label of {path}")
        files = {p.name: p.read_text(encoding="utf-8") for p in sorted(out.iterdir()) if p.is_file()}
    for line in label.splitlines():
        if line.startswith("Volume Id"):
            files[""] = line.split(":", 1)[1].strip()
    return files


def remove_seed(path: Path) -> None:
    """Delete a seed volume; absent is fine."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot remove the seed {path}: {exc.strerror or exc}") from exc


def _copy_private(source: Path, target: Path) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(target, flags, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot create the seed {target}: {exc.strerror or exc}; its directory "
                           "must be writable by this user and must not hold a seed of that name") from exc
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(source.read_bytes())
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise StorageError(f"cannot write the seed {target}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def _xorriso(args: list[str], *, what: str) -> str:
    try:
        done = subprocess.run([XORRISO, *args], capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise StorageError(f"cannot {what}: xorriso is not installed (scripts/host-setup.sh installs it)") from None
    except subprocess.TimeoutExpired:
        raise StorageError(f"cannot {what}: xorriso took more than {_TIMEOUT_S} s") from None
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise StorageError(f"cannot {what}: xorriso exited {done.returncode}: {detail}")
    return done.stdout + done.stderr
