"""Layering: each external system is imported by exactly one module of the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "vm_isolation"
OWNERS = {
    "libvirt": {"hypervisor.py"},
    "paramiko": {"remote.py"},
    "cryptography": {"remote.py"},
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


def test_only_the_config_module_reads_the_environment() -> None:
    """os.environ / os.getenv appear only in config.py (plus the local agent, which builds
    the environment of the processes it launches)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(PACKAGE))
        if rel == "config.py" or rel.startswith("localagent"):
            continue
        text = path.read_text()
        if "os.environ" in text or "os.getenv" in text:
            offenders.append(rel)
    assert offenders == []
