"""TaskInfo.health_check and TaskInfo.check as values, with Mesos's defaults and limits.

Mesos's own executors run these inside the task's container; vm-isolation runs them inside the
task's guest (:mod:`checks`). Both shapes are the v1 JSON of ``HealthCheck`` and ``CheckInfo``:

    health_check: {"type": "COMMAND"|"HTTP"|"TCP", "command": CommandInfo,
                   "http": {"port", "path", "scheme"}, "tcp": {"port"}, "delay_seconds": 15,
                   "interval_seconds": 10, "timeout_seconds": 20, "consecutive_failures": 3,
                   "grace_period_seconds": 10}
    check:        {"type": ..., "command": {"command": CommandInfo}, "http": {"port", "path"},
                   "tcp": {"port"}, "delay_seconds": 15, "interval_seconds": 10, "timeout_seconds": 20}

A malformed one is InvalidTask (TASK_ERROR naming the field), never a crash.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, TypeVar

from .errors import InvalidTask

_C = TypeVar("_C")
MAX_SECONDS = 24 * 3600.0


class ProbeKind(enum.StrEnum):
    COMMAND = "COMMAND"
    HTTP = "HTTP"
    TCP = "TCP"


@dataclass(frozen=True)
class Probe:
    kind: ProbeKind
    command: Any = None
    """COMMAND: the CommandSpec to run in the guest."""
    port: int = 0
    path: str = "/"


@dataclass(frozen=True)
class CheckSpec:
    probe: Probe
    delay_s: float = 15.0
    interval_s: float = 10.0
    timeout_s: float = 20.0
    consecutive_failures: int = 3
    """Health checks only: failures in a row (after the grace period) that kill the task."""
    grace_period_s: float = 10.0
    """Health checks only: failures this soon after the task started do not count (until a success)."""


def parse_health_check(raw: Any, command_info: Callable[[Mapping[str, Any]], _C]) -> Optional[CheckSpec]:
    if raw is None:
        return None
    what = "TaskInfo.health_check"
    obj = _mapping(raw, what)
    kind = obj.get("type") or ("COMMAND" if "command" in obj else None)
    probe = _probe(obj, kind, what, lambda o: command_info(_mapping(o.get("command"), f"{what}.command")))
    if probe.kind is ProbeKind.HTTP and str(_mapping(obj.get("http"), f"{what}.http").get("scheme", "http")) != "http":
        raise InvalidTask(f"{what}.http.scheme: only http is supported inside the guest")
    failures = obj.get("consecutive_failures", 3)
    if not isinstance(failures, int) or isinstance(failures, bool) or not 1 <= failures <= 1000:
        raise InvalidTask(f"{what}.consecutive_failures must be an integer from 1 to 1000")
    return CheckSpec(probe, delay_s=_seconds(obj, "delay_seconds", 15.0, what),
                     interval_s=_seconds(obj, "interval_seconds", 10.0, what, positive=True),
                     timeout_s=_seconds(obj, "timeout_seconds", 20.0, what, positive=True),
                     consecutive_failures=failures,
                     grace_period_s=_seconds(obj, "grace_period_seconds", 10.0, what))


def parse_check(raw: Any, command_info: Callable[[Mapping[str, Any]], _C]) -> Optional[CheckSpec]:
    if raw is None:
        return None
    what = "TaskInfo.check"
    obj = _mapping(raw, what)

    def command(o: Mapping[str, Any]) -> _C:
        inner = _mapping(o.get("command"), f"{what}.command")
        return command_info(_mapping(inner.get("command"), f"{what}.command.command"))

    return CheckSpec(_probe(obj, obj.get("type"), what, command),
                     delay_s=_seconds(obj, "delay_seconds", 15.0, what),
                     interval_s=_seconds(obj, "interval_seconds", 10.0, what, positive=True),
                     timeout_s=_seconds(obj, "timeout_seconds", 20.0, what, positive=True))


def _probe(obj: Mapping[str, Any], kind: Any, what: str,
           command: Callable[[Mapping[str, Any]], Any]) -> Probe:
    try:
        probe_kind = ProbeKind(kind)
    except ValueError:
        raise InvalidTask(f"{what}.type must be COMMAND, HTTP or TCP (got {str(kind)[:40]!r})") from None
    if probe_kind is ProbeKind.COMMAND:
        return Probe(probe_kind, command=command(obj))
    section = _mapping(obj.get(probe_kind.value.lower()), f"{what}.{probe_kind.value.lower()}")
    port = section.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise InvalidTask(f"{what}.{probe_kind.value.lower()}.port must be a port number (1-65535)")
    path = section.get("path", "/")
    if probe_kind is ProbeKind.HTTP and (not isinstance(path, str) or not path.startswith("/")
                                         or any(c in path for c in "\r\n \t\0")):
        raise InvalidTask(f"{what}.http.path must be an absolute URL path without spaces or control characters")
    return Probe(probe_kind, port=port, path=path if probe_kind is ProbeKind.HTTP else "/")


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidTask(f"{what} must be a JSON object")
    return value


def _seconds(obj: Mapping[str, Any], key: str, default: float, what: str, *, positive: bool = False) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or value > MAX_SECONDS or (positive and value == 0):
        raise InvalidTask(f"{what}.{key} must be a number of seconds from {'above ' if positive else ''}0 "
                          f"to {MAX_SECONDS:g}")
    return float(value)
