"""How long the libvirt adapter keeps trying to connect, on a socket nobody listens on."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("libvirt", reason="the libvirt adapter's own tests need libvirt-python")

from tests.unit.fakes import FakeClock
from vm_isolation.errors import LibvirtUnavailable  # noqa: E402
from vm_isolation.hypervisor import LibvirtHypervisor  # noqa: E402


def nobody(tmp_path: Path) -> str:
    return f"qemu+unix:///system?socket={tmp_path}/no-libvirtd.sock"


def test_a_tool_fails_at_once_when_libvirtd_is_not_there(tmp_path: Path) -> None:
    clock = FakeClock()
    hv = LibvirtHypervisor(nobody(tmp_path), clock=clock)
    with pytest.raises(LibvirtUnavailable, match="Start libvirtd"):
        hv.state("vmiso-x-0123456789")
    assert sum(clock.sleeps) == 0


def test_the_executor_waits_its_first_connect_window_before_giving_up(tmp_path: Path) -> None:
    """first_connect_s: a libvirtd restarting while the agent starts the executor is waited for."""
    clock = FakeClock()
    hv = LibvirtHypervisor(nobody(tmp_path), first_connect_s=15.0, clock=clock)
    with pytest.raises(LibvirtUnavailable, match="no-libvirtd.sock"):
        hv.state("vmiso-x-0123456789")
    assert sum(clock.sleeps) == pytest.approx(15.0)


def test_a_libvirtd_that_accepts_but_never_answers_is_given_up_on(tmp_path: Path) -> None:
    """A restarting libvirtd can accept the connection and never answer the handshake, which
    blocks virConnectOpen for good (seen in the reaper watcher and the pool): each open attempt
    is abandoned after open_attempt_s, so the retry window still bounds the wait."""
    import socket

    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(path))
        mute.listen(8)  # the kernel accepts; nobody ever reads or answers
        hv = LibvirtHypervisor(f"qemu+unix:///system?socket={path}", open_attempt_s=0.5)
        with pytest.raises(LibvirtUnavailable, match="did not answer within 0.5 s"):
            hv.state("vmiso-x-0123456789")  # before the fix: blocked until pytest-timeout
