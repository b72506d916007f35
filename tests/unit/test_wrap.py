"""Wrap mode's environment rewrite and working directory: what an executor inside the guest receives."""

from __future__ import annotations

import shlex
import time
from dataclasses import replace
from pathlib import Path

import pytest

from vm_isolation.config import mesos_environment
from vm_isolation.errors import HostError
from vm_isolation.launch_script import render_launcher
from vm_isolation.procinfo import birth_time
from vm_isolation.wrap import InnerCommand, guest_environment, guest_workdir, inner_launch_spec, split_endpoint

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


def test_a_cd_into_a_sandbox_subdirectory_is_repeated_in_the_guest(tmp_path: Path) -> None:
    """Hadoop's `cd hadoop-2.9 && vm-isolation-executor --wrap ...`: the inner executor starts in
    the same subdirectory of the guest sandbox."""
    (tmp_path / "hadoop-2.9" / "bin").mkdir(parents=True)
    assert guest_workdir(tmp_path, tmp_path / "hadoop-2.9", "/mnt/mesos/sandbox") == "/mnt/mesos/sandbox/hadoop-2.9"
    assert guest_workdir(tmp_path, tmp_path / "hadoop-2.9" / "bin", "/g") == "/g/hadoop-2.9/bin"


def test_the_sandbox_itself_or_a_directory_outside_it_maps_to_the_guest_sandbox(tmp_path: Path) -> None:
    """cwd = the sandbox, a directory outside it, or a symlink leading out of it: the guest sandbox root."""
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (sandbox / "out").symlink_to(tmp_path)
    assert guest_workdir(sandbox, sandbox, "/mnt/mesos/sandbox") == "/mnt/mesos/sandbox"
    assert guest_workdir(sandbox, tmp_path, "/mnt/mesos/sandbox") == "/mnt/mesos/sandbox"
    assert guest_workdir(sandbox, Path("/"), "/mnt/mesos/sandbox") == "/mnt/mesos/sandbox"
    assert guest_workdir(sandbox, sandbox / "out", "/mnt/mesos/sandbox") == "/mnt/mesos/sandbox"
    assert guest_workdir(sandbox, sandbox / ".." / "sandbox", "/g") == "/g"


def test_a_hostile_subdirectory_name_reaches_the_launcher_only_quoted(tmp_path: Path) -> None:
    """The guest working directory goes through shlex.quote in the launcher, like every value."""
    hostile = "it's $(touch x) `id`;\nrm"
    (tmp_path / hostile).mkdir()
    env = mesos_environment({**AGENT_ENV, "MESOS_DIRECTORY": str(tmp_path)})
    spec = inner_launch_spec(env, InnerCommand(shell="./bin/hadoop org.apache.hadoop.mapred.MesosExecutor"),
                             guest_ip="192.168.122.77", agent_endpoint="192.168.122.1:5051",
                             guest_sandbox="/mnt/mesos/sandbox", host_cwd=tmp_path / hostile)
    assert spec.workdir == f"/mnt/mesos/sandbox/{hostile}"
    script = render_launcher(spec)
    assert f"cd {shlex.quote(spec.workdir)} || exit 120" in script
    assert f"mkdir -p {shlex.quote(spec.workdir)} " in script


def test_without_a_working_directory_the_inner_executor_starts_in_the_sandbox_root() -> None:
    """The argv form with the wrapper started in the sandbox (the agent's default) runs at the root."""
    env = mesos_environment(AGENT_ENV)
    spec = inner_launch_spec(env, InnerCommand(argv=("python3", "exec.py")), guest_ip="192.168.122.77",
                             agent_endpoint="192.168.122.1:5051", guest_sandbox="/mnt/mesos/sandbox",
                             host_cwd=env.directory)
    assert (spec.workdir, spec.executable, tuple(spec.arguments)) == ("/mnt/mesos/sandbox", "python3",
                                                                       ("python3", "exec.py"))


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
    from vm_isolation.wrap import Wrapper

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


class _FirewalledLauncher:
    def __init__(self) -> None:
        from tests.unit.fakes import FakeFirewall

        self.firewall = FakeFirewall()
        self.hypervisor = None


def test_the_agents_port_is_opened_for_that_guest_only_journaled_and_closed_after(tmp_path: Path) -> None:
    """isolation = on: the wrapper opens guest-ip . agent-port, records it in the journal before,
    and closes it (journal says removed) when the inner executor is done."""
    import socket
    from contextlib import ExitStack
    from types import SimpleNamespace

    from vm_isolation.config import Settings
    from vm_isolation.domainxml import Owner
    from vm_isolation.journal import Journal, read_journal
    from vm_isolation.wrap import Wrapper

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        env = mesos_environment({**AGENT_ENV, "MESOS_AGENT_ENDPOINT": f"127.0.0.1:{port}",
                                 "MESOS_DIRECTORY": str(tmp_path)})
        launcher = _FirewalledLauncher()
        journal = Journal(tmp_path / "journal.jsonl", Owner(executor_pid=1))
        wrapper = Wrapper(Settings(), env, launcher, InnerCommand(("true",)),  # type: ignore[arg-type]
                          bridge_address=lambda: "127.0.0.1", out=lambda b: None, err=lambda b: None,
                          journal=journal)
        guest = SimpleNamespace(name="vmiso-w-0123456789", ip="192.168.122.9")
        with ExitStack() as undo:
            assert wrapper._reachable_agent_endpoint(guest, undo) == f"127.0.0.1:{port}"  # type: ignore[arg-type]
            assert launcher.firewall.opened == {("192.168.122.9", port)}
            outstanding = read_journal(journal.path).outstanding
            assert [(r.kind, r.address) for r in outstanding] == [("agent_port", f"192.168.122.9:{port}")]
    assert launcher.firewall.opened == set()
    assert read_journal(journal.path).outstanding == []
