"""JSON -> executor ``Call`` conversion with the checks and messages of stout's protobuf parser.

The real agent turns the JSON body into a ``v1::executor::Call`` protobuf with
``::protobuf::parse`` (stout): unknown fields are ignored, ``null`` means unset, an unknown
name for an *optional* enum leaves the field unset, an unknown name for a *required* enum is
an error, ``bytes`` are base64-decoded, and required fields are checked at the end
("Missing required fields: update.status.state").

Only the messages the executor API uses are described here, and inside them only the fields
the agent looks at; other fields pass through unchecked (a deliberate limit: a stand-in does
not need ``Resource`` or ``Labels`` validation to be faithful on the executor protocol).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .wire import Base64Error, b64decode

TASK_STATES = frozenset({
    "TASK_STAGING", "TASK_STARTING", "TASK_RUNNING", "TASK_KILLING", "TASK_FINISHED",
    "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST", "TASK_DROPPED",
    "TASK_UNREACHABLE", "TASK_GONE", "TASK_GONE_BY_OPERATOR", "TASK_UNKNOWN",
})
SOURCES = frozenset({"SOURCE_MASTER", "SOURCE_AGENT", "SOURCE_EXECUTOR"})
REASONS = frozenset({
    "REASON_COMMAND_EXECUTOR_FAILED", "REASON_CONTAINER_LAUNCH_FAILED",
    "REASON_CONTAINER_LIMITATION", "REASON_CONTAINER_LIMITATION_DISK",
    "REASON_CONTAINER_LIMITATION_MEMORY", "REASON_CONTAINER_PREEMPTED",
    "REASON_CONTAINER_UPDATE_FAILED", "REASON_MAX_COMPLETION_TIME_REACHED",
    "REASON_EXECUTOR_REGISTRATION_TIMEOUT", "REASON_EXECUTOR_REREGISTRATION_TIMEOUT",
    "REASON_EXECUTOR_TERMINATED", "REASON_EXECUTOR_UNREGISTERED", "REASON_FRAMEWORK_REMOVED",
    "REASON_GC_ERROR", "REASON_INVALID_FRAMEWORKID", "REASON_INVALID_OFFERS",
    "REASON_IO_SWITCHBOARD_EXITED", "REASON_MASTER_DISCONNECTED", "REASON_RECONCILIATION",
    "REASON_RESOURCES_UNKNOWN", "REASON_AGENT_DISCONNECTED", "REASON_AGENT_DRAINING",
    "REASON_AGENT_REMOVED", "REASON_AGENT_REMOVED_BY_OPERATOR", "REASON_AGENT_REREGISTERED",
    "REASON_AGENT_RESTARTED", "REASON_AGENT_UNKNOWN", "REASON_TASK_KILLED_DURING_LAUNCH",
    "REASON_TASK_CHECK_STATUS_UPDATED", "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED",
    "REASON_TASK_GROUP_INVALID", "REASON_TASK_GROUP_UNAUTHORIZED", "REASON_TASK_INVALID",
    "REASON_TASK_UNAUTHORIZED", "REASON_TASK_UNKNOWN",
})
CALL_TYPES = frozenset({"UNKNOWN", "SUBSCRIBE", "UPDATE", "MESSAGE", "HEARTBEAT"})


class ConversionError(ValueError):
    """The JSON does not convert into a Call; the message is stout's."""


@dataclass(frozen=True)
class Field:
    """One protobuf field: its JSON kind, whether required/repeated, and its content."""

    kind: str  # "message", "string", "bytes", "enum", "number", "bool"
    required: bool = False
    repeated: bool = False
    message: Optional[Mapping[str, Field]] = None
    enum: frozenset[str] = field(default_factory=frozenset)


# Field order is protobuf field-number order: it decides the order of "Missing required fields".
ID: Mapping[str, Field] = {"value": Field("string", required=True)}
TASK_STATUS: Mapping[str, Field] = {
    "task_id": Field("message", required=True, message=ID),
    "state": Field("enum", required=True, enum=TASK_STATES),
    "data": Field("bytes"),
    "message": Field("string"),
    "agent_id": Field("message", message=ID),
    "timestamp": Field("number"),
    "executor_id": Field("message", message=ID),
    "healthy": Field("bool"),
    "source": Field("enum", enum=SOURCES),
    "reason": Field("enum", enum=REASONS),
    "uuid": Field("bytes"),
}
TASK_INFO: Mapping[str, Field] = {
    "name": Field("string", required=True),
    "task_id": Field("message", required=True, message=ID),
    "agent_id": Field("message", required=True, message=ID),
}
UPDATE: Mapping[str, Field] = {"status": Field("message", required=True, message=TASK_STATUS)}
SUBSCRIBE: Mapping[str, Field] = {
    "unacknowledged_tasks": Field("message", repeated=True, message=TASK_INFO),
    "unacknowledged_updates": Field("message", repeated=True, message=UPDATE),
}
MESSAGE: Mapping[str, Field] = {"data": Field("bytes", required=True)}
CALL: Mapping[str, Field] = {
    "executor_id": Field("message", required=True, message=ID),
    "framework_id": Field("message", required=True, message=ID),
    "type": Field("enum", enum=CALL_TYPES),
    "subscribe": Field("message", message=SUBSCRIBE),
    "update": Field("message", message=UPDATE),
    "message": Field("message", message=MESSAGE),
}


def convert_call(value: Any) -> dict[str, Any]:
    """Return the Call as the agent would see it, or raise :class:`ConversionError`.

    The result is the input with ``null`` fields and unknown optional enum names removed
    (so "absent" checks work on it); everything else is kept as given.
    """
    if not isinstance(value, dict):
        raise ConversionError("Expecting a JSON object")
    converted = _convert_message(CALL, value)
    missing = _missing_required(CALL, converted, "")
    if missing:
        raise ConversionError("Missing required fields: " + ", ".join(missing))
    return converted


def _convert_message(schema: Mapping[str, Field], obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # stout keeps JSON objects in a std::map, so fields are visited in key order.
    for name in sorted(obj):
        value = obj[name]
        spec = schema.get(name)
        if value is None:
            continue
        if spec is None:
            out[name] = value
            continue
        kept = _convert_field(name, spec, value)
        if kept is not None:
            out[name] = kept
    return out


def _convert_field(name: str, spec: Field, value: Any) -> Any:
    if isinstance(value, list):
        if not spec.repeated:
            raise ConversionError(f"Not expecting a JSON array for field '{name}'")
        items = [_convert_single(name, spec, item) for item in value]
        return [item for item in items if item is not None]
    single = _convert_single(name, spec, value)
    # A single JSON value for a repeated field is taken as one element, as stout does.
    return [single] if spec.repeated and single is not None else single


def _convert_single(name: str, spec: Field, value: Any) -> Any:
    kind = _json_kind(value)
    if spec.kind == "message":
        if kind != "object":
            raise ConversionError(f"Not expecting a JSON {kind} for field '{name}'")
        assert spec.message is not None
        return _convert_message(spec.message, value)
    if spec.kind == "enum":
        if kind != "string":
            raise ConversionError(f"Not expecting a JSON {kind} for field '{name}'")
        if value in spec.enum:
            return value
        if spec.required:
            raise ConversionError(f"Failed to find enum for '{value}'")
        return None  # proto2: an unknown optional enum value is discarded.
    return _convert_scalar(name, spec, value, kind)


def _convert_scalar(name: str, spec: Field, value: Any, kind: str) -> Any:
    if spec.kind in ("string", "bytes"):
        if kind != "string":
            raise ConversionError(f"Not expecting a JSON {kind} for field '{name}'")
        if spec.kind == "bytes":
            try:
                b64decode(value)
            except Base64Error as exc:
                raise ConversionError(f"Failed to base64 decode bytes field '{name}': {exc}") from exc
        return value
    wanted = "number" if spec.kind == "number" else "boolean"
    if kind != wanted:
        raise ConversionError(f"Not expecting a JSON {kind} for field '{name}'")
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    return "number"


def _missing_required(schema: Mapping[str, Field], obj: Mapping[str, Any], prefix: str) -> list[str]:
    """Paths of unset required fields, as protobuf's ``InitializationErrorString`` lists them."""
    missing: list[str] = []
    for name, spec in schema.items():
        if name not in obj:
            if spec.required:
                missing.append(prefix + name)
            continue
        if spec.kind != "message" or spec.message is None:
            continue
        if spec.repeated:
            for index, item in enumerate(obj[name]):
                missing += _missing_required(spec.message, item, f"{prefix}{name}[{index}].")
        else:
            missing += _missing_required(spec.message, obj[name], f"{prefix}{name}.")
    return missing
