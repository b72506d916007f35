"""The scheduler's values: a group of instances as declared, and its validation.

A *group* is what a client declares (``POST /v1/instances``): an image, resources, a command,
a component type and a count. It stands for the instances ``NAME-0 … NAME-(count-1)``, stable
identities in the manner of a Kubernetes StatefulSet: an instance keeps its name across
relaunches, only its Mesos task id changes.

Everything here is pure. :func:`parse_group` is the one gate for client input: names must
match :data:`NAME_PATTERN` (so they are safe in task ids, domain names, SQL parameters and
ZooKeeper paths), numbers are bounded, unknown fields are refused, and every refusal is an
:class:`InvalidSpec` whose message names the field.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

NAME_PATTERN = re.compile(r"[a-z](?:[a-z0-9-]{0,30}[a-z0-9])?")
"""Group, component and image names: lower-case letters, digits and inner dashes, 1-32 chars
(always used with ``fullmatch``: ``$`` would accept a trailing newline)."""
MAX_COUNT = 64
MAX_COMMAND = 8192
MAX_ENV = 32
MAX_ENV_VALUE = 4096
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
CPUS_RANGE = (0.05, 16.0)
MEM_RANGE_MIB = (32.0, 16384.0)

FIELDS = {"name", "image", "cpus", "mem", "command", "component", "count", "env"}
REQUIRED = {"name", "command"}


class InvalidSpec(ValueError):
    """Client input that cannot be accepted; the message says which field and why."""


@dataclass(frozen=True)
class GroupSpec:
    """A declared group of instances; equal specs are the same declaration (idempotent create)."""

    name: str
    command: str
    image: str = "busybox"
    cpus: float = 0.2
    mem: float = 128.0
    component: str = ""
    """The component type instances are spread by (:func:`parse_group` defaults it to the name)."""
    count: int = 1
    env: tuple[tuple[str, str], ...] = ()

    def instance_names(self) -> list[str]:
        return [instance_name(self.name, i) for i in range(self.count)]

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["env"] = dict(self.env)
        return body

    def same_declaration(self, other: GroupSpec) -> bool:
        """Equal in everything but count (what PATCH may change)."""
        return {**self.to_json(), "count": 0} == {**other.to_json(), "count": 0}


def instance_name(group: str, ordinal: int) -> str:
    return f"{group}-{ordinal}"


def split_instance(name: str) -> tuple[str, int]:
    """``web-3`` -> (``web``, 3); ValueError for a name that is not ``GROUP-ORDINAL``."""
    group, _, ordinal = name.rpartition("-")
    if not group or not ordinal.isdigit():
        raise ValueError(f"not an instance name: {name!r}")
    return group, int(ordinal)


def check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        shown = repr(value)[:60]
        raise InvalidSpec(f"{what} must be 1-32 characters of a-z, 0-9 and inner '-', starting with a letter "
                          f"(got {shown})")
    return value


def _number(body: Mapping[str, Any], key: str, default: float, bounds: tuple[float, float]) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidSpec(f"{key} must be a number")
    low, high = bounds
    if not low <= value <= high:
        raise InvalidSpec(f"{key} must be between {low:g} and {high:g} (got {value:g})")
    return float(value)


def parse_count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec("count must be an integer")
    if not 0 <= value <= MAX_COUNT:
        raise InvalidSpec(f"count must be between 0 and {MAX_COUNT} (got {value})")
    return value


def _env(value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidSpec("env must be an object of NAME: value strings")
    if len(value) > MAX_ENV:
        raise InvalidSpec(f"env may hold at most {MAX_ENV} variables")
    pairs = []
    for key, item in value.items():
        if not ENV_NAME.fullmatch(key):
            raise InvalidSpec(f"env: {key[:60]!r} is not a valid variable name")
        if not isinstance(item, str) or len(item) > MAX_ENV_VALUE or "\0" in item:
            raise InvalidSpec(f"env: {key} must be a string of at most {MAX_ENV_VALUE} characters without NUL")
        pairs.append((key, item))
    return tuple(sorted(pairs))


def parse_group(body: object) -> GroupSpec:
    """A :class:`GroupSpec` from a decoded JSON body; :class:`InvalidSpec` for anything else."""
    if not isinstance(body, dict):
        raise InvalidSpec("the body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise InvalidSpec(f"unknown field(s): {', '.join(repr(k)[:40] for k in unknown[:5])}; "
                          f"known: {', '.join(sorted(FIELDS))}")
    missing = sorted(REQUIRED - set(body))
    if missing:
        raise InvalidSpec(f"missing field(s): {', '.join(missing)}")
    command = body["command"]
    if not isinstance(command, str) or not command.strip() or len(command) > MAX_COMMAND or "\0" in command:
        raise InvalidSpec(f"command must be a non-empty string of at most {MAX_COMMAND} characters without NUL")
    count = parse_count(body.get("count", 1))
    if count == 0:
        raise InvalidSpec("count must be at least 1 when creating (DELETE removes a group)")
    name = check_name(body["name"], "name")
    return GroupSpec(
        name=name,
        command=command,
        image=check_name(body.get("image", "busybox"), "image"),
        cpus=_number(body, "cpus", 0.2, CPUS_RANGE),
        mem=_number(body, "mem", 128.0, MEM_RANGE_MIB),
        component=check_name(body.get("component", name), "component"),
        count=count,
        env=_env(body.get("env")),
    )


def group_from_json(body: Mapping[str, Any]) -> GroupSpec:
    """A stored group back (it was validated when declared)."""
    return parse_group({k: v for k, v in body.items() if k in FIELDS})
