"""Owner files (real flock on a temporary directory), the reaper judging owners by them, and the
watcher loop on fakes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from vm_isolation.config import Settings
from vm_isolation.domainxml import Owner
from vm_isolation.hosttypes import OwnedDomain
from vm_isolation.journal import Journal, journal_path
from vm_isolation.ownership import Liveness, OwnerFile, is_owner_file_path, liveness, owner_files, read_owner_file
from vm_isolation.reaper import Kind, ReapReport, reap
from vm_isolation.reaperwatch import WatchLock, reaper_watch_running, watch, watch_lock_path

from .test_reaper import DEAD_NAME, LIVE_NAME, FakeDomains, FakeLeases, FakeProcesses, files_of
from .test_reaper import settings as settings  # noqa: F401  (the fixture)


def dead_owner_file(owner_dir: Path, journal: Path | None = None) -> Path:
    """An owner file whose process is gone: made by a child that exits without releasing it."""
    code = ("import os, sys; from pathlib import Path; from vm_isolation.ownership import OwnerFile; "
            "f = OwnerFile.create(Path(sys.argv[1]), executor_id='exec-1', pid=os.getpid(), "
            "journal=Path(sys.argv[2]) if sys.argv[2] else None); print(f.path, flush=True); os._exit(0)")
    out = subprocess.run([sys.executable, "-c", code, str(owner_dir), str(journal or "")], check=True,
                         capture_output=True, text=True)
    return Path(out.stdout.strip())


def test_an_owner_file_is_locked_while_its_owner_lives_and_gone_after_release(tmp_path: Path) -> None:
    owner = OwnerFile.create(tmp_path, framework_id="fw", executor_id="ex", pid=42, start_time="7",
                             journal=tmp_path / "j")
    assert owner.path.parent == tmp_path and is_owner_file_path(owner.path, tmp_path)
    assert stat.S_IMODE(owner.path.stat().st_mode) == 0o600
    assert liveness(owner.path) is Liveness.ALIVE
    record = read_owner_file(owner.path)
    assert (record.framework_id, record.executor_id, record.pid, record.start_time, record.journal) == (
        "fw", "ex", 42, "7", str(tmp_path / "j"))
    assert owner_files(tmp_path) == [owner.path]
    owner.release()
    assert not owner.path.exists() and liveness(owner.path) is Liveness.DEAD


def test_the_lock_goes_with_the_process_however_it_ends(tmp_path: Path) -> None:
    """os._exit without release stands for SIGKILL: the file stays, the lock does not."""
    path = dead_owner_file(tmp_path)
    assert path.exists() and liveness(path) is Liveness.DEAD
    assert read_owner_file(path).executor_id == "exec-1"


def test_temporary_and_foreign_names_are_not_owner_files(tmp_path: Path) -> None:
    for name in (".0123456789abcdef0123456789abcdef.tmp", "x.owner", "0123456789ABCDEF0123456789ABCDEF.owner",
                 "0123456789abcdef0123456789abcdef.owner.bak"):
        (tmp_path / name).write_text("{}")
    assert owner_files(tmp_path) == []
    assert not is_owner_file_path(tmp_path / "sub" / ("a" * 32 + ".owner"), tmp_path)


def test_a_garbled_owner_file_reads_as_empty_fields(tmp_path: Path) -> None:
    path = tmp_path / ("b" * 32 + ".owner")
    path.write_text('{"pid": "12; rm -rf /", "executor_id": 5, "journal": ["x"]}')
    record = read_owner_file(path)
    assert (record.pid, record.executor_id, record.journal) == (0, "", "")
    path.write_text("not json")
    assert read_owner_file(path).executor_id == ""


def test_an_owner_dir_that_cannot_be_written_names_the_fix(tmp_path: Path) -> None:
    from vm_isolation.errors import StorageError

    with pytest.raises(StorageError, match="owner_dir"):
        OwnerFile.create(tmp_path / "missing")


def owned(settings: Settings, name: str, owner_file: str, pid: int = 2) -> OwnedDomain:
    """A domain whose owner recorded an owner file and (as in a pid namespace) a meaningless pid."""
    owner = Owner(framework_id="fw", executor_id="exec-1", task_id="t", executor_pid=pid,
                  executor_start_time="1", owner_file=owner_file)
    disk = str(settings.vm.overlay_dir / f"{name}.qcow2")
    return OwnedDomain(name, "running", owner, ("52:54:00:aa:bb:cc",), (disk,))


def test_the_reaper_judges_owners_by_their_lock_not_their_pid(settings: Settings) -> None:
    """pid 2 "runs" (FakeProcesses) but the lock of the dead owner is free: reaped. The live
    owner's pid is dead in this namespace but it holds its lock: kept."""
    alive = OwnerFile.create(settings.vm.owner_dir, executor_id="exec-1")
    dead = dead_owner_file(settings.vm.owner_dir)
    files_of(settings, DEAD_NAME)
    hv = FakeDomains([owned(settings, DEAD_NAME, str(dead)), owned(settings, LIVE_NAME, str(alive.path), pid=99999)])
    report = reap(settings, hv, FakeLeases(), processes=FakeProcesses({2: "1"}), orphan_files=False)
    assert [(f.kind, f.name) for f in report.found] == [(Kind.DOMAIN, DEAD_NAME)]
    assert ("destroy", LIVE_NAME) not in hv.calls
    assert not (settings.vm.overlay_dir / f"{DEAD_NAME}.qcow2").exists()
    assert not dead.exists(), "a dead owner file with nothing left is deleted"
    assert alive.path.exists()
    alive.release()


def test_an_owner_file_path_outside_the_owner_dir_is_never_taken_for_dead(settings: Settings, tmp_path: Path) -> None:
    hv = FakeDomains([owned(settings, DEAD_NAME, str(tmp_path / "elsewhere" / ("c" * 32 + ".owner")))])
    report = reap(settings, hv, FakeLeases(), processes=FakeProcesses(), orphan_files=False)
    assert report.found == [] and hv.calls == []


def test_a_dead_owner_files_journal_is_replayed_then_the_file_deleted(settings: Settings, tmp_path: Path) -> None:
    """The watcher needs no agent work directory: the owner file names the journal."""
    sandbox = tmp_path / "sandbox"
    overlay, key_dir = files_of(settings, DEAD_NAME)
    path = dead_owner_file(settings.vm.owner_dir, journal_path(sandbox))
    journal = Journal.in_sandbox(sandbox, Owner(executor_id="exec-1", executor_pid=2, owner_file=str(path)))
    journal.creating("overlay", DEAD_NAME, path=str(overlay))
    journal.creating("key_dir", DEAD_NAME, path=str(key_dir))
    journal.close()
    dry = reap(settings, FakeDomains([]), FakeLeases(), processes=FakeProcesses(), orphan_files=False, dry_run=True)
    assert {f.kind for f in dry.found} == {Kind.OVERLAY, Kind.KEY_DIR} and path.exists() and overlay.exists()
    report = reap(settings, FakeDomains([]), FakeLeases(), processes=FakeProcesses(), orphan_files=False)
    assert not overlay.exists() and not key_dir.exists() and not path.exists() and report.ok


def test_an_owner_file_naming_something_that_is_not_a_journal_replays_nothing(settings: Settings,
                                                                             tmp_path: Path) -> None:
    victim = tmp_path / "precious"
    victim.write_text("keep me")
    path = dead_owner_file(settings.vm.owner_dir, victim)
    report = reap(settings, FakeDomains([]), FakeLeases(), processes=FakeProcesses(), orphan_files=False)
    assert victim.read_text() == "keep me" and not path.exists() and report.ok


def test_the_executor_start_up_reap_leaves_other_executors_owner_files(settings: Settings) -> None:
    path = dead_owner_file(settings.vm.owner_dir)
    reap(settings, FakeDomains([]), FakeLeases(), processes=FakeProcesses(), only_executor_id="someone-else")
    assert path.exists()


def test_the_watcher_reaps_every_tick_and_does_a_full_pass_on_its_schedule(settings: Settings) -> None:
    dead = dead_owner_file(settings.vm.owner_dir)
    hv = FakeDomains([owned(settings, DEAD_NAME, str(dead))])
    stop = threading.Event()
    now = [0.0]
    reports: list[ReapReport] = []
    journal_calls: list[float] = []

    def on_report(report: ReapReport) -> None:
        reports.append(report)
        now[0] += 25.0
        if len(reports) == 4:
            stop.set()

    def journals() -> list[Path]:
        journal_calls.append(now[0])
        return []

    watch(settings, hv, FakeLeases(), stop, journals=journals, interval_s=0.0, full_every_s=60.0,
          monotonic=lambda: now[0], on_report=on_report)
    assert [(f.kind, f.name) for f in reports[0].found] == [(Kind.DOMAIN, DEAD_NAME)]
    assert all(r.found == [] for r in reports[1:])
    assert journal_calls == [0.0, 75.0], "full passes at t=0 and once 60 s have passed"


def test_one_watcher_per_host(settings: Settings) -> None:
    from vm_isolation.errors import StorageError

    path = watch_lock_path(settings)
    assert path.parent == settings.vm.owner_dir.parent and not reaper_watch_running(settings)
    lock = WatchLock(path, {"pid": os.getpid()})
    assert reaper_watch_running(settings)
    with pytest.raises(StorageError, match="another vm-isolation-reap --watch"):
        WatchLock(path, {"pid": 1})
    lock.close()
    assert not reaper_watch_running(settings)


def test_the_unit_file_runs_the_installed_watcher() -> None:
    from vm_isolation.hostservices import unit_text

    text = unit_text(Path("/opt/vmiso/venv/bin"))
    assert "ExecStart=/opt/vmiso/venv/bin/vm-isolation-reap --watch" in text and "@BINDIR@" not in text
    assert "Restart=always" in text


def test_settings_fixture_keeps_owner_files_private(settings: Settings) -> None:
    assert settings.vm.owner_dir != replace(Settings()).vm.owner_dir
