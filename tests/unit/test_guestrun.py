"""Starting a launcher in a guest: one exec that writes it (on stdin) and runs it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest

from tests.unit.fakes import LAUNCH, FakeRemote
from vm_isolation.errors import TransferError
from vm_isolation.guest import Guest
from vm_isolation.guestrun import run_launcher
from vm_isolation.hosttypes import Lease
from vm_isolation.launch_script import LaunchSpec, render_launcher

Out = Callable[[bytes], None]


def guest_with(handler: Callable[[FakeRemote, str, Out, Out], int], tmp_path: Path) -> Guest:
    remote = FakeRemote("192.0.2.9", "ssh-ed25519 AAAAhost", handler=handler)
    lease = Lease(mac="52:54:00:00:00:01", ip="192.0.2.9", hostname="", expiry_time=0.0, client_id="", source="test")
    return Guest(name="vmiso-t-1", mac=lease.mac, lease=lease, remote=remote, console_log=tmp_path / "console.log")


def test_the_launcher_goes_on_the_stdin_of_the_command_that_runs_it(tmp_path: Path) -> None:
    spec = LaunchSpec(workdir="/tmp", env={"A": "b c"}, shell_command="exit 3")

    def handler(remote: FakeRemote, command: str, out: Out, err: Out) -> int:
        launched = re.fullmatch(LAUNCH, command)
        assert launched is not None and launched.group(1) == spec.nonce
        err(f"VMISO-STARTED {spec.nonce} 42\nthe task's own words\n".encode())
        return 3

    guest = guest_with(handler, tmp_path)
    started: list[int] = []
    errors: list[bytes] = []
    status = run_launcher(guest, spec, on_started=started.append, on_stdout=lambda b: None, on_stderr=errors.append)
    assert (status.code, started, b"".join(errors)) == (3, [42], b"the task's own words\n")
    remote = guest.remote
    assert isinstance(remote, FakeRemote)
    assert remote.stdins[remote.commands[0]] == render_launcher(spec).encode()


def test_a_launcher_that_cannot_be_written_is_a_transfer_error_naming_the_guest(tmp_path: Path) -> None:
    """cat failed (say /tmp is read-only): not "the command exited with 121"."""
    def handler(remote: FakeRemote, command: str, out: Out, err: Out) -> int:
        err(b"sh: can't create /tmp/vmiso-launch-x.sh: Read-only file system\n")
        return 121

    guest = guest_with(handler, tmp_path)
    with pytest.raises(TransferError, match="could not write the launcher .* in vmiso-t-1: sh: can't create") as info:
        run_launcher(guest, LaunchSpec(workdir="/", env={}, shell_command="true"), on_started=lambda p: None,
                     on_stdout=lambda b: None, on_stderr=lambda b: None)
    assert info.value.phase == "upload"


def test_a_task_that_itself_exits_121_after_starting_is_its_own_status(tmp_path: Path) -> None:
    spec = LaunchSpec(workdir="/", env={}, shell_command="exit 121")

    def handler(remote: FakeRemote, command: str, out: Out, err: Out) -> int:
        err(f"VMISO-STARTED {spec.nonce} 7\n".encode())
        return 121

    status = run_launcher(guest_with(handler, tmp_path), spec, on_started=lambda p: None, on_stdout=lambda b: None,
                          on_stderr=lambda b: None)
    assert status.code == 121
