"""Fixtures for the real-cluster suite: a real mesos-master and mesos-agents from MESOS_HOME.

Run it with ``make test-mesos MESOS_HOME=/path/to/mesos``. Without MESOS_HOME every test here
is skipped (saying how to run it); with VMISO_REQUIRE_MESOS=1 a missing or broken MESOS_HOME
is an error, and tests/conftest.py fails the session if no ``mesos`` test ran or one was
skipped. Every test ends with the checks of tests/real: no domain, overlay, key or lease left,
plus no container left on the agent.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.mesos.cluster import Agent, MesosCluster, MesosHome
from tests.mesos.framework import Framework
from tests.real.conftest import Leftovers, hypervisor, leftovers, settings  # noqa: F401  (fixtures reused)
from vm_isolation.config import Settings
from vm_isolation.hostnet import bridge_ipv4
from vm_isolation.hypervisor import LibvirtHypervisor
from vm_isolation.waiting import Deadline, poll_until

HOW_TO_RUN = "run `make test-mesos MESOS_HOME=/path/to/mesos` (on this kind of host: MESOS_HOME=../shared/mesos)"
TIMINGS: list[str] = []
"""LAUNCH -> TASK_RUNNING as each way in saw it; printed in the terminal summary."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/mesos/" in str(item.fspath):
            item.add_marker(pytest.mark.mesos)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("LAUNCH -> TASK_RUNNING on the real cluster")
        for line in TIMINGS:
            terminalreporter.write_line(line)


def require_mesos() -> bool:
    return os.environ.get("VMISO_REQUIRE_MESOS") == "1"


@pytest.fixture(scope="session")
def mesos_home() -> MesosHome:
    raw = os.environ.get("MESOS_HOME")
    if not raw:
        message = f"MESOS_HOME is not set: the real-cluster suite needs a Mesos build; {HOW_TO_RUN}"
    else:
        home = MesosHome(Path(raw).resolve())
        problem = home.problem()
        if problem is None:
            return home
        message = f"MESOS_HOME={raw} is not a usable Mesos: {problem}"
    if require_mesos():
        pytest.fail(f"{message} (VMISO_REQUIRE_MESOS=1: this is an error, not a skip)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def bridge_ip(settings: Settings, hypervisor: LibvirtHypervisor) -> str:  # noqa: F811
    """The host's address on the guests' network (virbr0): where guests can reach an agent."""
    return bridge_ipv4(hypervisor.network(settings.libvirt.network).bridge)


def _cluster(home: MesosHome, base: Path) -> Iterator[MesosCluster]:
    cluster = MesosCluster(home, base)
    try:
        cluster.start_master()
        yield cluster
    finally:
        cluster.stop()
    assert cluster.killed_executors == [], "executors outlived their agent and were SIGKILLed"


@pytest.fixture(scope="session")
def cluster(mesos_home: MesosHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MesosCluster]:
    """A master on 127.0.0.1 (stock agents are added by :func:`stock_agent`)."""
    yield from _cluster(mesos_home, tmp_path_factory.mktemp("mesos"))


@pytest.fixture(scope="session")
def stock_agent(cluster: MesosCluster, bridge_ip: str) -> Agent:
    """An agent with Mesos's own launcher dir, listening on the bridge address (wrap mode needs
    guests to reach it; generic mode does not care)."""
    return cluster.start_agent(ip=bridge_ip, attributes="vmiso_way:custom")


@pytest.fixture
def new_cluster(mesos_home: MesosHome, tmp_path: Path) -> Iterator[MesosCluster]:
    """A master of this test's own, for agents with a different set-up."""
    yield from _cluster(mesos_home, tmp_path / "mesos")


@pytest.fixture
def framework(cluster: MesosCluster) -> Iterator[Callable[[str], Framework]]:
    """Start frameworks on the session's master; each is torn down at the end of the test."""
    started: list[Framework] = []

    def start(name: str, **options: Any) -> Framework:
        fw = Framework(cluster.master_address, f"{name}-{uuid.uuid4().hex[:6]}", **options).start()
        started.append(fw)
        return fw

    yield start
    for fw in started:
        fw.stop()


def no_containers_left(agent: Agent, timeout_s: float = 60.0) -> None:
    """Every executor the agent started has ended (its /containers is empty)."""
    poll_until(lambda: True if agent.containers() == [] else None, Deadline.after(timeout_s),
               what=f"agent {agent.id} to have no container left")


def record_timing(way: str, seconds: float) -> None:
    line = f"{way}: LAUNCH -> TASK_RUNNING {seconds:.2f} s"
    TIMINGS.append(line)
    print(line)
