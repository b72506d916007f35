"""Layering: each external system is imported by exactly one module of the package."""

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
    "jinja2": {"launcher.py"},
    "pymesos": {"mesos.py"},
}


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


@pytest.mark.parametrize("tool, owner", [("xorriso", "seedimage.py"), ("qemu-img", "overlay.py")])
def test_only_the_owning_module_runs_the_tool(tool: str, owner: str) -> None:
    """A subprocess-backed system is named as an executable in its one adapter module."""
    runners = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if f'= "{tool}"' in p.read_text()}
    assert runners <= {owner}, f"{tool} run from {sorted(runners - {owner})}"
