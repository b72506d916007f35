"""vm-isolation-agent-setup builds a launcher directory once, idempotently, and never clobbers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vm_isolation.cli.agent_setup import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, default_executor, main

HELPERS = ["mesos-containerizer", "mesos-default-executor", "mesos-executor", "mesos-fetcher",
           "mesos-io-switchboard", "mesos-logrotate-logger"]


def _executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def libexec(tmp_path: Path) -> Path:
    d = tmp_path / "libexec" / "mesos"
    d.mkdir(parents=True)
    for name in HELPERS:
        _executable(d / name)
    return d


@pytest.fixture
def executor(tmp_path: Path) -> Path:
    return _executable(tmp_path / "vm-isolation-executor")


def _run(launcher: Path, libexec: Path, executor: Path) -> int:
    return main(["--launcher-dir", str(launcher), "--mesos-libexec", str(libexec), "--executor", str(executor)])


def test_every_helper_is_linked_and_mesos_executor_points_at_vm_isolation(
        tmp_path: Path, libexec: Path, executor: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each helper but mesos-executor links to Mesos's own; mesos-executor resolves to ours."""
    launcher = tmp_path / "launcher"
    assert _run(launcher, libexec, executor) == EXIT_OK
    assert sorted(p.name for p in launcher.iterdir()) == sorted(HELPERS)
    assert all((launcher / n).is_symlink() for n in HELPERS)
    assert (launcher / "mesos-executor").resolve() == executor.resolve()
    assert (launcher / "mesos-fetcher").resolve() == (libexec / "mesos-fetcher").resolve()
    assert "created 6 symlink(s)" in capsys.readouterr().out


def test_running_it_again_changes_nothing_and_says_so(
        tmp_path: Path, libexec: Path, executor: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second run leaves every entry as it was and reports 'nothing changed'."""
    launcher = tmp_path / "launcher"
    assert _run(launcher, libexec, executor) == EXIT_OK
    before = {p.name: (os.readlink(p), p.lstat().st_ino) for p in launcher.iterdir()}
    capsys.readouterr()
    assert _run(launcher, libexec, executor) == EXIT_OK
    assert {p.name: (os.readlink(p), p.lstat().st_ino) for p in launcher.iterdir()} == before
    assert "nothing changed" in capsys.readouterr().out


def test_a_real_mesos_executor_in_the_way_is_refused_and_nothing_is_created(
        tmp_path: Path, libexec: Path, executor: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A regular file named mesos-executor is left alone; the exit status is non-zero with a reason."""
    launcher = tmp_path / "launcher"
    launcher.mkdir()
    real = _executable(launcher / "mesos-executor")
    assert _run(launcher, libexec, executor) == EXIT_REFUSED
    assert not real.is_symlink() and real.read_text() == "#!/bin/sh\n"
    assert [p.name for p in launcher.iterdir()] == ["mesos-executor"]
    err = capsys.readouterr().err
    assert "a real file, not a symlink" in err and "nothing was changed" in err


def test_a_foreign_symlink_is_refused(tmp_path: Path, libexec: Path, executor: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A mesos-executor symlink to something else is not replaced."""
    launcher = tmp_path / "launcher"
    launcher.mkdir()
    (launcher / "mesos-executor").symlink_to(libexec / "mesos-executor")
    assert _run(launcher, libexec, executor) == EXIT_REFUSED
    assert (launcher / "mesos-executor").resolve() == (libexec / "mesos-executor").resolve()
    assert f"a symlink to {libexec / 'mesos-executor'}" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["mesos-containerizer", "mesos-fetcher"])
def test_a_libexec_without_the_agent_helpers_is_a_usage_error(
        tmp_path: Path, libexec: Path, executor: Path, missing: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory lacking mesos-containerizer or mesos-fetcher is not Mesos's libexec."""
    (libexec / missing).unlink()
    assert _run(tmp_path / "launcher", libexec, executor) == EXIT_USAGE
    assert not (tmp_path / "launcher").exists()
    assert missing in capsys.readouterr().err


def test_a_missing_executor_or_libexec_is_a_usage_error(tmp_path: Path, libexec: Path, executor: Path) -> None:
    """Neither a non-existent executor nor a non-existent libexec creates anything."""
    assert _run(tmp_path / "l1", libexec, tmp_path / "nope") == EXIT_USAGE
    assert _run(tmp_path / "l2", tmp_path / "nowhere", executor) == EXIT_USAGE
    assert not (tmp_path / "l1").exists() and not (tmp_path / "l2").exists()


def test_the_default_executor_is_the_console_script_beside_this_python() -> None:
    """Without --executor, the vm-isolation-executor of this interpreter's bin/ is used."""
    assert default_executor().name == "vm-isolation-executor"
    assert default_executor().parent.name == "bin"
