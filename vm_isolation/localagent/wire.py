"""Byte-level encodings the Mesos agent uses, reproduced from its source.

* RecordIO framing of events (``<decimal length>\\n<record>``), one record per HTTP chunk;
* JSON as the agent writes it (compact, UTF-8);
* base64 decoding as stout's ``base64::decode`` does it (lenient: stops at ``=``, skips
  whitespace, rejects other non-alphabet characters);
* ``id::UUID::fromBytes`` validity (exactly 16 bytes with a known version nibble);
* stout's ``Duration`` stringification (``5secs``, ``1mins``, ``200ms``), which the agent
  uses for MESOS_* durations and in messages such as "Executor did not register within 1mins".
"""

from __future__ import annotations

import base64
import json
import string
from typing import Any

_B64_ALPHABET = frozenset(string.ascii_letters + string.digits + "+/")


class Base64Error(ValueError):
    """A bytes field is not base64; the message is stout's ("Invalid character 'x'")."""


def encode_json(value: Any) -> bytes:
    """Serialise one event the way the agent's ``jsonify`` does: compact, UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def recordio(record: bytes) -> bytes:
    """Frame one record: ``<len>\\n<record>`` (docs/recordio.md). Records are never empty."""
    return str(len(record)).encode("ascii") + b"\n" + record


def http_chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk carrying ``data`` (non-empty; the empty chunk ends the body)."""
    return f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


def b64encode(data: bytes) -> str:
    """Standard base64 with padding, as the agent writes ``bytes`` fields in JSON."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Decode like stout ``base64::decode``: stop at the first ``=``, skip whitespace.

    Raises :class:`Base64Error` on any other character outside the alphabet. A trailing
    single sextet is dropped silently, as stout does.
    """
    sextets: list[int] = []
    for char in text:
        if char == "=":
            break
        if char.isspace():
            continue
        if char not in _B64_ALPHABET:
            raise Base64Error(f"Invalid character '{char}'")
        sextets.append(_sextet(char))
    return _pack_sextets(sextets)


def _sextet(char: str) -> int:
    if char.isupper():
        return ord(char) - ord("A")
    if char.islower():
        return ord(char) - ord("a") + 26
    if char.isdigit():
        return ord(char) - ord("0") + 52
    return 62 if char == "+" else 63


def _pack_sextets(sextets: list[int]) -> bytes:
    bits = 0
    nbits = 0
    out = bytearray()
    for value in sextets:
        bits = (bits << 6) | value
        nbits += 6
        if nbits >= 8:
            nbits -= 8
            out.append((bits >> nbits) & 0xFF)
    return bytes(out)


def uuid_error(raw: bytes) -> str | None:
    """Why ``raw`` is not what ``id::UUID::fromBytes`` accepts, or None if it is.

    stout (boost 1.81) accepts exactly 16 bytes whose version nibble (high half of byte 6)
    is 1..5. A 36-character text UUID is therefore rejected, as the real agent does.
    """
    if len(raw) != 16 or not 1 <= raw[6] >> 4 <= 5:
        return "Not a valid UUID"
    return None


_UNITS_NS = (
    ("weeks", 7 * 24 * 3600 * 10**9),
    ("days", 24 * 3600 * 10**9),
    ("hrs", 3600 * 10**9),
    ("mins", 60 * 10**9),
    ("secs", 10**9),
    ("ms", 10**6),
    ("us", 10**3),
    ("ns", 1),
)


def format_duration(seconds: float) -> str:
    """Stringify a duration exactly like stout's ``operator<<(Duration)``.

    The value is printed in the unit of its bucket (the largest unit not larger than it),
    unless it is not a whole number of that unit but is a whole number of the next smaller
    one: then the smaller unit is used (90 s -> ``90secs``, 60 s -> ``1mins``, 0.2 s ->
    ``200ms``). Values print with 15 significant digits, like the C++ stream.
    """
    ns = round(seconds * 10**9)
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    for index, (unit, size) in enumerate(_UNITS_NS):
        if ns >= size or unit == "ns":
            smaller = _UNITS_NS[index + 1] if index + 1 < len(_UNITS_NS) else None
            if smaller is not None and ns % size != 0 and ns % smaller[1] == 0:
                unit, size = smaller
            return f"{sign}{ns / size:.15g}{unit}"
    raise AssertionError("unreachable: 'ns' always matches")


def nanoseconds(seconds: float) -> int:
    """Seconds as the integer nanoseconds of a Mesos ``DurationInfo``."""
    return round(seconds * 10**9)
