"""TaskInfo parsing: what runs, on what guest, and clear TASK_ERROR messages otherwise."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from vm_isolation.config import Settings
from vm_isolation.errors import InvalidTask
from vm_isolation.taskinfo import parse_task, task_dir_name

SETTINGS = Settings()


def task(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "t", "task_id": {"value": "t-1"}, "command": {"value": "echo hi"}}
    base.update(kw)
    return base


def res(cpus: Any = None, mem: Any = None) -> list[dict[str, Any]]:
    out = []
    if cpus is not None:
        out.append({"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}})
    if mem is not None:
        out.append({"name": "mem", "type": "SCALAR", "scalar": {"value": mem}})
    return out


def test_a_shell_command_with_resources_maps_to_a_guest() -> None:
    """cpus round up to vCPUs, mem becomes guest memory, shell defaults to true."""
    spec = parse_task(task(resources=res(1.5, 300)), SETTINGS)
    assert (spec.command.shell, spec.command.value) == (True, "echo hi")
    assert (spec.vcpus, spec.memory_mib, spec.image) == (2, 300, "busybox")


def test_memory_below_the_floor_is_raised_to_it() -> None:
    """A tiny mem request still gets a bootable guest."""
    assert parse_task(task(resources=res(0.1, 32)), SETTINGS).memory_mib == SETTINGS.vm.memory_floor_mib


def test_argv_commands_keep_arguments_and_environment() -> None:
    """shell=false keeps value and arguments; environment variables are collected."""
    spec = parse_task(task(command={"shell": False, "value": "/bin/echo", "arguments": ["echo", "a b"],
                                    "environment": {"variables": [{"name": "K", "value": "$(x)"}]}}), SETTINGS)
    assert spec.command.arguments == ("echo", "a b")
    assert spec.command.environment == {"K": "$(x)"}


def test_the_command_may_come_in_task_data() -> None:
    """With vm-isolation-executor as the ExecutorInfo, TaskInfo.data carries a JSON CommandInfo."""
    data = base64.b64encode(json.dumps({"value": "uname -a"}).encode()).decode()
    raw = task(data=data)
    del raw["command"]
    assert parse_task(raw, SETTINGS).command.value == "uname -a"


def test_the_kill_policy_grace_period_is_read() -> None:
    """kill_policy.grace_period.nanoseconds becomes seconds."""
    assert parse_task(task(kill_policy={"grace_period": {"nanoseconds": 2500000000}}), SETTINGS).kill_grace_s == 2.5


@pytest.mark.parametrize("raw, words", [
    ("not a dict", "not a JSON object"),
    (task(task_id={}), "no task_id"),
    ({"task_id": {"value": "x"}}, "no command"),
    (task(command={"value": ""}), "empty"),
    (task(command={"value": 5}), "string"),
    (task(command={"value": "x", "arguments": "a"}), "list of strings"),
    (task(resources=res(cpus=-1)), "above 0"),
    (task(resources=res(cpus=0)), "above 0"),
    (task(resources=res(cpus=float("nan"))), "finite"),
    (task(resources=res(cpus=1e9)), "max_vcpus"),
    (task(resources=res(mem=1e12)), "max_memory_mib"),
    (task(resources=res(mem="lots")), "numeric"),
    (task(labels={"labels": [{"key": "vm_isolation.image", "value": "windows"}]}), "choose one of: busybox"),
    (task(command={"value": "x", "environment": {"variables": [{"name": "A=B", "value": "1"}]}}), "identifier"),
    (task(command={"value": "x", "environment": {"variables": [{"name": "A-B", "value": "1"}]}}), "identifier"),
    (task(task_id={"value": "nul\0id"}), "control characters"),
    (task(command={"value": "x", "environment": {"variables": [{"name": "A", "value": "\0"}]}}), "NUL"),
    (task(command={"value": "x", "environment": {"variables": [{"name": "S", "type": "SECRET"}]}}), "secrets"),
    (task(command=None, data="!!notbase64"), "base64"),
])
def test_invalid_tasks_say_what_to_change(raw: Any, words: str) -> None:
    """Every invalid TaskInfo raises InvalidTask with a message naming the problem."""
    with pytest.raises(InvalidTask, match=words):
        parse_task(raw, SETTINGS)


@pytest.mark.parametrize("task_id", ["../../x", "a/b", "$(x)", "x" * 10000, "", "\n"])
def test_task_directories_are_safe_names(task_id: str) -> None:
    """A task's sandbox directory name never contains a path separator or leading dot."""
    name = task_dir_name(task_id)
    assert "/" not in name and not name.startswith(".") and len(name) <= 80
