"""One SUBSCRIBE response stream: events queued by the agent, written by the connection's thread.

The agent decides events under its lock and only *queues* them here, so a slow or dead
executor can never block the agent; the HTTP handler thread that answered the SUBSCRIBE
drains the queue onto the socket, one RecordIO record per chunk, in order. When nothing was
Every ``heartbeat_interval_s`` the stream asks its owner for a HEARTBEAT, whatever else
was sent (the agent's ``ResponseHeartbeater`` is a plain periodic timer, first firing one
interval after SUBSCRIBE).

Closing is graceful by default (the terminating empty chunk, as when the agent closes the
pipe) or abrupt (the socket is cut mid-body, as when the agent process dies).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Union

from .events import Event
from .wire import LAST_CHUNK, encode_json, http_chunk, recordio

log = logging.getLogger(__name__)


class _End:
    def __init__(self, abrupt: bool) -> None:
        self.abrupt = abrupt


class EventStream:
    """Queue of events for one subscribed connection. ``send``/``close`` are thread-safe."""

    def __init__(self, label: str, heartbeat_interval_s: float, on_idle: Callable[[EventStream], None]) -> None:
        self.label = label
        self._heartbeat_interval_s = heartbeat_interval_s
        self._on_idle = on_idle
        self._queue: queue.Queue[Union[Event, _End]] = queue.Queue()
        self._lock = threading.Lock()
        self._open = True
        self.finished = threading.Event()
        """Set once the writer has stopped (stream ended, cut, or the peer went away)."""

    @property
    def open(self) -> bool:
        with self._lock:
            return self._open

    def send(self, event: Event) -> bool:
        """Queue ``event``; False (and nothing queued) if the stream is already closed."""
        with self._lock:
            if not self._open:
                return False
            self._queue.put(event)
            return True

    def close(self, *, abrupt: bool = False) -> None:
        """End the stream after the events already queued (or at once, cut, if ``abrupt``)."""
        with self._lock:
            if not self._open:
                return
            self._open = False
            self._queue.put(_End(abrupt))

    def pump(self, write: Callable[[bytes], None]) -> bool:
        """Write queued events with ``write`` until the stream ends; run on the connection's thread.

        Returns True if the body was ended properly (last chunk written), False if it was cut
        or the peer went away (then the connection must be closed without further writes).
        """
        try:
            return self._pump(write)
        finally:
            with self._lock:
                self._open = False
            self.finished.set()

    def _pump(self, write: Callable[[bytes], None]) -> bool:
        next_beat = time.monotonic() + self._heartbeat_interval_s
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, next_beat - time.monotonic()))
            except queue.Empty:
                next_beat = time.monotonic() + self._heartbeat_interval_s
                self._on_idle(self)
                continue
            if isinstance(item, _End):
                return not item.abrupt and self._write(write, LAST_CHUNK)
            if not self._write(write, http_chunk(recordio(encode_json(item)))):
                return False

    def _write(self, write: Callable[[bytes], None], data: bytes) -> bool:
        try:
            write(data)
            return True
        except OSError as exc:
            # The agent does not act on this; it only notices at the next send ("Unable to
            # send event to executor ... connection closed").
            log.warning("stream %s: connection closed by the executor (%s)", self.label, exc)
            return False
