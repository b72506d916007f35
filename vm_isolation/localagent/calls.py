"""The request checks of ``Http::executor`` (src/slave/http.cpp), in the agent's order.

1. agent still recovering (before the reconnect phase) -> 503 for everything;
2. method other than POST -> 405 (with ``Allow: POST``);
3. ``Content-Type`` missing -> 400; not JSON -> 415 (see the NOTE on protobuf);
4. body not JSON -> 400; not convertible into a ``Call`` -> 400;
5. ``validateExecutorCall`` fails -> 400;
6. SUBSCRIBE whose ``Accept`` excludes JSON -> 406; HEARTBEAT -> 202 before any lookup;
   other calls while the agent is in the reconnect phase of recovery -> 503.

Framework/executor lookup and the 403 for unsubscribed executors need agent state, so they
live in :mod:`.core`. Everything here is a pure function of the request.

NOTE: the real agent also accepts ``application/x-protobuf`` bodies and can stream protobuf
events. This stand-in speaks JSON only: a protobuf body gets 415 and an ``Accept`` that
allows only protobuf gets 406, each with a message saying so.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from .schema import ConversionError, convert_call
from .wire import b64decode, uuid_error

APPLICATION_JSON = "application/json"
APPLICATION_PROTOBUF = "application/x-protobuf"


class Phase(enum.Enum):
    """Where the agent is in its life, as far as the executor endpoint can tell."""

    RUNNING = "running"
    STARTING = "starting"
    """Just restarted, its executor API not routed yet: libprocess answers 404 (seen on the
    real agent, tests/mesos/test_lifecycle.py, right after a SIGKILL and restart)."""
    RECOVERING = "recovering"
    """Before recovery reached its reconnect phase: every request gets 503."""
    RECONNECTING = "reconnecting"
    """Waiting for executors to re-subscribe: SUBSCRIBE and HEARTBEAT work, other calls get 503."""


@dataclass(frozen=True)
class Reply:
    """A complete, non-streaming HTTP answer."""

    status: int
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ExecutorCall:
    """A call that passed every check that needs no agent state."""

    type: Optional[str]
    """``SUBSCRIBE``/``UPDATE``/``MESSAGE``/``HEARTBEAT``/``UNKNOWN``."""
    executor_id: str
    framework_id: str
    body: dict[str, Any]
    """The call after conversion (nulls and unknown optional enums dropped)."""


def check_call(method: str, headers: Mapping[str, str], body: bytes, phase: Phase) -> Union[ExecutorCall, Reply]:
    """Run the stateless checks; return the call, or the :class:`Reply` that ends it.

    ``headers`` must be keyed by lower-case header name.
    """
    if phase is Phase.STARTING:
        return Reply(404, "404 Not Found.")
    if phase is Phase.RECOVERING:
        return Reply(503, "Agent has not finished recovery")
    if method != "POST":
        return Reply(405, f"405 Method Not Allowed. Expecting one of {{ 'POST' }}, but received '{method}'.",
                     (("Allow", "POST"),))
    parsed = _parse_body(headers.get("content-type"), body)
    if isinstance(parsed, Reply):
        return parsed
    error = validate_executor_call(parsed)
    if error is not None:
        return Reply(400, "Failed to validate Executor::Call: " + error)
    call = ExecutorCall(parsed.get("type"), parsed["executor_id"]["value"], parsed["framework_id"]["value"], parsed)
    return _check_by_type(call, headers.get("accept"), phase)


def _parse_body(content_type: Optional[str], body: bytes) -> Union[dict[str, Any], Reply]:
    if content_type is None:
        return Reply(400, "Expecting 'Content-Type' to be present")
    # The agent compares the whole header: "application/json; charset=utf-8" is a 415.
    if content_type == APPLICATION_PROTOBUF:
        return Reply(415, f"Expecting 'Content-Type' of {APPLICATION_JSON}: this local agent does not "
                          f"parse {APPLICATION_PROTOBUF} (the real agent does)")
    if content_type != APPLICATION_JSON:
        return Reply(415, f"Expecting 'Content-Type' of {APPLICATION_JSON} or {APPLICATION_PROTOBUF}")
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return Reply(400, f"Failed to parse body into JSON: {exc}")
    try:
        return convert_call(value)
    except ConversionError as exc:
        return Reply(400, f"Failed to convert JSON into Call protobuf: {exc}")


def _check_by_type(call: ExecutorCall, accept: Optional[str], phase: Phase) -> Union[ExecutorCall, Reply]:
    if call.type == "SUBSCRIBE":
        if accepts_media_type(accept, APPLICATION_JSON):
            return call
        if accepts_media_type(accept, APPLICATION_PROTOBUF):
            return Reply(406, f"Expecting 'Accept' to allow '{APPLICATION_JSON}': this local agent does not "
                              f"stream {APPLICATION_PROTOBUF} (the real agent does)")
        return Reply(406, f"Expecting 'Accept' to allow '{APPLICATION_PROTOBUF}' or '{APPLICATION_JSON}'")
    if call.type == "HEARTBEAT":
        # Answered before any lookup: the ids may be dummies (src/executor/executor.cpp).
        return Reply(202)
    if phase is Phase.RECONNECTING:
        return Reply(503, "Agent has not finished recovery")
    return call


def validate_executor_call(call: Mapping[str, Any]) -> Optional[str]:
    """``common::validation::validateExecutorCall``: the error message, or None if valid."""
    kind = call.get("type")
    if kind is None:
        return "Expecting 'type' to be present"
    if kind == "SUBSCRIBE" and "subscribe" not in call:
        return "Expecting 'subscribe' to be present"
    if kind == "MESSAGE" and "message" not in call:
        return "Expecting 'message' to be present"
    if kind == "UPDATE":
        if "update" not in call:
            return "Expecting 'update' to be present"
        return _validate_update(call)
    return None


def _validate_update(call: Mapping[str, Any]) -> Optional[str]:
    status = call["update"]["status"]
    executor_id = call["executor_id"]["value"]
    framework_id = call["framework_id"]["value"]
    if "uuid" not in status:
        return "Expecting 'uuid' to be present"
    error = uuid_error(b64decode(status["uuid"]))
    if error is not None:
        return error
    status_executor = status.get("executor_id", {}).get("value")
    if "executor_id" in status and status_executor != executor_id:
        return f"ExecutorID in Call: {executor_id} does not match ExecutorID in TaskStatus: {status_executor}"
    if status.get("source") != "SOURCE_EXECUTOR":
        return (f"Received Call from executor {executor_id} of framework {framework_id} "
                "with invalid source, expecting 'SOURCE_EXECUTOR'")
    if status["state"] == "TASK_STAGING":
        return f"Received TASK_STAGING from executor {executor_id} of framework {framework_id} which is not allowed"
    return None


def accepts_media_type(accept: Optional[str], media_type: str) -> bool:
    """libprocess ``Request::acceptsMediaType``: exact, then ``type/*``, then ``*/*``.

    The first range that matches decides: accepted unless it carries a ``q`` of 0 (or an
    unparsable one). No header accepts everything. NOTE: an empty header is treated as
    absent, because libprocess's request decoder does not store empty header values.
    """
    if accept is None or not accept.strip():
        return True
    cleaned = "".join(accept.split())
    major = media_type.split("/")[0]
    for candidate in (media_type, f"{major}/*", "*/*"):
        for entry in filter(None, cleaned.split(",")):
            tokens = [t for t in entry.split(";") if t]
            if tokens and tokens[0].lower() == candidate.lower():
                return _q_allows(tokens[1:])
    return False


def _q_allows(params: list[str]) -> bool:
    q_values = [p.split("=", 1)[1] for p in params if p.startswith("q=")]
    if len(q_values) != 1:
        return True
    try:
        return float(q_values[0]) > 0
    except ValueError:
        return False
