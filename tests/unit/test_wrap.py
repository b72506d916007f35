"""Wrap mode's environment rewrite: what a v1 or v0 executor inside the guest receives."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from vm_isolation.config import mesos_environment
from vm_isolation.errors import HostError
from vm_isolation.procinfo import birth_time
from vm_isolation.wrap import guest_environment, split_endpoint

AGENT_ENV = {
    "MESOS_FRAMEWORK_ID": "fw-1", "MESOS_EXECUTOR_ID": "ex-1", "MESOS_AGENT_ENDPOINT": "10.0.0.5:5051",
    "MESOS_SLAVE_PID": "slave(1)@10.0.0.5:5051", "MESOS_DIRECTORY": "/var/lib/mesos/slaves/x/runs/c",
    "MESOS_SANDBOX": "/var/lib/mesos/slaves/x/runs/c", "MESOS_SLAVE_ID": "a-S0", "MESOS_CHECKPOINT": "1",
    "MESOS_EXECUTOR_AUTHENTICATION_TOKEN": "token", "MESOS_NATIVE_JAVA_LIBRARY": "/usr/lib/libmesos.so",
    "MESOS_DOMAIN_SOCKET": "/run/mesos/agent.sock", "LIBPROCESS_PORT": "0", "HOME": "/host-home",
    "HADOOP_OPTS": "-Xmx1g -Dx='$(y)'", "VM_ISOLATION_CONF": "/etc/x.conf", "PATH": "/host/bin", "A-B": "dropped",
}


def rewritten() -> dict[str, str]:
    env = mesos_environment(AGENT_ENV)
    return guest_environment(env, agent_endpoint="192.168.122.1:5051", guest_ip="192.168.122.77",
                             guest_sandbox="/mnt/mesos/sandbox")


def test_the_agent_endpoint_points_at_the_host_on_the_guest_network() -> None:
    """v1 (MESOS_AGENT_ENDPOINT) and v0/C++ (MESOS_SLAVE_PID) both name the bridge address."""
    env = rewritten()
    assert env["MESOS_AGENT_ENDPOINT"] == "192.168.122.1:5051"
    assert env["MESOS_SLAVE_PID"] == "slave(1)@192.168.122.1:5051"


def test_a_v0_executor_binds_and_advertises_the_guest_address() -> None:
    """LIBPROCESS_IP and LIBPROCESS_ADVERTISE_IP are the guest's, so the agent can connect back."""
    env = rewritten()
    assert env["LIBPROCESS_IP"] == env["LIBPROCESS_ADVERTISE_IP"] == "192.168.122.77"
    assert env["LIBPROCESS_PORT"] == "0"


def test_sandbox_paths_are_the_guests_and_host_only_paths_are_dropped() -> None:
    """MESOS_DIRECTORY/MESOS_SANDBOX move to the guest; host paths (libmesos, domain socket) go."""
    env = rewritten()
    assert env["MESOS_DIRECTORY"] == env["MESOS_SANDBOX"] == "/mnt/mesos/sandbox"
    assert "MESOS_NATIVE_JAVA_LIBRARY" not in env and "MESOS_DOMAIN_SOCKET" not in env


def test_ids_checkpointing_and_the_auth_token_pass_through() -> None:
    """What the inner executor needs to subscribe as itself is kept as the agent gave it."""
    env = rewritten()
    assert (env["MESOS_FRAMEWORK_ID"], env["MESOS_EXECUTOR_ID"], env["MESOS_CHECKPOINT"]) == ("fw-1", "ex-1", "1")
    assert env["MESOS_EXECUTOR_AUTHENTICATION_TOKEN"] == "token"
    assert env["HOME"] == "/root"


def test_the_executors_own_environment_passes_through_but_not_ours() -> None:
    """CommandInfo.environment (e.g. HADOOP_OPTS) reaches the guest; VM_ISOLATION_*, the host PATH
    and names no shell can carry do not."""
    env = rewritten()
    assert env["HADOOP_OPTS"] == "-Xmx1g -Dx='$(y)'"
    assert "VM_ISOLATION_CONF" not in env and "A-B" not in env
    assert env["PATH"].startswith("/usr/local/sbin")


def test_a_malformed_endpoint_is_a_host_error() -> None:
    """MESOS_AGENT_ENDPOINT must be HOST:PORT."""
    assert split_endpoint("10.0.0.5:5051") == ("10.0.0.5", 5051)
    with pytest.raises(HostError):
        split_endpoint("nonsense")


class _NeverBoots:
    """A launcher whose boot must not be reached (the budget is spent before it)."""

    hypervisor = None

    def boot(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("booted although the registration window was already spent")


def test_a_sandbox_older_than_the_wrap_budget_gives_up_before_booting(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The agent's registration timer starts before the fetch; a fetch that ate the window ends
    the wrapper at once with a line saying so, instead of a silent registration timeout."""
    from vm_isolation.config import ExecutorSettings, Settings
    from vm_isolation.wrap import InnerCommand, Wrapper

    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    env = mesos_environment({**AGENT_ENV, "MESOS_DIRECTORY": str(sandbox)})
    settings = replace(Settings(), executor=ExecutorSettings(wrap_boot_budget_s=50))
    created = birth_time(sandbox) or time.time()
    wrapper = Wrapper(settings, env, _NeverBoots(), InnerCommand(("true",)),  # type: ignore[arg-type]
                      bridge_address=lambda: "192.168.122.1", out=lambda b: None, err=lambda b: None,
                      wallclock=lambda: created + 55)
    assert wrapper._registration_window_spent_s() == pytest.approx(55, abs=1)
    assert wrapper.run() == 1
    assert "registration window" in caplog.text and "wrap_boot_budget_s" in caplog.text
