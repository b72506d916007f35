"""The HTTP API (JSON): declare, scale, read and delete groups of VM instances.

    POST   /v1/instances            {"name": "web", "command": "...", "count": 3, ...}
                                    201 created | 200 exists as declared (nothing changed) | 409
    GET    /v1/instances            every group with its instances
    GET    /v1/instances/NAME       one group (404 if none)
    PATCH  /v1/instances/NAME       {"count": N}: scale (highest ordinals go first)
    DELETE /v1/instances/NAME       202: its tasks are killed; GET says 404 once all ended
    GET    /v1/health               {"registered": ..., "framework_id": ...}

Every answer is a JSON object; every error is ``{"error": "<what is wrong and what to do>"}``
with a 4xx status (a 5xx only when the scheduler itself fails; the traceback goes to its log,
never to the client). Bodies are limited to :data:`MAX_BODY` bytes and must be UTF-8 JSON.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

from .core import Conflict, CreateResult, InstanceScheduler, NotFound
from .model import InvalidSpec, check_name, parse_count, parse_group
from .service import Busy, EventLoop

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024
PREFIX = "/v1/instances"


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, "the body is not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON: {exc.msg} at line {exc.lineno} "
                                               f"column {exc.colno}") from exc


def _result(result: CreateResult, created: HTTPStatus = HTTPStatus.CREATED) -> tuple[HTTPStatus, Any]:
    return (created if result.created else HTTPStatus.OK), {"changed": result.created, "message": result.message}


class Api:
    """Routes a request to the scheduler loop; pure apart from ``loop.call``."""

    def __init__(self, loop: Optional[EventLoop], standby: Callable[[], Any] = lambda: None) -> None:
        self.loop = loop
        """None while this scheduler stands by (another one leads): then only health answers."""
        self.standby = standby
        """What health says about the leader while standing by."""

    def _on_loop(self, fn: Callable[[InstanceScheduler], Any]) -> Any:
        loop = self.loop
        if loop is None:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"this scheduler stands by; the leader is {self.standby()}")
        return loop.call(lambda: fn(loop.core))

    def handle(self, method: str, path: str, body: Optional[bytes]) -> tuple[HTTPStatus, Any]:
        path = path.split("?", 1)[0]
        if path == "/v1/health" and method == "GET":
            if self.loop is None:
                return HTTPStatus.OK, {"registered": False, "leader": False, "current_leader": self.standby()}
            return HTTPStatus.OK, self._on_loop(lambda c: {"registered": c.registered, "leader": True,
                                                           "framework_id": c.framework_id})
        if path in (PREFIX, PREFIX + "/"):
            if method == "GET":
                return HTTPStatus.OK, self._on_loop(lambda c: c.describe())
            if method == "POST":
                spec = parse_group(_decode(body or b""))
                status, answer = _result(self._on_loop(lambda c: c.create(spec)))
                return status, {**answer, "created": answer["changed"]}
            raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} {PREFIX}: use GET or POST")
        if path.startswith(PREFIX + "/"):
            name = check_name(path[len(PREFIX) + 1:], "the group name in the path")
            if method == "GET":
                return HTTPStatus.OK, self._on_loop(lambda c: c.describe(name))
            if method == "DELETE":
                result = self._on_loop(lambda c: c.delete(name))
                return HTTPStatus.ACCEPTED, {"changed": result.created, "message": result.message}
            if method == "PATCH":
                count = self._count(_decode(body or b""))
                return _result(self._on_loop(lambda c: c.scale(name, count)), HTTPStatus.OK)
            raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} {PREFIX}/NAME: use GET, PATCH or DELETE")
        raise ApiError(HTTPStatus.NOT_FOUND, f"no such resource; the API is under {PREFIX}")

    @staticmethod
    def _count(body: Any) -> int:
        if not isinstance(body, dict) or set(body) != {"count"}:
            raise InvalidSpec('PATCH takes exactly {"count": N}')
        return parse_count(body["count"])

    def answer(self, method: str, path: str, body: Optional[bytes]) -> tuple[HTTPStatus, Any]:
        """:meth:`handle` with every exception mapped to a status and a message."""
        try:
            return self.handle(method, path, body)
        except ApiError as exc:
            return exc.status, {"error": str(exc)}
        except InvalidSpec as exc:
            return HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        except NotFound as exc:
            return HTTPStatus.NOT_FOUND, {"error": str(exc)}
        except Conflict as exc:
            return HTTPStatus.CONFLICT, {"error": str(exc)}
        except Busy as exc:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)}
        except Exception:
            log.exception("%s %s failed", method, path[:200])
            return HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error; the scheduler's log has the details"}


class _Handler(BaseHTTPRequestHandler):
    api: Api  # set on the subclass made by serve()
    protocol_version = "HTTP/1.1"
    error_content_type = "application/json"
    error_message_format = '{"error": "%(code)d %(message)s"}'

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.debug("%s " + format, self.address_string(), *args)

    def _body(self) -> Optional[bytes]:
        if self.command not in ("POST", "PATCH", "PUT"):
            return None
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length, not chunked")
        raw = self.headers.get("Content-Length")
        if raw is None or not raw.isdigit():
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "a JSON body with a Content-Length is required")
        length = int(raw)
        if length > MAX_BODY:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body may be at most {MAX_BODY} bytes")
        return self.rfile.read(length)

    def _serve(self) -> None:
        try:
            status, answer = self.api.answer(self.command, self.path, self._body())
        except ApiError as exc:
            status, answer = exc.status, {"error": str(exc)}
            self.close_connection = True
        data = json.dumps(answer, indent=1).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve  # noqa: N815 (http.server's names)


def serve(api: Api, host: str, port: int) -> ThreadingHTTPServer:
    """Start the API on ``host:port`` (0: any free port) in a daemon thread."""
    handler = type("Handler", (_Handler,), {"api": api})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.1,), name="scheduler-api", daemon=True).start()
    return server
