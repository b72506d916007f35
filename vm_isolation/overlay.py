"""Copy-on-write overlays of base images: the only module that runs ``qemu-img``.

Every guest boots from its own qcow2 overlay whose backing file is the shared base image, so
forking a guest costs a few milliseconds and a few hundred KiB whatever the base's size, and
the guest's writes never reach the base.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import ImageError, StorageError

QEMU_IMG = "qemu-img"
_TIMEOUT_S = 60


@dataclass(frozen=True)
class BaseImage:
    path: Path
    virtual_size: int
    """Bytes the guest sees."""


def inspect_base(path: Path) -> BaseImage:
    """Check that ``path`` is a readable qcow2 image; ImageError says what is wrong."""
    if not path.exists():
        raise ImageError(
            f"base image {path} does not exist: build it with `scripts/build-image.sh` "
            f"or fix its [image:...] path in the configuration"
        )
    out = _qemu_img(["info", "--output=json", str(path)], what=f"inspect base image {path}",
                    error=ImageError)
    try:
        info = json.loads(out)
    except ValueError as exc:
        raise ImageError(f"qemu-img info gave unreadable output for {path}") from exc
    if info.get("format") != "qcow2":
        raise ImageError(
            f"base image {path} is {info.get('format')!r}, not qcow2: convert it with "
            f"`qemu-img convert -O qcow2 {path} NEW.qcow2`"
        )
    return BaseImage(path=path, virtual_size=int(info.get("virtual-size", 0)))


def create_overlay(base: Path, overlay: Path) -> Path:
    """Create ``overlay`` backed by ``base`` (never a copy); the caller removes it."""
    inspect_base(base)
    directory = overlay.parent
    if not directory.is_dir():
        raise StorageError(f"overlay directory {directory} does not exist: create it (mode 0755)")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StorageError(f"overlay directory {directory} is not writable by this user")
    if overlay.exists():
        raise StorageError(f"overlay {overlay} already exists: another guest has this name")
    try:
        _qemu_img(
            ["create", "-q", "-f", "qcow2", "-b", str(base.resolve()), "-F", "qcow2", str(overlay)],
            what=f"create overlay {overlay}", error=StorageError,
        )
    except StorageError:
        remove_overlay(overlay)  # qemu-img may leave a partial file behind (e.g. disk full)
        raise
    return overlay


def remove_overlay(overlay: Path) -> None:
    """Delete an overlay; a missing one is fine (even on a read-only filesystem, where unlink
    fails with EROFS before it looks the name up)."""
    if os.path.lexists(overlay):
        overlay.unlink()


def _qemu_img(args: list[str], *, what: str, error: type[Exception]) -> str:
    try:
        proc = subprocess.run(
            [QEMU_IMG, *args], capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise ImageError("qemu-img is not installed: apt-get install qemu-utils") from None
    except subprocess.TimeoutExpired as exc:
        raise error(f"could not {what}: qemu-img did not finish in {_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        detail = proc.stderr.strip() or f"exit status {proc.returncode}"
        raise error(f"could not {what}: {detail}{_hint(detail)}")
    return proc.stdout


def _hint(detail: str) -> str:
    lowered = detail.lower()
    if "no space left" in lowered or os.strerror(errno.ENOSPC).lower() in lowered:
        return " (the disk is full: free space in the overlay directory)"
    if "read-only" in lowered or "permission denied" in lowered:
        return " (the directory is not writable: check its mount and permissions)"
    if "image is corrupt" in lowered or "could not open" in lowered:
        return " (rebuild the base image: scripts/build-image.sh --force)"
    return ""


class QemuImgDisks:
    """The guests' disks (hosttypes.Disks) as qemu-img overlays."""

    def create(self, base: Path, overlay_path: Path) -> Path:
        return create_overlay(base, overlay_path)

    def remove(self, overlay_path: Path) -> None:
        remove_overlay(overlay_path)
