"""The agent's HTTP/1.1 server: routes ``/api/v1/executor`` to :class:`AgentCore`.

Both paths the real agent serves are routed: ``/api/v1/executor`` (pymesos) and
``/slave(1)/api/v1/executor`` (the C++ library, which builds its URL from MESOS_SLAVE_PID).
Non-streaming answers keep the connection alive, as libprocess does, so a client may reuse
it for later calls. A SUBSCRIBE answer is ``200 OK``, ``Content-Type: application/json``,
chunked, one RecordIO record per chunk, written by the connection's own thread; the
connection is closed when the stream ends.

The listener can be closed and reopened on the same port (connections refused meanwhile),
and open non-streaming connections can be cut, to imitate an agent that went away.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from .calls import Reply
from .core import AgentCore, Outcome
from .stream import EventStream

log = logging.getLogger(__name__)

EXECUTOR_PATHS = frozenset({"/api/v1/executor", "/slave(1)/api/v1/executor"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], core: AgentCore, front: AgentServer) -> None:
        self.core = core
        self.front = front
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """A peer that vanished mid-request (an executor SIGKILLed, a dropped stream) is routine
        for an agent: log it, without socketserver's default traceback on stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("connection from %s ended: %s", client_address, exc)
        else:
            log.exception("error while serving %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.streaming = False
        self.server.front.connection_opened(self)

    def finish(self) -> None:
        self.server.front.connection_closed(self)
        # The peer (or a simulated agent death) may already have cut the connection.
        with contextlib.suppress(OSError):
            super().finish()

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def _handle(self) -> None:
        if not self.server.front.accepting:
            self.close_connection = True  # An agent that is gone answers nothing.
            return
        path = self.path.split("?", 1)[0]
        body = self._read_body()
        if path not in EXECUTOR_PATHS:
            self._reply(Reply(404))
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            outcome = self.server.core.handle(self.command, path, headers, body)
        except Exception as exc:  # A bug here must reach the test as an answer, not a hang.
            log.exception("local agent failed on %s %s", self.command, path)
            self._reply(Reply(500, f"local agent error: {exc!r}"))
            return
        self._answer(outcome)

    def _answer(self, outcome: Outcome) -> None:
        try:
            if outcome.stream is not None:
                self._stream(outcome.stream)
            elif outcome.reply is not None:
                self._reply(outcome.reply)
        finally:
            # The agent acknowledges an accepted update even if the caller hung up meanwhile.
            for action in outcome.after:
                action()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # Trailers, ignored.
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _reply(self, reply: Reply) -> None:
        # Head and body go out in one write, as libprocess encodes a whole response. NOTE:
        # pymesos's stream reader crashes (bytes + str) if an error body arrives after its head.
        data = reply.body.encode("utf-8")
        self.log_request(reply.status)
        lines = [f"{self.protocol_version} {reply.status} {self.responses.get(reply.status, ('',))[0]}",
                 f"Date: {self.date_time_string()}",
                 *(f"{name}: {value}" for name, value in reply.headers)]
        if data:
            lines.append("Content-Type: text/plain; charset=utf-8")
        lines.append(f"Content-Length: {len(data)}")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)
        self.wfile.flush()

    def _stream(self, stream: EventStream) -> None:
        self.streaming = True
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        if not stream.pump(self.connection.sendall):
            _cut(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def _cut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # Already closed: nothing to cut.
        sock.shutdown(socket.SHUT_RDWR)


class AgentServer:
    """Owns the listening socket and the open connections of one agent."""

    def __init__(self, core: AgentCore, host: str, port: int) -> None:
        self.core = core
        self.host = host
        self.port = port
        self.accepting = False
        self._lock = threading.Lock()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._connections: set[_Handler] = set()

    def open(self) -> int:
        """Listen (on the same port as before, after the first time) and serve in a thread."""
        with self._lock:
            if self._server is not None:
                return self.port
            server = _Server((self.host, self.port), self.core, self)
            # poll_interval bounds how long close() waits for the accept loop to notice.
            self.port = server.server_address[1]
            self._server = server
            self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                            name=f"agent-http-{self.port}", daemon=True)
            self.accepting = True
            self._thread.start()
            return self.port

    def close(self) -> None:
        """Stop listening (new connections are refused) and cut idle connections."""
        with self._lock:
            server, self._server = self._server, None
            self.accepting = False
            idle = [h for h in self._connections if not h.streaming]
        if server is not None:
            server.shutdown()
            server.server_close()
        for handler in idle:
            _cut(handler.connection)

    def cut_all(self) -> None:
        """Cut every open connection, streams included, as an agent process dying would."""
        with self._lock:
            handlers = list(self._connections)
        for handler in handlers:
            _cut(handler.connection)

    def connection_opened(self, handler: _Handler) -> None:
        with self._lock:
            self._connections.add(handler)

    def connection_closed(self, handler: _Handler) -> None:
        with self._lock:
            self._connections.discard(handler)
