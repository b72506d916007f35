"""The warm pool's wire: guest shapes, and the JSON-lines protocol on its unix socket.

No I/O here, only values and their validation, so both ends (:mod:`poolserver`,
:mod:`poolclient`) and the configuration (``[pool] shapes``) share one definition. Every field
that arrives is checked before use; anything else is refused with :class:`ProtocolError`, whose
message is safe to send back (it never echoes more than a short, repr-escaped excerpt).

One connection takes at most one guest::

    executor -> pool   {"op": "take", "image": "busybox", "vcpus": 1, "memory_mib": 128}
    pool -> executor   {"op": "none", "why": "..."}                      (then the pool closes)
                     | {"op": "offer", "name", "mac", "ip", "expiry_time", "client_id",
                        "host_key"}
    executor -> pool   {"op": "taken"}      the domain's owner metadata now names the executor
                     | {"op": "refused", "why": "..."}

A peer can do nothing but take: there is no other request. What the pool does with an offered
guest once the peer answers (or vanishes) is decided by the domain's owner metadata alone, never
by what the peer said (see :mod:`pool`). No path crosses the wire: each end derives the overlay,
key directory and console log of a guest from its own configuration and the checked name.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ConfigError
from .ids import DomainName, is_our_domain_name, name_prefix

MAX_LINE = 4096
"""Longest line either end accepts (an offer is ~400 bytes)."""
POOL_TASK_HINT = "pool"
POOL_NAME_PREFIX = name_prefix(POOL_TASK_HINT)
"""``vmiso-pool-``: the names of pool guests (a name :func:`ids.is_our_domain_name` accepts)."""
MAX_VCPUS = 64
MAX_MEMORY_MIB = 1 << 20
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAC = re.compile(r"^52:54:00(:[0-9a-f]{2}){3}$")
_KEY = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa) [A-Za-z0-9+/]{8,1024}={0,2}$")
_CLIENT_ID = re.compile(r"^[0-9a-f:]{0,128}$")


class ProtocolError(Exception):
    """A message that is not what the protocol allows (the reason is safe to send back)."""


# --- shapes ----------------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Shape:
    """What a pool guest is booted as; a task gets one only if its own shape is exactly this."""

    image: str
    vcpus: int
    memory_mib: int

    def __str__(self) -> str:
        return f"{self.image}:{self.vcpus}:{self.memory_mib}"

    def to_wire(self) -> dict[str, Any]:
        return {"image": self.image, "vcpus": self.vcpus, "memory_mib": self.memory_mib}


def checked_shape(image: object, vcpus: object, memory_mib: object) -> Shape:
    """A Shape from untrusted values; ProtocolError says which is wrong."""
    if not isinstance(image, str) or not _IMAGE.fullmatch(image):
        raise ProtocolError("image must be 1-64 characters of [A-Za-z0-9_.-]")
    for field, value, top in (("vcpus", vcpus, MAX_VCPUS), ("memory_mib", memory_mib, MAX_MEMORY_MIB)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
            raise ProtocolError(f"{field} must be a whole number from 1 to {top}")
    return Shape(image, vcpus, memory_mib)  # type: ignore[arg-type]


def parse_shapes(text: str, where: str = "[pool] shapes") -> dict[Shape, int]:
    """``busybox:1:128*2, python:2:512`` -> {Shape: how many to keep idle} (``*N`` defaults to 1)."""
    shapes: dict[Shape, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        spec, _, count_text = item.partition("*")
        parts = spec.strip().split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            count = int(count_text) if count_text.strip() else 1
            shape = checked_shape(parts[0].strip(), int(parts[1]), int(parts[2]))
        except (ValueError, ProtocolError):
            raise ConfigError(f"{where}: {item!r} is not IMAGE:VCPUS:MEMORY_MIB[*COUNT] "
                              f"(e.g. busybox:1:128*2)") from None
        if not 1 <= count <= 64:
            raise ConfigError(f"{where}: {item!r}: the count must be from 1 to 64")
        shapes[shape] = shapes.get(shape, 0) + count
    return shapes


# --- messages --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Offer:
    """A pool guest offered to one executor: everything it needs to take it over."""

    name: DomainName
    mac: str
    ip: str
    expiry_time: float
    client_id: str
    host_key: str
    """The guest's SSH host key, "ssh-ed25519 AAAA...", as the guest announced it at boot. The
    client key is not sent: its directory is chowned to the peer, who loads it from there."""

    def to_wire(self) -> dict[str, Any]:
        return {"op": "offer", "name": self.name, "mac": self.mac, "ip": self.ip,
                "expiry_time": self.expiry_time, "client_id": self.client_id, "host_key": self.host_key}


def encode(message: Mapping[str, Any]) -> bytes:
    line = json.dumps(dict(message), sort_keys=True, separators=(",", ":")).encode() + b"\n"
    if len(line) > MAX_LINE:
        raise ProtocolError("message too long")
    return line


def decode(line: bytes) -> dict[str, Any]:
    """One received line as a JSON object with a string ``op``; ProtocolError otherwise."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"line longer than {MAX_LINE} bytes")
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProtocolError("not a JSON line") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ProtocolError('expected a JSON object with an "op"')
    return message


def _only(message: Mapping[str, Any], allowed: set[str]) -> None:
    extra = set(message) - allowed - {"op"}
    if extra:
        raise ProtocolError(f"unknown field(s): {', '.join(repr(k[:40]) for k in sorted(extra)[:5])}")


def parse_take(message: Mapping[str, Any]) -> Shape:
    """The shape a ``take`` asks for (the only request a peer may send)."""
    if message.get("op") != "take":
        raise ProtocolError(f"unknown request {str(message.get('op'))[:40]!r}: the only request is take")
    _only(message, {"image", "vcpus", "memory_mib"})
    return checked_shape(message.get("image"), message.get("vcpus"), message.get("memory_mib"))


def take_request(shape: Shape) -> dict[str, Any]:
    return {"op": "take", **shape.to_wire()}


def parse_offer(message: Mapping[str, Any]) -> Offer:
    """An offer from the pool, every field checked (the executor trusts the pool's socket, but a
    bug or a stale pool must not make it journal, chown or connect to anything odd)."""
    if message.get("op") != "offer":
        raise ProtocolError("expected an offer")
    _only(message, {"name", "mac", "ip", "expiry_time", "client_id", "host_key"})
    name, mac, ip = message.get("name"), message.get("mac"), message.get("ip")
    if (not isinstance(name, str) or not name.isprintable() or not is_our_domain_name(name)
            or not name.startswith(POOL_NAME_PREFIX)):
        raise ProtocolError("name is not a pool guest's domain name")
    if not isinstance(mac, str) or not _MAC.fullmatch(mac):
        raise ProtocolError("mac is not a 52:54:00 MAC in lower case")
    try:
        address = ipaddress.IPv4Address(ip if isinstance(ip, str) else "")
    except ValueError:
        raise ProtocolError("ip is not an IPv4 address") from None
    expiry = message.get("expiry_time")
    if not isinstance(expiry, (int, float)) or isinstance(expiry, bool) or not math.isfinite(expiry):
        raise ProtocolError("expiry_time is not a number")
    client_id = message.get("client_id")
    if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
        raise ProtocolError("client_id is not a DHCP client id")
    host_key = message.get("host_key")
    if not isinstance(host_key, str) or not _KEY.fullmatch(host_key):
        raise ProtocolError("host_key must be an OpenSSH public key line ('ssh-ed25519 <base64>')")
    return Offer(DomainName(name), mac, str(address), float(expiry), client_id, host_key)


def parse_answer(message: Mapping[str, Any]) -> bool:
    """True for ``taken``, False for ``refused``; ProtocolError for anything else."""
    if message.get("op") == "taken":
        _only(message, set())
        return True
    if message.get("op") == "refused":
        _only(message, {"why"})
        return False
    raise ProtocolError("expected taken or refused")
