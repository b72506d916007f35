"""Lifecycle hooks (the Huawei callbacks): render an instance's environment before launch,
and hear when it runs, is lost or finishes. They run on the scheduler's thread: keep them quick.

``on_running`` fires again for a task adopted after a restart or re-registration (its phase
was unknown until the master answered); ``on_lost``/``on_finished`` never fire for a task the
scheduler killed itself (delete, scale down).
"""

from __future__ import annotations

import logging
from typing import Protocol

from .model import GroupSpec

log = logging.getLogger(__name__)


class Hooks(Protocol):
    def before_launch(self, spec: GroupSpec, ordinal: int, env: dict[str, str]) -> dict[str, str]:
        """The environment the instance's command gets (``env`` already holds its identity)."""
        ...

    def on_running(self, instance: str, task_id: str, agent_id: str) -> None: ...
    def on_lost(self, instance: str, task_id: str, state: str, message: str) -> None: ...
    def on_finished(self, instance: str, task_id: str, state: str, message: str) -> None: ...


class NoHooks:
    """The default: the environment as it is; events logged."""

    def before_launch(self, spec: GroupSpec, ordinal: int, env: dict[str, str]) -> dict[str, str]:
        return env

    def on_running(self, instance: str, task_id: str, agent_id: str) -> None:
        log.info("%s running (task %s on agent %s)", instance, task_id, agent_id)

    def on_lost(self, instance: str, task_id: str, state: str, message: str) -> None:
        log.warning("%s lost (task %s %s: %s); it is relaunched after its back-off", instance, task_id, state, message)

    def on_finished(self, instance: str, task_id: str, state: str, message: str) -> None:
        log.info("%s finished (task %s); it is launched again after its back-off", instance, task_id)
