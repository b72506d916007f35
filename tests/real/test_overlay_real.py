"""Overlays through the real qemu-img: backed by the base, and every way a disk can be wrong
(missing, raw, truncated base; read-only, full, missing overlay directory) is a named error."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from vm_isolation.errors import ImageError, StorageError
from vm_isolation.overlay import create_overlay, inspect_base, remove_overlay


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


def test_an_overlay_is_backed_by_the_base_not_a_copy(base: Path, tmp_path: Path) -> None:
    """qemu-img reports the base as the overlay's backing file, and the overlay is tiny."""
    overlay = create_overlay(base, tmp_path / "o.qcow2")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(overlay)],
                                     capture_output=True, check=True).stdout)
    assert info["backing-filename"] == str(base.resolve())
    assert info["backing-filename-format"] == "qcow2"
    assert overlay.stat().st_size < 1024 * 1024
    remove_overlay(overlay)
    remove_overlay(overlay)  # idempotent
    assert not overlay.exists()


def test_a_missing_base_image_names_the_build_command(tmp_path: Path) -> None:
    """ImageError for a missing base says how to build it."""
    with pytest.raises(ImageError, match="build-image"):
        inspect_base(tmp_path / "nope.qcow2")


def test_a_raw_image_is_refused_with_the_conversion_command(tmp_path: Path) -> None:
    """A base that is not qcow2 is refused, naming qemu-img convert."""
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 65536)
    with pytest.raises(ImageError, match="qemu-img convert"):
        inspect_base(raw)


def test_a_truncated_base_image_is_refused(base: Path, tmp_path: Path) -> None:
    """A qcow2 cut short is an ImageError, not a guest that fails later."""
    broken = tmp_path / "broken.qcow2"
    broken.write_bytes(base.read_bytes()[:100])
    with pytest.raises(ImageError):
        inspect_base(broken)


def test_a_read_only_overlay_directory_is_a_storage_error(base: Path, tiny_mount: Path) -> None:
    """An overlay dir on a read-only filesystem gives StorageError, and leaves nothing."""
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_mount)], check=True)
    with pytest.raises(StorageError, match="not writable"):
        create_overlay(base, tiny_mount / "o.qcow2")


def test_a_full_overlay_directory_is_a_storage_error(base: Path, tiny_mount: Path) -> None:
    """An overlay dir with no space left gives StorageError saying the disk is full."""
    filler = tiny_mount / "filler"
    with open(filler, "wb") as fh, pytest.raises(OSError):
        fh.write(b"\0" * (2 << 20))
    with pytest.raises(StorageError, match="full|space"):
        create_overlay(base, tiny_mount / "o.qcow2")
    assert not (tiny_mount / "o.qcow2").exists()


def test_a_missing_overlay_directory_is_a_storage_error(base: Path, tmp_path: Path) -> None:
    """A missing overlay dir gives StorageError naming it."""
    with pytest.raises(StorageError, match="does not exist"):
        create_overlay(base, tmp_path / "missing" / "o.qcow2")
