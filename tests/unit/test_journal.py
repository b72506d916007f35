"""The sandbox journal: written before each resource exists, replayed into what is left."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from vm_isolation.domainxml import Owner
from vm_isolation.errors import StorageError
from vm_isolation.journal import Journal, earlier_runs, journal_path, journals_under, read_journal

OWNER = Owner(framework_id="fw", executor_id="ex", container_id="c1", executor_pid=4321,
              executor_start_time="777")
NAME = "vmiso-job-0123456789"


def test_a_journal_is_private_and_replays_into_what_was_created_and_not_removed(tmp_path: Path) -> None:
    """0700 directory, 0600 file; creates minus removes, with the owner and the details."""
    journal = Journal.in_sandbox(tmp_path, OWNER)
    journal.creating("overlay", NAME, task_id="job", path="/o/x.qcow2")
    journal.creating("key_dir", NAME, task_id="job", path="/k/x")
    journal.creating("lease", NAME, task_id="job", mac="52:54:00:01:02:03", network="default")
    journal.removed("key_dir", NAME)
    journal.close()
    path = journal_path(tmp_path)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    state = read_journal(path)
    assert state.owner == OWNER
    assert [(r.kind, r.path, r.mac) for r in state.outstanding] == [
        ("overlay", "/o/x.qcow2", ""), ("lease", "", "52:54:00:01:02:03")]
    assert state.outstanding[0].task_id == "job" and state.problems == []


def test_a_torn_last_line_and_foreign_lines_are_skipped_not_fatal(tmp_path: Path) -> None:
    journal = Journal.in_sandbox(tmp_path, OWNER)
    journal.creating("overlay", NAME, path="/o/x.qcow2")
    journal.close()
    path = journal_path(tmp_path)
    with open(path, "ab") as fh:
        fh.write(b'["a list"]\n{"op": "explode"}\n{"op": "create", "kind": "overl')
    state = read_journal(path)
    assert [r.kind for r in state.outstanding] == ["overlay"]
    assert len(state.problems) == 3


def test_a_second_run_appends_and_the_first_owner_counts(tmp_path: Path) -> None:
    Journal.in_sandbox(tmp_path, OWNER).close()
    Journal.in_sandbox(tmp_path, Owner(executor_pid=1)).close()
    assert read_journal(journal_path(tmp_path)).owner == OWNER


def test_a_journal_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    """O_NOFOLLOW: a planted symlink cannot redirect the executor's writes."""
    target = tmp_path / "elsewhere"
    target.write_text("")
    path = journal_path(tmp_path / "sandbox")
    path.parent.mkdir(parents=True)
    path.symlink_to(target)
    with pytest.raises(StorageError, match="cannot open the journal"):
        Journal(path, OWNER)
    assert target.read_text() == ""


def test_a_full_disk_is_a_storage_error_naming_the_fix() -> None:
    """On /dev/full every write fails with ENOSPC: the executor refuses to start unrecorded."""
    with pytest.raises(StorageError, match="free space"):
        Journal(Path("/dev/full"), OWNER)


def test_creating_raises_when_it_cannot_record_but_removed_only_logs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing may be created unrecorded; teardown must go on even if the record fails."""
    journal = Journal.in_sandbox(tmp_path, OWNER)
    journal.close()
    with pytest.raises(StorageError, match="closed"):
        journal.creating("overlay", NAME, path="/o")
    journal.removed("overlay", NAME)
    assert "closed" in caplog.text


def sandbox(work: Path, executor: str, container: str) -> Path:
    run = work / "slaves" / "S0" / "frameworks" / "F" / "executors" / executor / "runs" / container
    run.mkdir(parents=True)
    return run


def test_earlier_runs_are_the_sibling_runs_of_the_same_executor(tmp_path: Path) -> None:
    """Never the executor's own journal, never through the runs/latest symlink, never another
    executor's."""
    old, own = sandbox(tmp_path, "ex", "c-old"), sandbox(tmp_path, "ex", "c-new")
    other = sandbox(tmp_path, "other", "c-x")
    (own.parent / "latest").symlink_to(own)
    for run in (old, own, other):
        Journal.in_sandbox(run, OWNER).close()
    assert earlier_runs(own) == [journal_path(old)]
    assert journals_under(tmp_path) == sorted(journal_path(r) for r in (old, own, other))


def test_the_journal_lines_are_json_with_a_timestamp(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", OWNER, wallclock=lambda: 12.3456)
    journal.creating("domain", NAME, task_id="t")
    journal.close()
    lines = [json.loads(line) for line in (tmp_path / "j").read_text().splitlines()]
    assert lines[1] == {"op": "create", "kind": "domain", "domain": NAME, "task_id": "t", "t": 12.346}


def test_a_launcher_goes_with_its_guests_overlay(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", OWNER)
    journal.creating("overlay", NAME, path="/o")
    journal.creating("launcher", NAME, path="/tmp/vmiso-launch-1.sh")
    assert [r.kind for r in read_journal(journal.path).outstanding] == ["overlay", "launcher"]
    journal.removed("overlay", NAME)
    journal.close()
    assert read_journal(journal.path).outstanding == []
