"""Lease selection (fresh vs stale, API vs status file) and real qemu-img overlays."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Optional

import pytest

from vm_isolation.errors import ImageError, StorageError, VmIsolationError
from vm_isolation.hypervisor import NetworkInfo, RawLease
from vm_isolation.leases import SOURCE_API, SOURCE_STATUS_FILE, Leases
from vm_isolation.overlay import create_overlay, inspect_base, remove_overlay
from vm_isolation.waiting import Deadline, FakeClock, WaitTimeout

MAC = "52:54:00:aa:bb:cc"


class Source:
    def __init__(self, leases: list[RawLease], api_works: bool = True) -> None:
        self.leases = leases
        self.api_works = api_works

    def dhcp_leases(self, network: str, mac: Optional[str] = None) -> list[RawLease]:
        if not self.api_works:
            raise VmIsolationError("this function is not supported by the connection driver")
        return [lease for lease in self.leases if mac is None or lease.mac == mac]

    def network(self, name: str) -> NetworkInfo:
        return NetworkInfo(name, "virbr9", True)


def test_a_lease_seen_before_boot_is_stale() -> None:
    """Only a lease not in the pre-boot snapshot counts as the guest's address."""
    old = RawLease(MAC, "192.168.122.10", "old", 1000.0, "")
    source = Source([old])
    leases = Leases(source)
    stale = {lease.key for lease in leases.all_for("default", MAC)}
    assert leases.current("default", MAC, stale=stale) is None
    source.leases.append(RawLease(MAC, "192.168.122.11", "new", 5000.0, ""))
    lease = leases.current("default", MAC, stale=stale)
    assert lease is not None and lease.ip == "192.168.122.11" and lease.source == SOURCE_API


def test_the_status_file_is_the_fallback_when_the_api_cannot_answer(tmp_path: Path) -> None:
    """With the API unsupported, the lease-helper status file gives the address."""
    (tmp_path / "virbr9.status").write_text(json.dumps([
        {"ip-address": "192.168.122.77", "mac-address": MAC.upper(), "hostname": "g", "expiry-time": 99},
        {"ip-address": "fd00::1", "mac-address": MAC, "expiry-time": 100},
    ]))
    lease = Leases(Source([], api_works=False), status_dir=tmp_path).current("default", MAC)
    assert lease is not None
    assert (lease.ip, lease.source) == ("192.168.122.77", SOURCE_STATUS_FILE)


def test_waiting_for_an_address_times_out_without_real_sleep() -> None:
    """The wait polls at 0.1 s on the injected clock and gives up at the deadline."""
    clock = FakeClock()
    with pytest.raises(WaitTimeout):
        Leases(Source([])).wait_for_address("default", MAC, Deadline.after(2.0, clock))
    assert max(clock.sleeps) <= 0.1
    assert sum(clock.sleeps) == pytest.approx(2.0)


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
