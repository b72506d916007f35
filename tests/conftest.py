"""Fixtures shared by the unit and the real tests."""

from __future__ import annotations

import importlib.abc
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import pytest

# --- VMISO_BLOCK_IMPORTS=libvirt: run as on a host without those modules ----------------------
# (make unit-nolibvirt): proves the core and its unit tests need no libvirt-python.

_BLOCKED = frozenset(name for name in os.environ.get("VMISO_BLOCK_IMPORTS", "").split(",") if name)


class _ImportBlocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Any = None) -> None:
        if fullname.partition(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {fullname!r} (VMISO_BLOCK_IMPORTS)", name=fullname)
        return None


if _BLOCKED:
    sys.meta_path.insert(0, _ImportBlocker())
    for _name in [m for m in sys.modules if m.partition(".")[0] in _BLOCKED]:
        del sys.modules[_name]


@pytest.fixture
def tiny_mount(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, to fill or remount read-only; needs root (make test runs as root)."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root: run the suite as root, as make test does")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# --- VMISO_REQUIRE_MESOS=1 (CI): the real-cluster suite must have run, none of it skipped ----
# Here, not in tests/mesos/conftest.py, so that it holds even when tests/mesos was not collected.

_mesos_ran: list[str] = []
_mesos_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "mesos" not in report.keywords:
        return
    if report.skipped:
        _mesos_skipped.append(report.nodeid)
    elif report.when == "call":
        _mesos_ran.append(report.nodeid)


def _mesos_requirement_broken() -> str:
    if os.environ.get("VMISO_REQUIRE_MESOS") != "1":
        return ""
    if _mesos_skipped:
        return f"VMISO_REQUIRE_MESOS=1 but {len(_mesos_skipped)} mesos test(s) were skipped: {_mesos_skipped[:3]}"
    if not _mesos_ran:
        return "VMISO_REQUIRE_MESOS=1 but no mesos test ran (was tests/mesos collected, -m deselecting it?)"
    return ""


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _mesos_requirement_broken() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    broken = _mesos_requirement_broken()
    if broken:
        terminalreporter.section("real-cluster requirement", red=True)
        terminalreporter.write_line(f"FAILED: {broken}", red=True)
