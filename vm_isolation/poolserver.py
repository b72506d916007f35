"""The warm pool's unix socket: one connection, one ``take`` (see :mod:`poolwire`).

The socket is the pool's only input. A peer may take a guest and nothing else; every line is
size-bounded, time-bounded and validated (:func:`poolwire.parse_take`); a bad one gets an
``error`` answer and the connection is closed. The peer's uid and gid come from the kernel
(``SO_PEERCRED``), never from the message: the guest's key directory is given to that uid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Optional

from .errors import StorageError
from .hostaccess import LIBVIRT_SOCKET
from .pool import WarmPool
from .poolwire import MAX_LINE, ProtocolError, decode, encode, parse_answer, parse_take

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0
"""How long a connected peer has to send its request."""
ACCEPT_SLICE_S = 0.5


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, as the kernel reports it."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def read_line(conn: socket.socket, limit: int = MAX_LINE) -> bytes:
    """One newline-terminated line (without reading past it); ProtocolError if longer than
    ``limit`` or the peer closes first, OSError (socket.timeout) at the socket's timeout."""
    data = bytearray()
    while len(data) <= limit:
        chunk = conn.recv(1)
        if not chunk:
            raise ProtocolError("connection closed before a full line")
        if chunk == b"\n":
            return bytes(data)
        data += chunk
    raise ProtocolError(f"line longer than {limit} bytes")


class PoolServer:
    """Serves :class:`WarmPool` on a unix socket until ``stop`` is set."""

    def __init__(self, pool: WarmPool, path: Path, *, handover_timeout_s: float,
                 libvirt_socket: Path = LIBVIRT_SOCKET) -> None:
        self.pool = pool
        self.path = path
        self.libvirt_socket = libvirt_socket
        self.handover_timeout_s = handover_timeout_s
        self._listener: Optional[socket.socket] = None
        self._threads: list[threading.Thread] = []

    def bind(self) -> None:
        """Create the socket; a stale one is replaced (only the lock holder gets here).

        Who may connect is who may use libvirtd: the socket gets the group of libvirtd's own
        socket and mode 0660 (those users could boot a guest themselves; the executor's user is
        one of them, see hostaccess.py), or 0600 (root only) where that socket is absent. It is
        made so before listen(), so no one connects earlier.
        """
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(self.path))
            try:
                os.chown(self.path, -1, os.stat(self.libvirt_socket).st_gid)
                os.chmod(self.path, 0o660)
            except FileNotFoundError:
                os.chmod(self.path, 0o600)
            listener.listen(16)
        except OSError as exc:
            raise StorageError(f"cannot listen on {self.path}: {exc.strerror or exc}") from None
        listener.settimeout(ACCEPT_SLICE_S)
        self._listener = listener

    def serve(self, stop: threading.Event) -> None:
        assert self._listener is not None, "bind() first"
        while not stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                log.error("pool: accept failed: %s", exc)
                stop.wait(ACCEPT_SLICE_S)
                continue
            thread = threading.Thread(target=self.handle, args=(conn,), name="pool-conn", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def close(self) -> None:
        """Stop listening and remove the socket; connections being served finish on their own."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with contextlib.suppress(OSError):
            self.path.unlink()

    def join(self, timeout_s: float) -> None:
        for thread in self._threads:
            thread.join(timeout_s)

    def handle(self, conn: socket.socket) -> None:
        """One peer: read its take, offer a guest or say none, settle the guest."""
        with conn:
            try:
                pid, uid, gid = peer_credentials(conn)
                conn.settimeout(REQUEST_TIMEOUT_S)
                shape = parse_take(decode(read_line(conn)))
            except ProtocolError as exc:
                with contextlib.suppress(OSError):
                    conn.sendall(encode({"op": "error", "error": str(exc)}))
                return
            except OSError:
                return
            taken = self.pool.take(shape, uid, gid)
            if taken is None:
                with contextlib.suppress(OSError):
                    conn.sendall(encode({"op": "none", "why": f"no idle {shape} guest"}))
                return
            slot, offer = taken
            log.info("pool: offering %s (%s) to pid %d uid %d", slot.name, shape, pid, uid)
            took = False
            try:
                conn.sendall(encode(offer.to_wire()))
                conn.settimeout(self.handover_timeout_s)
                took = parse_answer(decode(read_line(conn)))
            except (OSError, ProtocolError) as exc:
                log.warning("pool: pid %d gave no answer for %s (%s)", pid, slot.name, exc)
            finally:  # on every path: the owner metadata decides whose the guest is now
                outcome = self.pool.settle(slot)
            if took and outcome != "handed":
                log.error("pool: pid %d said it took %s but the domain's owner is not its: destroyed", pid, slot.name)
