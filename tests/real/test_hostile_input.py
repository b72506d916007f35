"""Hostile TaskInfo through the real executor (local agent stand-in -> vm-isolation-executor -> guests).

Two batches keep it fast: every case that must end in TASK_ERROR goes into ONE executor and
needs no guest; every case that must run with its values passed literally goes into ONE
executor with four guests. Shapes the agent stand-in itself refuses (it raises ValueError, as
the real agent would never forward them) cannot reach the executor; they are checked on
:func:`vm_isolation.taskinfo.parse_task` at the end, counted separately in ``PARSER_CASES``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.real.conftest import Leftovers
from tests.real.test_executor_e2e import executor_command
from vm_isolation.config import Settings
from vm_isolation.errors import InvalidTask
from vm_isolation.ids import domain_name_for
from vm_isolation.localagent import LocalAgent
from vm_isolation.taskinfo import parse_task, task_dir_name

BOOT_S = 240.0  # four guests at once under software emulation on a loaded CI host
ERROR_S = 90.0
PWNED = Path("/tmp/pwned")


def resources(cpus: Any = 1, mem: Any = 192) -> list[dict[str, Any]]:
    return [{"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}},
            {"name": "mem", "type": "SCALAR", "scalar": {"value": mem}}]


def task(task_id: str, command: Any = None, **extra: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"name": task_id, "task_id": {"value": task_id}, "resources": resources()}
    info["command"] = {"value": "true", "shell": True} if command is None else command
    info.update(extra)
    return info


def env_task(task_id: str, variables: list[dict[str, Any]]) -> dict[str, Any]:
    return task(task_id, {"value": "true", "shell": True, "environment": {"variables": variables}})


def data_of(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def image_label(value: Any) -> dict[str, Any]:
    return {"labels": [{"key": "vm_isolation.image", "value": value}]}


# --- batch 1: must end in TASK_ERROR / REASON_TASK_INVALID, no guest needed ---------------------

XML_META = "<x a=\"1\">&amp;'</x>]]><!--"
ERROR_CASES: list[tuple[str, dict[str, Any]]] = [
    ("cpus negative", task("e-cpus-neg", resources=resources(cpus=-1))),
    ("cpus zero", task("e-cpus-zero", resources=resources(cpus=0))),
    ("cpus NaN", task("e-cpus-nan", resources=resources(cpus=float("nan")))),
    ("cpus infinite", task("e-cpus-inf", resources=resources(cpus=float("inf")))),
    ("cpus enormous", task("e-cpus-huge", resources=resources(cpus=1e12))),
    ("cpus a string", task("e-cpus-str", resources=resources(cpus="$(id)"))),
    ("cpus without scalar", task("e-cpus-noscalar", resources=[{"name": "cpus", "type": "SCALAR"}])),
    ("mem negative", task("e-mem-neg", resources=resources(mem=-512))),
    ("mem zero", task("e-mem-zero", resources=resources(mem=0))),
    ("mem NaN", task("e-mem-nan", resources=resources(mem=float("nan")))),
    ("mem -infinite", task("e-mem-ninf", resources=resources(mem=float("-inf")))),
    ("mem enormous", task("e-mem-huge", resources=resources(mem=1e300))),
    ("mem a list", task("e-mem-list", resources=resources(mem=[1, 2]))),
    ("resources not a list", task("e-res-dict", resources={"cpus": 1})),
    ("resources a string", task("e-res-str", resources="cpus:1")),
    ("unknown image", task("e-img-unknown", labels=image_label("no-such-image"))),
    ("image label with XML metacharacters", task("e-img-xml", labels=image_label(XML_META))),
    ("image label with path traversal", task("e-img-path", labels=image_label("../../../etc/passwd"))),
    ("image label not a string", task("e-img-int", labels=image_label(7))),
    ("env name with '='", env_task("e-env-eq", [{"name": "A=B", "value": "x"}])),
    ("env name with NUL", env_task("e-env-nulname", [{"name": "A\0B", "value": "x"}])),
    ("env name empty", env_task("e-env-empty", [{"name": "", "value": "x"}])),
    ("env value with NUL", env_task("e-env-nulval", [{"name": "A", "value": "x\0rm -rf /"}])),
    ("env name not a string", env_task("e-env-intname", [{"name": 5, "value": "x"}])),
    ("env value not a string", env_task("e-env-intval", [{"name": "A", "value": {"x": 1}}])),
    ("env variable of type SECRET", env_task("e-env-secret", [{"name": "A", "type": "SECRET", "secret": {}}])),
    ("env variables not a list", task("e-env-notlist", {"value": "true", "environment": {"variables": "A=1"}})),
    ("command.value not a string", task("e-cmd-int", {"value": 42, "shell": True})),
    ("command.value a list", task("e-cmd-list", {"value": ["sh", "-c", "id"], "shell": True})),
    ("command.value empty", task("e-cmd-empty", {"value": "", "shell": True})),
    ("command.shell not a boolean", task("e-cmd-shellstr", {"value": "true", "shell": "false"})),
    ("arguments not a list", task("e-args-str", {"value": "/bin/echo", "shell": False, "arguments": "a b"})),
    ("arguments with a non-string",
     task("e-args-int", {"value": "/bin/echo", "shell": False, "arguments": ["echo", 1]})),
    ("command not an object", task("e-cmd-str", "touch /tmp/pwned")),
    ("no command at all", {"name": "e-nocmd", "task_id": {"value": "e-nocmd"}, "resources": resources()}),
    ("data not base64", {**task("e-data-b64"), "command": None, "data": "$(touch /tmp/pwned)!!"}),
    ("data base64 of non-JSON",
     {**task("e-data-json"), "command": None, "data": base64.b64encode(b"\xff\xfe{").decode()}),
    ("data a JSON list", {**task("e-data-list"), "command": None, "data": data_of(["touch", "/tmp/pwned"])}),
    ("kill grace negative", task("e-grace-neg", kill_policy={"grace_period": {"nanoseconds": -1}})),
    ("kill grace not a number", task("e-grace-str", kill_policy={"grace_period": {"nanoseconds": "1; id"}})),
    ("task id with NUL", task("e-nul-\0-id")),
]
for _name, _info in ERROR_CASES:  # `command: None` above means "no command", as Mesos's JSON has it
    if _info.get("command") is None:
        _info.pop("command", None)
GROUP_CASES = [task("e-group-a"), task("e-group-b")]
"""A LAUNCH_GROUP of two tasks (task groups are not supported): each must get TASK_ERROR."""


# --- batch 2: must run, values passed literally ---------------------------------------------

HOSTILE_VALUES = [
    "it's \"q\"", "$(touch /tmp/pwned)", "`touch /tmp/pwned`", "a;touch /tmp/pwned", "a && touch /tmp/pwned",
    "line1\nline2", "trailing newline\n", "../../etc/passwd", "/", "with space", "\\xff\\x00 literal escapes",
    "ünïcödé ✓ ☃ \u202eevil", "%s%n%x", "-n", "--help", "*", "~root", "", "x" * 10240, "'; exit 1; '",
]
# NOTE: names that are not shell identifiers ("A-B", "$(id)", "SP ACE") are not in this table: the
# guest's busybox drops them silently on the way to the task (found by this test; reported).
ENV_VARIABLES = {f"V{i}": value for i, value in enumerate(HOSTILE_VALUES)}
RUN_IDS = {
    "environ": "../../$(touch /tmp/pwned) `id`; 'q\"\nx",
    "argv": "/" + "a/../" * 2048,  # 10 KB, slashes and ../ throughout
    "unicode": "\\xff ünï ✓ \u202e %s $HOME",
    "dotdot": "../dotdot/..",
}
RUN_CASES = [("env value " + repr(v)[:30], v) for v in HOSTILE_VALUES] + \
            [("argv element " + repr(v)[:30], v) for v in HOSTILE_VALUES] + \
            [("task id " + repr(t)[:30], t) for t in RUN_IDS.values()]


def run_tasks() -> list[dict[str, Any]]:
    environ = task(RUN_IDS["environ"], {
        "value": "/bin/cat", "shell": False, "arguments": ["cat", "/proc/self/environ"],
        "environment": {"variables": [{"name": k, "value": v} for k, v in ENV_VARIABLES.items()]}})
    argv = task(RUN_IDS["argv"], {
        "value": "/bin/sh", "shell": False,
        "arguments": ["sh", "-c", 'printf "%s\\0" "$MESOS_TASK_ID" "$@"', "argv0", *HOSTILE_VALUES]},
        name="../../" * 10 + "$(touch /tmp/pwned)")
    unicode = task(RUN_IDS["unicode"], {"value": 'printf "%s\\0" "$MESOS_TASK_ID"', "shell": True},
                   labels=image_label("busybox"))
    dotdot = task(RUN_IDS["dotdot"], {"value": 'printf "%s\\0" "$MESOS_TASK_ID"', "shell": True},
                  name="\n'\"`$(id)`")
    return [environ, argv, unicode, dotdot]


# --- parser-level cases the agent stand-in will not forward ----------------------------------

PARSER_CASES: list[tuple[str, Any]] = [
    ("TaskInfo a list", ["task_id", "x"]),
    ("TaskInfo a string", "task_id=x"),
    ("task_id missing", {"name": "x", "command": {"value": "true"}}),
    ("task_id.value an integer", {"task_id": {"value": 5}, "command": {"value": "true"}}),
    ("task_id a string, not an object", {"task_id": "x", "command": {"value": "true"}}),
    ("task_id.value empty", {"task_id": {"value": ""}, "command": {"value": "true"}}),
]

TOTAL_CASES = len(ERROR_CASES) + len(GROUP_CASES) + len(RUN_CASES) + len(PARSER_CASES)
assert len(ERROR_CASES) + len(GROUP_CASES) + len(RUN_CASES) >= 40, "the executor must see at least 40 cases"

SUSPICIOUS = re.compile(r"pwned|[$`;'\"\n\\]|^\.\.|passwd")
WATCHED_DIRS = [Path("/"), Path("/tmp"), Path("/etc"), Path("/root"), Path("/var/lib/vm-isolation"),
                Path("/run/vm-isolation"), Path("/var/log/vm-isolation")]


def suspicious_entries() -> set[str]:
    """Names in a few host directories that look like a hostile value escaped into a path."""
    found = set()
    for directory in WATCHED_DIRS:
        try:
            found |= {str(p) for p in directory.iterdir() if SUSPICIOUS.search(p.name)}
        except OSError:
            continue
    return found


def paths_escaping(root: Path) -> list[str]:
    """Paths under ``root`` that resolve outside it (a symlink or a name that climbs out)."""
    top = root.resolve()
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if not path.resolve().is_relative_to(top):
                bad.append(str(path))
    return bad


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[LocalAgent]:
    with LocalAgent(tmp_path / "agent") as agent:
        yield agent


def name_prefix(task_id: str) -> str:
    """The start every domain name of ``task_id``'s guest has (the hint without the random tail)."""
    return domain_name_for(task_id).rsplit("-", 1)[0] + "-"


class HostGuard:
    """No /tmp/pwned, no suspicious new names, and no domain/overlay/key of this test's guests left."""

    def __init__(self, leftovers: Leftovers) -> None:
        assert not PWNED.exists(), "remove /tmp/pwned left by something else before running this test"
        self.leftovers = leftovers
        self.before, self.suspicious = leftovers.snapshot(), suspicious_entries()

    def assert_clean(self, task_ids: list[str]) -> None:
        assert not PWNED.exists()
        assert suspicious_entries() - self.suspicious == set()
        prefixes = {name_prefix(t) for t in task_ids}
        assert "vmiso-" not in prefixes, "give every task id a hint so parallel tests' guests are not counted"
        self.leftovers.assert_none_since(self.before, prefixes=prefixes)


@pytest.fixture
def guard(leftovers: Leftovers) -> HostGuard:
    return HostGuard(leftovers)


def test_case_table_holds_at_least_forty_executor_cases() -> None:
    """The tables below the executor carry >= 40 hostile cases (plus the parser-only ones)."""
    assert len(ERROR_CASES) + len(GROUP_CASES) + len(RUN_CASES) >= 40
    assert len(PARSER_CASES) == TOTAL_CASES - len(ERROR_CASES) - len(GROUP_CASES) - len(RUN_CASES)


def test_every_invalid_task_gets_task_error_from_one_executor_without_a_guest(
        agent: LocalAgent, guard: HostGuard) -> None:
    """Each malformed or hostile TaskInfo ends in TASK_ERROR/REASON_TASK_INVALID with a message;
    the executor then exits 0; the agent refuses the parser-only shapes."""
    started = time.monotonic()
    handle = agent.launch_executor("hostile-errors", executor_command())
    for _name, info in ERROR_CASES:  # queued until SUBSCRIBED, then sent in one burst
        agent.launch_task("hostile-errors", info)
    agent.launch_task_group("hostile-errors", GROUP_CASES)
    for _name, raw in PARSER_CASES:
        if not (isinstance(raw, dict) and raw.get("task_id") == {"value": ""}):
            with pytest.raises((ValueError, AttributeError)):  # the stand-in refuses to forward it
                agent.launch_task("hostile-errors", raw)
    wrong = {}
    for name, info in [*ERROR_CASES, *(("task group", t) for t in GROUP_CASES)]:
        final = agent.wait_for_terminal(info["task_id"]["value"], ERROR_S)
        states = [u.state for u in agent.updates(info["task_id"]["value"])]
        if (final.state, final.reason) != ("TASK_ERROR", "REASON_TASK_INVALID") or not final.message \
                or "TASK_RUNNING" in states:
            wrong[name] = (states, final.reason, final.message)
    assert wrong == {}
    assert handle.wait(60) == 0
    assert time.monotonic() - started < 120, "no guest should have been booted for invalid tasks"
    guard.assert_clean([info["task_id"]["value"] for _n, info in ERROR_CASES])


def test_hostile_ids_names_environment_and_argv_pass_through_literally(
        agent: LocalAgent, guard: HostGuard) -> None:
    """Four guests in one executor print their task id, environment and argv: byte for byte the
    values given, with nothing executed and no path outside the sandbox."""
    handle = agent.launch_executor("hostile-run", executor_command())
    tasks = run_tasks()
    for info in tasks:
        agent.launch_task("hostile-run", info)
    outputs = {}
    for key, task_id in RUN_IDS.items():
        final = agent.wait_for_terminal(task_id, BOOT_S)
        assert final.state == "TASK_FINISHED", (key, final.reason, final.message)
        outputs[key] = (handle.sandbox / "tasks" / task_dir_name(task_id) / "stdout").read_bytes().decode()
    environ = dict(entry.split("=", 1) for entry in outputs["environ"].split("\0") if entry)
    assert {k: environ.get(k) for k in ENV_VARIABLES} == ENV_VARIABLES
    assert environ["MESOS_TASK_ID"] == RUN_IDS["environ"]
    assert outputs["argv"].split("\0") == [RUN_IDS["argv"], *HOSTILE_VALUES, ""]
    assert outputs["unicode"] == RUN_IDS["unicode"] + "\0"
    assert outputs["dotdot"] == "../dotdot/..\0"
    task_dirs = sorted(p.name for p in (handle.sandbox / "tasks").iterdir())
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", name) and not name.startswith(".") for name in task_dirs)
    assert len(task_dirs) == len(tasks)
    assert paths_escaping(agent.work_dir) == []
    assert handle.wait(60) == 0
    guard.assert_clean(list(RUN_IDS.values()))


@pytest.mark.parametrize("name,raw", PARSER_CASES, ids=[c[0] for c in PARSER_CASES])
def test_shapes_the_agent_will_not_forward_are_invalid_for_the_parser(name: str, raw: Any,
                                                                     settings: Settings) -> None:
    """TaskInfo shapes that cannot reach the executor through the agent are InvalidTask to parse_task."""
    with pytest.raises(InvalidTask):
        parse_task(raw, settings)
