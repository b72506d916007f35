"""Running tasks through the local agent stand-in and the real executor, as cli/run.py does."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any, Iterable, Optional

from vm_isolation.config import conf_path
from vm_isolation.localagent import TERMINAL_STATES, LocalAgent, StatusRecord
from vm_isolation.taskinfo import IMAGE_LABEL

from .common import BENCH_PREFIX, TASK_MEM_MIB, now

RUNNING = "TASK_RUNNING"


def executor_command(config: Optional[Path] = None) -> dict[str, Any]:
    """The executor's CommandInfo, reading ``config`` (default: the host's configuration)."""
    script = Path(sys.executable).parent / "vm-isolation-executor"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "vm_isolation.cli.executor"]
    argv += ["--config", str(config or conf_path(None))]
    # No linger: these executors get no task after their last (the linger has its own test).
    return {"value": argv[0], "shell": False, "arguments": argv, "environment": {"variables": [
        {"name": "VM_ISOLATION_EXECUTOR_LINGER_S", "value": "0"}]}}


def task_info(task_id: str, command: str, mem_mib: int = TASK_MEM_MIB, image: Optional[str] = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": task_id, "task_id": {"value": task_id},
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 1}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": mem_mib}}],
        "command": {"value": command, "shell": True},
    }
    if image is not None:
        info["labels"] = {"labels": [{"key": IMAGE_LABEL, "value": image}]}
    return info


def fresh_id(kind: str) -> str:
    """``bench-<kind>-<hex>``: the executor names the task's domain ``vmiso-bench-...`` after it."""
    return f"{BENCH_PREFIX}{kind}-{uuid.uuid4().hex[:8]}"


def first_state(agent: LocalAgent, task_id: str, states: Iterable[str], deadline_at: float) -> Optional[StatusRecord]:
    """The first update of the task in ``states`` or terminal; None if none came by ``deadline_at``."""
    wanted = set(states) | set(TERMINAL_STATES)
    try:
        return agent.wait_for_state(task_id, wanted, max(0.0, deadline_at - now()))
    except TimeoutError:
        return None


def record_of(agent: LocalAgent, task_id: str, state: str) -> Optional[StatusRecord]:
    return next((u for u in agent.updates(task_id) if u.state == state), None)
