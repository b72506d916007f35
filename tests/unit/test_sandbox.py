"""Moving the sandbox into a guest and back: the executor's own entries stay on the host."""

from __future__ import annotations

from pathlib import Path

from tests.unit.fakes import FakeRemote
from vm_isolation.sandbox import copy_back, upload


def test_our_own_entries_go_neither_in_nor_back(tmp_path: Path) -> None:
    """Wrap mode's live console.log (qemu writes it) is not uploaded, and a guest file of that
    name does not overwrite it on the way back; the framework's files go both ways."""
    for name in ("stdout", "stderr", "console.log", "job.tar"):
        (tmp_path / name).write_text(f"host {name}")
    made: list[str] = []

    def mkdir_only(remote: FakeRemote, command: str, out: object, err: object) -> int:
        assert command.startswith("mkdir -p "), command
        made.append(command)
        return 0

    remote = FakeRemote("h", "k", handler=mkdir_only)
    assert upload(remote, tmp_path, "/mnt/mesos/sandbox") == 1
    assert list(remote.files) == ["/mnt/mesos/sandbox/job.tar"]
    assert made == ["mkdir -p /mnt/mesos/sandbox"]
    remote.files.update({"/mnt/mesos/sandbox/console.log": b"stale", "/mnt/mesos/sandbox/result.txt": b"42"})
    remote.run_capture = lambda command, timeout_s=None: (0, b"./console.log\0./result.txt\0", b"")  # type: ignore[method-assign]
    assert copy_back(remote, "/mnt/mesos/sandbox", tmp_path) == 1
    assert (tmp_path / "console.log").read_text() == "host console.log"
    assert (tmp_path / "result.txt").read_text() == "42"


def test_a_sandbox_with_nothing_to_copy_costs_no_command(tmp_path: Path) -> None:
    """Only our own entries: nothing is run in the guest (the launcher's `mkdir -p` of its
    working directory, the sandbox or below it, creates it); a subdirectory is still made."""
    for name in ("stdout", "stderr"):
        (tmp_path / name).write_text("ours")
    remote = FakeRemote("h", "k")  # refuses every command
    assert upload(remote, tmp_path, "/mnt/mesos/sandbox") == 0
    assert remote.commands == []
    (tmp_path / "empty-dir").mkdir()
    remote.handler = lambda r, command, out, err: 0
    assert upload(remote, tmp_path, "/mnt/mesos/sandbox") == 0
    assert remote.commands == ["mkdir -p /mnt/mesos/sandbox /mnt/mesos/sandbox/empty-dir"]
