"""The executor's end of the warm pool's socket (see :mod:`poolwire` for the protocol).

:meth:`PoolClient.take` asks for a guest of one shape and returns a :class:`Handover` holding
the offer and the open connection, or None with the reason (no pool, none of that shape, a
pool that does not answer within ``timeout_s``, a malformed answer): the caller then boots
cold. Nothing here raises for the pool's sake.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path
from typing import Optional

from .poolwire import Offer, ProtocolError, Shape, decode, encode, parse_offer, take_request

log = logging.getLogger(__name__)


class Handover:
    """An offered guest and the connection to answer on (:meth:`taken` or :meth:`refused`)."""

    def __init__(self, conn: socket.socket, offer: Offer) -> None:
        self._conn = conn
        self.offer = offer
        self._answered = False

    def taken(self) -> None:
        """Tell the pool the guest is ours (its owner metadata names us already)."""
        self._answer({"op": "taken"})

    def refused(self, why: str) -> None:
        self._answer({"op": "refused", "why": why[:200]})

    def close(self) -> None:
        if not self._answered:
            self.refused("closed")
        with contextlib.suppress(OSError):
            self._conn.close()

    def _answer(self, message: dict[str, str]) -> None:
        if self._answered:
            return
        self._answered = True
        try:
            self._conn.sendall(encode(message))
        except OSError as exc:  # the pool is gone: the owner metadata decides all the same
            log.warning("pool: could not answer %s: %s", message["op"], exc)


class PoolClient:
    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.last_miss = ""
        """Why the last :meth:`take` returned None (for logs)."""

    def take(self, shape: Shape) -> Optional[Handover]:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(self.timeout_s)
        try:
            conn.connect(str(self.path))
            conn.sendall(encode(take_request(shape)))
            message = decode(_read_line(conn))
            if message.get("op") != "offer":
                why = message.get("why") or message.get("error") or message.get("op")
                self._miss(conn, f"the pool has none: {str(why)[:200]}")
                return None
            return Handover(conn, parse_offer(message))
        except (OSError, ProtocolError) as exc:
            self._miss(conn, f"the pool at {self.path} did not offer a guest ({exc})")
            return None

    def _miss(self, conn: socket.socket, why: str) -> None:
        self.last_miss = why
        with contextlib.suppress(OSError):
            conn.close()
        return None


def _read_line(conn: socket.socket, limit: int = 4096) -> bytes:
    data = bytearray()
    while True:
        chunk = conn.recv(1024)
        if not chunk:
            raise ProtocolError("the pool closed the connection")
        data += chunk
        if b"\n" in data:
            return bytes(data.split(b"\n", 1)[0])
        if len(data) > limit:
            raise ProtocolError("the pool's answer is too long")
