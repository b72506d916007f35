"""The launcher template: strict rendering, and hostile values passed through literally."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vm_isolation.errors import InvalidTask
from vm_isolation.launch_script import LaunchSpec, parse_started, render_launcher, template_path

HOSTILE = [
    "plain",
    "it's \"quoted\"",
    "$(touch /tmp/vmiso-pwned)",
    "`touch /tmp/vmiso-pwned`",
    "a;touch /tmp/vmiso-pwned",
    "line1\nline2\n",
    "../../etc/passwd",
    "ünïcødé ✓",
    "$HOME ${PATH} $$ $1 *",
    "x" * 4096,
    "-n",
    "\\backslash\\",
]
BUSYBOX = shutil.which("busybox")


def run_script(script: str, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    path = tmp_path / "launch.sh"
    path.write_text(script)
    return subprocess.run([BUSYBOX or "sh", "sh", str(path)], capture_output=True, timeout=30)


def spec(tmp_path: Path, **kw: object) -> LaunchSpec:
    defaults: dict[str, object] = {"workdir": str(tmp_path / "sandbox"), "rundir": str(tmp_path / "run"),
                                   "env": {"PATH": "/usr/bin:/bin"}}
    defaults.update(kw)
    return LaunchSpec(**defaults)  # type: ignore[arg-type]


def test_every_interpolation_in_the_template_is_shell_quoted() -> None:
    """Each {{ ... }} in the template ends in the `q` filter, so no value reaches sh raw."""
    text = template_path().read_text()
    expressions = re.findall(r"{{(.*?)}}", text)
    assert expressions
    assert all(e.strip().endswith("|q") for e in expressions), expressions


@pytest.mark.skipif(BUSYBOX is None, reason="needs busybox (installed by scripts/host-setup.sh)")
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_environment_values_arrive_literally(value: str, tmp_path: Path) -> None:
    """A hostile value reaches the task byte for byte and runs nothing."""
    script = render_launcher(spec(tmp_path, env={"PATH": "/usr/bin:/bin", "V": value},
                                  shell_command='printf "%s" "$V"'))
    result = run_script(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == value
    assert not Path("/tmp/vmiso-pwned").exists()


@pytest.mark.skipif(BUSYBOX is None, reason="needs busybox")
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_arguments_and_workdir_arrive_literally(value: str, tmp_path: Path) -> None:
    """argv elements and the working directory are passed through without interpretation."""
    workdir = tmp_path / "sb" / value.replace("/", "_").replace("\n", "_")[:100]
    script = render_launcher(spec(tmp_path, workdir=str(workdir), executable="/usr/bin/printf",
                                  arguments=["/usr/bin/printf", "%s|%s", value, "$(pwd)"]))
    result = run_script(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == f"{value}|$(pwd)"
    assert workdir.is_dir()


@pytest.mark.skipif(BUSYBOX is None, reason="needs busybox")
def test_exit_status_and_start_marker(tmp_path: Path) -> None:
    """The script exits with the task's status and announces the task's pid first on stderr."""
    s = spec(tmp_path, shell_command="echo out; echo err >&2; exit 7")
    result = run_script(render_launcher(s), tmp_path)
    assert result.returncode == 7
    assert result.stdout == b"out\n"
    first, rest = result.stderr.decode().split("\n", 1)
    assert parse_started(first, s.nonce) is not None
    assert rest == "err\n"


@pytest.mark.parametrize("env", [{"": "x"}, {"A=B": "x"}, {"A": "nul\0"}, {"N\0": "x"}])
def test_environment_that_no_process_can_carry_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    """Empty names, '=' in names and NUL anywhere give InvalidTask, not a broken script."""
    with pytest.raises(InvalidTask):
        render_launcher(spec(tmp_path, env=env, shell_command="true"))


def test_a_task_needs_exactly_one_kind_of_command(tmp_path: Path) -> None:
    """Neither or both of a shell command and an executable is an InvalidTask."""
    with pytest.raises(InvalidTask):
        render_launcher(spec(tmp_path))
    with pytest.raises(InvalidTask):
        render_launcher(spec(tmp_path, shell_command="true", executable="/bin/true"))


def test_start_marker_must_carry_this_launch_nonce() -> None:
    """A marker with another nonce (e.g. printed by a task) is not taken as the start."""
    assert parse_started("VMISO-STARTED abc 42", "abc") == 42
    assert parse_started("VMISO-STARTED xyz 42", "abc") is None
    assert parse_started("VMISO-STARTED abc 42; rm -rf /", "abc") is None
