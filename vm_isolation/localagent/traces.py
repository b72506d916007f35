"""What the agent received and sent, kept for protocol assertions in tests. Thread-safe."""

from __future__ import annotations

import copy
import threading
import time
from typing import Any, Optional

from .events import Event


class Traces:
    """Calls received (with the status answered), events written, events dropped, messages."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[dict[str, Any]] = []
        self._sent: list[tuple[str, Event]] = []
        self._dropped: list[tuple[str, Event]] = []
        self._messages: list[tuple[str, bytes]] = []

    def call(self, executor_id: Optional[str], method: str, path: str, body: Any, status: int, response: str) -> None:
        """Record one call: ``body`` is the parsed JSON as sent (None if it was not JSON)."""
        entry = {"executor_id": executor_id, "method": method, "path": path, "body": body,
                 "type": body.get("type") if isinstance(body, dict) else None,
                 "status": status, "response": response, "received_at": time.monotonic()}
        with self._lock:
            self._calls.append(entry)

    def sent(self, executor_id: str, event: Event) -> None:
        with self._lock:
            self._sent.append((executor_id, copy.deepcopy(event)))

    def dropped(self, executor_id: str, event: Event) -> None:
        with self._lock:
            self._dropped.append((executor_id, copy.deepcopy(event)))

    def message(self, executor_id: str, data: bytes) -> None:
        with self._lock:
            self._messages.append((executor_id, data))

    def calls(self, executor_id: Optional[str]) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(c) for c in self._calls if executor_id is None or c["executor_id"] == executor_id]

    def events_sent(self, executor_id: str) -> list[Event]:
        with self._lock:
            return [copy.deepcopy(e) for eid, e in self._sent if eid == executor_id]

    def events_dropped(self, executor_id: str) -> list[Event]:
        with self._lock:
            return [copy.deepcopy(e) for eid, e in self._dropped if eid == executor_id]

    def messages(self, executor_id: str) -> list[bytes]:
        with self._lock:
            return [data for eid, data in self._messages if eid == executor_id]
