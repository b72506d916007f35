"""Builders for the v1 executor ``Event`` JSON the agent writes on a SUBSCRIBE stream.

Shapes follow include/mesos/v1/executor/executor.proto and src/internal/evolve.cpp: LAUNCH
carries only ``task`` (not ``framework_info``), ACKNOWLEDGED carries the UPDATE's uuid, KILL
carries ``kill_policy`` only when one was given, SHUTDOWN and HEARTBEAT carry nothing.
"""

from __future__ import annotations

from typing import Any, Optional

from .wire import b64encode, nanoseconds

Event = dict[str, Any]


def subscribed(executor_info: dict[str, Any], framework_info: dict[str, Any], agent_info: dict[str, Any],
               container_id: str) -> Event:
    return {
        "type": "SUBSCRIBED",
        "subscribed": {
            "executor_info": executor_info,
            "framework_info": framework_info,
            "agent_info": agent_info,
            "container_id": {"value": container_id},
        },
    }


def launch(task: dict[str, Any]) -> Event:
    return {"type": "LAUNCH", "launch": {"task": task}}


def launch_group(tasks: list[dict[str, Any]]) -> Event:
    return {"type": "LAUNCH_GROUP", "launch_group": {"task_group": {"tasks": tasks}}}


def kill(task_id: str, grace_period_s: Optional[float]) -> Event:
    body: dict[str, Any] = {"task_id": {"value": task_id}}
    if grace_period_s is not None:
        body["kill_policy"] = {"grace_period": {"nanoseconds": nanoseconds(grace_period_s)}}
    return {"type": "KILL", "kill": body}


def acknowledged(task_id: str, uuid: bytes) -> Event:
    return {"type": "ACKNOWLEDGED", "acknowledged": {"task_id": {"value": task_id}, "uuid": b64encode(uuid)}}


def message(data: bytes) -> Event:
    return {"type": "MESSAGE", "message": {"data": b64encode(data)}}


def error(text: str) -> Event:
    return {"type": "ERROR", "error": {"message": text}}


def shutdown() -> Event:
    return {"type": "SHUTDOWN"}


def heartbeat() -> Event:
    return {"type": "HEARTBEAT"}
