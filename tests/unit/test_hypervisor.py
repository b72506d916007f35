"""How long the libvirt adapter keeps trying to connect, on a socket nobody listens on."""

from __future__ import annotations

from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt", reason="the libvirt adapter's own tests need libvirt-python")

from tests.unit.fakes import FakeClock  # noqa: E402
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


class _Domain:
    def __init__(self, active: bool, lose_connection: bool) -> None:
        self.active, self.lose_connection, self.creates = active, lose_connection, 0

    def isActive(self) -> int:  # noqa: N802 - libvirt's name
        return int(self.active)

    def create(self) -> int:
        self.creates += 1
        if self.active:
            raise _error(libvirt.VIR_ERR_OPERATION_INVALID, "Requested operation is not valid: already running")
        self.active = True
        if self.lose_connection:
            raise _error(libvirt.VIR_ERR_SYSTEM_ERROR, "End of file while reading data: Input/output error")
        return 0


class _Conn:
    def __init__(self, domain: _Domain, alive: bool) -> None:
        self.domain, self.alive = domain, alive

    def lookupByName(self, name: str) -> _Domain:  # noqa: N802 - libvirt's name
        return self.domain

    def isAlive(self) -> int:  # noqa: N802 - libvirt's name
        return int(self.alive)


def _error(code: int, message: str) -> libvirt.libvirtError:
    exc = libvirt.libvirtError(message)
    exc.err = (code, 0, message, 0, "", None, None, 0, 0)
    return exc


def test_a_start_that_libvirtd_completed_before_it_went_away_is_not_repeated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """libvirtd restarts during create(): the domain runs, the call fails with a lost connection.
    The retry on the new connection finds it running and does not create it again (which would
    fail with "already running" and fail a boot that worked)."""
    domain = _Domain(active=False, lose_connection=True)
    connections = iter([_Conn(domain, alive=False), _Conn(domain, alive=True)])
    hv = LibvirtHypervisor(nobody(tmp_path))
    monkeypatch.setattr(hv, "_connection", lambda fresh=False: next(connections))
    hv.start("vmiso-x-0123456789")
    assert domain.creates == 1 and domain.active
