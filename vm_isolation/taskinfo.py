"""Parsing a Mesos TaskInfo (v1 JSON) into a frozen TaskSpec, or InvalidTask saying what to change.

The command comes from ``TaskInfo.command`` — the case of command tasks, when the agent's
command executor is vm-isolation-executor — or, for frameworks that name vm-isolation-executor
in their ExecutorInfo (Mesos forbids a TaskInfo with both an executor and a command), from
``TaskInfo.data`` holding a JSON CommandInfo.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .checkspec import CheckSpec, parse_check, parse_health_check
from .config import Settings
from .errors import InvalidTask

IMAGE_LABEL = "vm_isolation.image"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# XML 1.0 cannot carry these, and they have no business in an id (newline and tab can and do).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
NS_PER_S = 1e9


@dataclass(frozen=True)
class CommandSpec:
    shell: bool
    value: str
    arguments: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    task_id: str
    name: str
    command: CommandSpec
    vcpus: int
    memory_mib: int
    image: str
    kill_grace_s: Optional[float]
    """TaskInfo.kill_policy.grace_period: a KILL without its own grace period uses it."""
    health_check: Optional[CheckSpec] = None
    """TaskInfo.health_check: run in the guest; failing ones kill the task."""
    check: Optional[CheckSpec] = None
    """TaskInfo.check: run in the guest; results reported, never a kill."""

    @property
    def dir_name(self) -> str:
        return task_dir_name(self.task_id)


def task_dir_name(task_id: str) -> str:
    """A safe, collision-free directory name for a task id (which may be anything)."""
    hint = re.sub(r"[^A-Za-z0-9_.-]+", "_", task_id)[:60].strip("._") or "task"
    return f"{hint}-{hashlib.sha256(task_id.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


def task_id_of(raw: Any) -> str:
    """The task id of a TaskInfo, or '' if it has none usable (used before full parsing)."""
    if isinstance(raw, Mapping):
        tid = raw.get("task_id")
        if isinstance(tid, Mapping) and isinstance(tid.get("value"), str):
            return str(tid["value"])
    return ""


def parse_task(raw: Any, settings: Settings) -> TaskSpec:
    """Validate a TaskInfo against the host's limits; InvalidTask says what to change."""
    if not isinstance(raw, Mapping):
        raise InvalidTask("TaskInfo is not a JSON object")
    task_id = task_id_of(raw)
    if not task_id:
        raise InvalidTask("TaskInfo has no task_id.value")
    if _CONTROL.search(task_id):
        raise InvalidTask("task_id.value contains control characters (such as NUL or ESC): use printable "
                          "characters (newlines and tabs are allowed)")
    vcpus, memory_mib = _resources(raw.get("resources", []), settings)
    return TaskSpec(
        task_id=task_id,
        name=str(raw.get("name", "")),
        command=_command(raw),
        vcpus=vcpus,
        memory_mib=memory_mib,
        image=_image(raw, settings),
        kill_grace_s=_grace(raw.get("kill_policy")),
        health_check=parse_health_check(raw.get("health_check"), command_info),
        check=parse_check(raw.get("check"), command_info),
    )


def _command(raw: Mapping[str, Any]) -> CommandSpec:
    info = raw.get("command")
    if info is None and raw.get("data"):
        info = _command_from_data(raw["data"])
    if not isinstance(info, Mapping):
        raise InvalidTask(
            "the task has no command: set TaskInfo.command, or (when vm-isolation-executor is the "
            "framework's ExecutorInfo) TaskInfo.data to a JSON CommandInfo such as "
            '{"value": "echo hi", "shell": true}')
    return command_info(info)


def command_info(info: Mapping[str, Any]) -> CommandSpec:
    """A CommandInfo (the task's, a health check's) as a CommandSpec; InvalidTask if malformed."""
    shell = info.get("shell", True)
    value = info.get("value", "")
    arguments = info.get("arguments", [])
    if not isinstance(shell, bool) or not isinstance(value, str):
        raise InvalidTask("CommandInfo.shell must be a boolean and CommandInfo.value a string")
    if not isinstance(arguments, list) or not all(isinstance(a, str) for a in arguments):
        raise InvalidTask("CommandInfo.arguments must be a list of strings")
    if not value:
        raise InvalidTask("CommandInfo.value is empty: give the command to run")
    return CommandSpec(shell=shell, value=value, arguments=tuple(arguments),
                       environment=_environment(info.get("environment")))


def _command_from_data(data: Any) -> Any:
    try:
        return json.loads(base64.b64decode(str(data), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise InvalidTask(f"TaskInfo.data is not base64 of a JSON CommandInfo: {exc}") from None


def _environment(env: Any) -> dict[str, str]:
    if env is None:
        return {}
    variables = env.get("variables", []) if isinstance(env, Mapping) else None
    if not isinstance(variables, list):
        raise InvalidTask("CommandInfo.environment.variables must be a list")
    result: dict[str, str] = {}
    for var in variables:
        if not isinstance(var, Mapping) or not isinstance(var.get("name"), str):
            raise InvalidTask("each environment variable needs a string name")
        if var.get("type", "VALUE") != "VALUE":
            raise InvalidTask(f"environment variable {var['name']!r}: only type VALUE is supported "
                              f"(secrets are not passed into guests)")
        value = var.get("value", "")
        if not isinstance(value, str):
            raise InvalidTask(f"environment variable {var['name']!r} has a non-string value")
        name = var["name"]
        if not _ENV_NAME.fullmatch(name):
            raise InvalidTask(f"environment variable name {name!r} is not a shell identifier "
                              f"([A-Za-z_][A-Za-z0-9_]*): the guest's shell would drop it, so rename it")
        if "\0" in value:
            raise InvalidTask(f"environment variable {name!r} has a NUL in its value, which no process can receive")
        result[name] = value
    return result


def _scalar(resources: Any, name: str) -> Optional[float]:
    if not isinstance(resources, list):
        raise InvalidTask("TaskInfo.resources must be a list")
    total: Optional[float] = None
    for res in resources:
        if isinstance(res, Mapping) and res.get("name") == name:
            try:
                value = float(res["scalar"]["value"])
            except (KeyError, TypeError, ValueError):
                raise InvalidTask(f"resource {name} has no numeric scalar value") from None
            if not math.isfinite(value) or value <= 0:
                raise InvalidTask(f"resource {name} = {value}: must be a finite number above 0")
            total = (total or 0.0) + value
    return total


def _resources(resources: Any, settings: Settings) -> tuple[int, int]:
    vm = settings.vm
    cpus = _scalar(resources, "cpus")
    mem = _scalar(resources, "mem")
    vcpus = max(1, math.ceil(cpus)) if cpus is not None else 1
    if vcpus > vm.max_vcpus:
        raise InvalidTask(f"cpus = {cpus}: this host gives a guest at most {vm.max_vcpus} vCPUs "
                          f"([vm] max_vcpus)")
    memory = math.ceil(mem) if mem is not None else vm.default_memory_mib
    if memory > vm.max_memory_mib:
        raise InvalidTask(f"mem = {mem} MiB: this host gives a guest at most {vm.max_memory_mib} MiB "
                          f"([vm] max_memory_mib)")
    return vcpus, max(memory, vm.memory_floor_mib)


def _image(raw: Mapping[str, Any], settings: Settings) -> str:
    labels = raw.get("labels", {})
    entries = labels.get("labels", []) if isinstance(labels, Mapping) else []
    for label in entries if isinstance(entries, list) else []:
        if isinstance(label, Mapping) and label.get("key") == IMAGE_LABEL:
            image = label.get("value")
            if not isinstance(image, str) or image not in settings.images.bases:
                known = ", ".join(sorted(settings.images.bases))
                raise InvalidTask(f"label {IMAGE_LABEL} = {image!r} names no image on this host; "
                                  f"choose one of: {known}")
            return image
    return settings.images.default


def _grace(policy: Any) -> Optional[float]:
    try:
        ns = policy["grace_period"]["nanoseconds"]
    except (TypeError, KeyError):
        return None
    try:
        seconds = float(ns) / NS_PER_S
    except (TypeError, ValueError):
        raise InvalidTask("kill_policy.grace_period.nanoseconds is not a number") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidTask("kill_policy.grace_period must be 0 or more")
    return seconds
