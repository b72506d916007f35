"""The TaskInfo an instance is launched with (generic mode: vm-isolation-executor + data).

Pure: the same inputs give the same JSON. The command travels in ``data`` as a JSON
CommandInfo (Mesos refuses a TaskInfo with both ``executor`` and ``command``); the instance's
identity reaches the guest as environment variables (``VMISO_GROUP``, ``VMISO_INSTANCE``,
``VMISO_ORDINAL``, ``VMISO_COMPONENT``), after the group's own ``env`` and whatever the
launch hook rendered.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .model import GroupSpec
from .placement import EXECUTOR_CPUS, EXECUTOR_MEM_MIB

IMAGE_LABEL = "vm_isolation.image"
INSTANCE_LABEL = "vm_isolation.instance"


@dataclass(frozen=True)
class ExecutorCommand:
    """How agents start vm-isolation-executor."""

    path: str
    config: Optional[str] = None
    shutdown_grace_s: float = 10.0


def new_task_id(instance: str) -> str:
    """A fresh task id for ``instance``: the name (safe by construction) and random hex."""
    return f"{instance}.{secrets.token_hex(4)}"


def instance_of(task_id: str) -> str:
    return task_id.rpartition(".")[0]


def _scalar(name: str, value: float) -> dict[str, Any]:
    return {"name": name, "type": "SCALAR", "scalar": {"value": value}}


def identity_env(spec: GroupSpec, ordinal: int) -> dict[str, str]:
    return {**dict(spec.env), "VMISO_GROUP": spec.name, "VMISO_INSTANCE": f"{spec.name}-{ordinal}",
            "VMISO_ORDINAL": str(ordinal), "VMISO_COMPONENT": spec.component}


def task_info(spec: GroupSpec, ordinal: int, task_id: str, agent_id: str, executor: ExecutorCommand,
              env: Mapping[str, str]) -> dict[str, Any]:
    arguments = ["vm-isolation-executor"] + (["--config", executor.config] if executor.config else [])
    command = {"value": spec.command, "shell": True,
               "environment": {"variables": [{"name": k, "value": v} for k, v in sorted(env.items())]}}
    instance = f"{spec.name}-{ordinal}"
    return {
        "name": instance,
        "task_id": {"value": task_id},
        "agent_id": {"value": agent_id},
        "resources": [_scalar("cpus", spec.cpus), _scalar("mem", spec.mem)],
        "executor": {
            "executor_id": {"value": f"{task_id}.executor"}, "type": "CUSTOM", "name": "vm-isolation",
            "command": {"value": executor.path, "shell": False, "arguments": arguments},
            "resources": [_scalar("cpus", EXECUTOR_CPUS), _scalar("mem", EXECUTOR_MEM_MIB)],
            "shutdown_grace_period": {"nanoseconds": int(executor.shutdown_grace_s * 1e9)},
        },
        "labels": {"labels": [{"key": IMAGE_LABEL, "value": spec.image}, {"key": INSTANCE_LABEL, "value": instance}]},
        "data": base64.b64encode(json.dumps(command).encode()).decode(),
    }
