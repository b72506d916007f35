"""A tiny stdlib v1 executor client for driving the local agent, and tests of the agent's encodings.

The client is deliberately independent of the package: calls go through ``http.client``;
the SUBSCRIBE stream is read from a raw socket, de-chunked by hand and RecordIO-decoded,
keeping each chunk so tests can check the framing. Other ``test_localagent_*`` modules
import it from here.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import pytest

from vm_isolation.localagent.wire import b64decode, format_duration, recordio, uuid_error
from vm_isolation.waiting import Deadline

WAIT_S = 5.0
SLEEPER = {"value": "exec sleep 30", "shell": True}
"""An executor process that never speaks: tests play the executor over HTTP themselves."""


def new_uuid() -> str:
    """A valid status uuid as JSON carries it: base64 of 16 raw bytes."""
    return base64.b64encode(uuid.uuid4().bytes).decode()


def task_info(task_id: str, **extra: Any) -> dict[str, Any]:
    return {"name": task_id, "task_id": {"value": task_id}, "command": {"value": "true"}, **extra}


def python_command(code: str) -> dict[str, Any]:
    """A CommandInfo running ``code`` in this interpreter (argv form, no shell)."""
    return {"value": sys.executable, "shell": False, "arguments": [sys.executable, "-c", code]}


@dataclass
class EventReader:
    """Reads a SUBSCRIBE response from a raw socket: head, then RecordIO records in chunks."""

    sock: socket.socket
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    ended: bool = False
    _buffer: bytes = b""
    _body: bytes = b""

    def read_head(self, timeout_s: float = WAIT_S) -> None:
        head = self._read_until(b"\r\n\r\n", Deadline.after(timeout_s)).decode("latin-1")
        status_line, *lines = head.split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines if line)}

    def next_event(self, timeout_s: float = WAIT_S) -> Optional[dict[str, Any]]:
        """The next event, or None once the agent ended the body with the last chunk."""
        deadline = Deadline.after(timeout_s)
        while True:
            record = self._take_record()
            if record is not None:
                return record
            if self.ended:
                return None
            self._read_chunk(deadline)

    def events(self, count: int, timeout_s: float = WAIT_S) -> list[dict[str, Any]]:
        found = [self.next_event(timeout_s) for _ in range(count)]
        assert all(e is not None for e in found), f"stream ended early: {found}"
        return [e for e in found if e is not None]

    def next_of_type(self, kind: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
        """Skip events (e.g. HEARTBEAT) until one of type ``kind``."""
        deadline = Deadline.after(timeout_s)
        while True:
            event = self.next_event(deadline.remaining())
            assert event is not None, f"stream ended before a {kind} event"
            if event["type"] == kind:
                return event

    def read_to_end(self, timeout_s: float = WAIT_S) -> list[dict[str, Any]]:
        """Every remaining event; asserts that the agent ends the body properly."""
        found = []
        while (event := self.next_event(timeout_s)) is not None:
            found.append(event)
        return found

    def _take_record(self) -> Optional[dict[str, Any]]:
        if b"\n" not in self._body:
            return None
        size, rest = self._body.split(b"\n", 1)
        if len(rest) < int(size):
            return None
        self._body = rest[int(size):]
        value: dict[str, Any] = json.loads(rest[: int(size)])
        return value

    def _read_chunk(self, deadline: Deadline) -> None:
        size = int(self._read_until(b"\r\n", deadline), 16)
        if size == 0:
            self._read_until(b"\r\n", deadline)
            self.ended = True
            return
        data = self._read_exactly(size + 2, deadline)[:-2]
        self.chunks.append(data)
        self._body += data

    def _read_until(self, marker: bytes, deadline: Deadline) -> bytes:
        while marker not in self._buffer:
            self._recv(deadline)
        found, self._buffer = self._buffer.split(marker, 1)
        return found

    def _read_exactly(self, size: int, deadline: Deadline) -> bytes:
        while len(self._buffer) < size:
            self._recv(deadline)
        found, self._buffer = self._buffer[:size], self._buffer[size:]
        return found

    def _recv(self, deadline: Deadline) -> None:
        if deadline.expired():
            raise TimeoutError("no data from the agent before the deadline")
        self.sock.settimeout(deadline.remaining())
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the agent closed the connection mid-body")
        self._buffer += data

    def close(self) -> None:
        self.sock.close()


class ExecutorClient:
    """Plays one executor against the agent's ``/api/v1/executor``."""

    def __init__(self, endpoint: str, framework_id: str, executor_id: str) -> None:
        host, port = endpoint.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.framework_id, self.executor_id = framework_id, executor_id
        self.readers: list[EventReader] = []

    def body(self, kind: str, **payload: Any) -> dict[str, Any]:
        return {"type": kind, "framework_id": {"value": self.framework_id},
                "executor_id": {"value": self.executor_id}, **payload}

    def call(self, body: Any, *, method: str = "POST", content_type: Optional[str] = "application/json",
             headers: Optional[dict[str, str]] = None,
             path: str = "/api/v1/executor") -> tuple[int, str, dict[str, str]]:
        """One call on its own connection: (status, body text, lower-cased headers)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent = dict(headers or {})
        if content_type is not None:
            sent["Content-Type"] = content_type
        connection = http.client.HTTPConnection(self.host, self.port, timeout=WAIT_S)
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            text = response.read().decode()
            return response.status, text, {k.lower(): v for k, v in response.getheaders()}
        finally:
            connection.close()

    def update(self, task_id: str, state: str, *, uuid_b64: Optional[str] = None,
               **status: Any) -> tuple[int, str, str]:
        """Send UPDATE; return (status, response text, the uuid sent)."""
        sent_uuid = uuid_b64 or new_uuid()
        full = {"task_id": {"value": task_id}, "state": state, "source": "SOURCE_EXECUTOR", "uuid": sent_uuid,
                **status}
        code, text, _ = self.call(self.body("UPDATE", update={"status": full}))
        return code, text, sent_uuid

    def subscribe(self, *, tasks: Sequence[dict[str, Any]] = (), updates: Sequence[dict[str, Any]] = (),
                  accept: Optional[str] = "application/json", path: str = "/api/v1/executor") -> EventReader:
        """Open a SUBSCRIBE stream (raw socket, like pymesos) and read its head."""
        body = json.dumps(self.body("SUBSCRIBE", subscribe={
            "unacknowledged_tasks": list(tasks), "unacknowledged_updates": list(updates)})).encode()
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                "Content-Type: application/json", "Connection: close", f"Content-Length: {len(body)}"]
        if accept is not None:
            head.append(f"Accept: {accept}")
        sock = socket.create_connection((self.host, self.port), timeout=WAIT_S)
        sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        reader = EventReader(sock)
        reader.read_head()
        self.readers.append(reader)
        return reader

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


# --- tests of the agent's encodings -------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (5.0, "5secs"), (60.0, "1mins"), (90.0, "90secs"), (0.2, "200ms"), (1.5, "1500ms"),
    (15 * 60.0, "15mins"), (1800.0, "30mins"), (2.0, "2secs"), (3600.0, "1hrs"), (0.0000005, "500ns"),
])
def test_durations_are_written_the_way_stout_writes_them(seconds: float, text: str) -> None:
    """format_duration picks the unit stout's operator<< picks (whole numbers in a smaller unit win)."""
    assert format_duration(seconds) == text


def test_uuid_validity_follows_stout_from_bytes() -> None:
    """Only 16 raw bytes with a known version pass; a 36-character text uuid does not."""
    good = uuid.uuid4()
    assert uuid_error(good.bytes) is None
    assert uuid_error(str(good).encode()) == "Not a valid UUID"
    assert uuid_error(bytes(16)) == "Not a valid UUID"  # version nibble 0


def test_base64_is_decoded_leniently_like_stout() -> None:
    """Decoding stops at '=', skips whitespace and rejects other foreign characters."""
    assert b64decode("aGVs\nbG8=") == b"hello"
    assert b64decode("aGVsbG8=garbage") == b"hello"
    with pytest.raises(ValueError, match="Invalid character '!'"):
        b64decode("aGVs!")


def test_recordio_prefixes_the_decimal_byte_length() -> None:
    """A record is its length in bytes, a newline, then the bytes (UTF-8 counts bytes)."""
    assert recordio('{"a":"é"}'.encode()) == b'10\n{"a":"\xc3\xa9"}'
