"""Identifiers: the domain-name NewType, and safe names derived from hostile ones.

A task id comes from a framework and may hold anything (``../``, quotes, newlines, 10 KB of
text). Nothing derived from it may reach a path, a shell or an XML document unescaped, so the
names we create (domain names, which are also guest hostnames and file names) use only
``[a-z0-9-]``, are at most 63 characters long and end in random hex, which makes them
collision-free even for two tasks whose ids differ only in characters we drop.
"""

from __future__ import annotations

import re
import secrets
from typing import NewType

DomainName = NewType("DomainName", str)

DOMAIN_PREFIX = "vmiso-"
MAX_NAME = 63  # a DNS label, so the name can be the guest's hostname too
_RANDOM_HEX = 10
_UNSAFE = re.compile(r"[^a-z0-9]+")
_DOMAIN_NAME = re.compile(r"^vmiso-(?:[a-z0-9]+(?:-[a-z0-9]+)*-)?[0-9a-f]{10}$")


def domain_name_for(task_id: str) -> DomainName:
    """A fresh, safe, unique domain name that still hints at the task it runs."""
    return DomainName(name_prefix(task_id) + secrets.token_hex(_RANDOM_HEX // 2))


def name_prefix(task_id: str) -> str:
    """The part of every domain name for ``task_id`` that precedes the random suffix."""
    hint = _UNSAFE.sub("-", task_id.lower()).strip("-")
    room = MAX_NAME - len(DOMAIN_PREFIX) - _RANDOM_HEX - 1
    hint = hint[:room].strip("-")
    return f"{DOMAIN_PREFIX}{hint}-" if hint else DOMAIN_PREFIX


def is_our_domain_name(name: str) -> bool:
    """True for names :func:`domain_name_for` can produce (used before touching files)."""
    return len(name) <= MAX_NAME and bool(_DOMAIN_NAME.match(name))


def random_mac() -> str:
    """A random MAC in the 52:54:00 range, which is locally administered (bit 0x02 set).

    A fresh MAC per guest means no earlier lease can be mistaken for this guest's; the lease of
    a destroyed guest is released at teardown so the 253-address pool does not run dry.
    """
    tail = secrets.token_bytes(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


TAP_PREFIX = "vmiso"
"""Our guests' tap devices are ``vmiso`` + the last three bytes of the MAC (:func:`tap_for`)."""
_OUR_MAC = re.compile(r"52:54:00(:[0-9a-f]{2}){3}")


def tap_for(mac: str) -> str:
    """The tap device of the guest with ``mac`` (one of ours, from :func:`random_mac`): 11
    characters, unique while the MACs are (a MAC's tap is always the same name)."""
    mac = mac.lower()
    if not _OUR_MAC.fullmatch(mac):
        raise ValueError(f"{mac!r} is not one of our MACs (52:54:00:xx:xx:xx)")
    return TAP_PREFIX + mac[9:].replace(":", "")
