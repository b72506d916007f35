"""Layering: each external system has exactly one module of the package (a library is imported,
a program run, only there), and the task lifecycle is written against Protocols, never against
an adapter: wiring.py (and the CLIs through it) is where adapters are chosen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "vm_isolation"
OWNERS = {
    "libvirt": {"hypervisor.py"},
    "paramiko": {"remote.py"},
    "cryptography": {"sshkeys.py"},
    "netifaces": {"hostnet.py"},
    "jinja2": {"launch_script.py"},
    "pymesos": {"mesos.py", "scheduler/mesos_driver.py"},  # the executor and the scheduler side of Mesos
    "kazoo": {"scheduler/zkstore.py"},
}


PROGRAM_OWNERS = {
    "qemu-img": {"overlay.py"},
    "dhcp_release": {"leases.py"},
    "nft": {"hostfirewall.py"},
    "systemctl": {"hostservices.py"},
}
"""Programs the package runs (subprocess-backed systems), and the one module that runs each."""

ADAPTERS = {"hypervisor", "remote", "overlay", "leases", "hostfirewall", "hostnet", "sshkeys", "mesos",
            "hostservices", "wiring"}
LIFECYCLE = {"guest.py", "session.py", "taskworker.py", "wrap.py", "guestrun.py", "sandbox.py", "executor.py",
             "reaper.py", "reaperwatch.py", "checks.py", "pool.py", "warm.py", "poolwire.py", "addressguard.py"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_only_the_owning_module_imports_the_library(library: str) -> None:
    """A third-party client is imported in its one adapter module and nowhere else."""
    importers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if library in imported_modules(path)
    }
    assert importers <= OWNERS[library], f"{library} imported by {sorted(importers - OWNERS[library])}"


def reads_environment(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
                and isinstance(node.value, ast.Name) and node.value.id == "os"):
            return True
    return False


def test_only_the_config_module_reads_the_environment() -> None:
    """os.environ / os.getenv are used only in config.py (plus the local agent, which builds
    the environment of the processes it launches)."""
    offenders = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if reads_environment(path)
        and str(path.relative_to(PACKAGE)) != "config.py"
        and not str(path.relative_to(PACKAGE)).startswith("localagent")
    )
    assert offenders == []


def string_literals(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


@pytest.mark.parametrize("program", sorted(PROGRAM_OWNERS))
def test_only_the_owning_module_runs_the_program(program: str) -> None:
    """A program (qemu-img, dhcp_release, nft, systemctl) is named, and so run, by one module."""
    runners = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if program in string_literals(path)
    }
    assert runners <= PROGRAM_OWNERS[program], f"{program} run by {sorted(runners - PROGRAM_OWNERS[program])}"


def package_imports(path: Path) -> set[str]:
    """The package modules ``path`` imports (relative imports, first component)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("module", sorted(LIFECYCLE))
def test_the_lifecycle_imports_no_adapter(module: str) -> None:
    """The lifecycle sees the host's systems through hosttypes' Protocols; which adapter
    stands behind them is decided in wiring.py only."""
    assert package_imports(PACKAGE / module) & ADAPTERS == set()


NOT_IN_THE_EXECUTOR = ("invoke", "yaml", "asyncio", "unittest", "xml.sax", "urllib.request")
"""Modules the executor process must not load: each costs start-up time and memory on every
task's critical path, and none is used (paramiko pulls invoke, yaml, asyncio and unittest.mock in
for ssh_config `Match exec`; xml.sax.saxutils pulls urllib.request, http.client's email parser)."""


def test_the_executor_process_loads_none_of_the_heavy_unused_modules() -> None:
    import subprocess
    import sys

    probe = ("import sys, vm_isolation.cli.executor; "
             f"print(' '.join(m for m in {NOT_IN_THE_EXECUTOR!r} if sys.modules.get(m) is not None))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True,
                          cwd=PACKAGE.parent)
    assert done.stdout.split() == []
