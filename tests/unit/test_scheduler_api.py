"""The HTTP API over a real socket, the scheduler loop on a fake driver: hostile names and
bodies get 4xx with a clear JSON message and create nothing; the CRUD calls work."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from tests.unit.test_scheduler_core import FakeDriver
from vm_isolation.scheduler.api import MAX_BODY, Api, serve
from vm_isolation.scheduler.core import InstanceScheduler
from vm_isolation.scheduler.service import EventLoop
from vm_isolation.scheduler.store import SqliteStore
from vm_isolation.scheduler.taskinfo import ExecutorCommand
from vm_isolation.waiting import SYSTEM_CLOCK


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[int, InstanceScheduler]]:
    core = InstanceScheduler(SqliteStore(tmp_path / "s.db"), FakeDriver(), SYSTEM_CLOCK, ExecutorCommand("/x"))
    loop = EventLoop(core)
    loop.start()
    server = serve(Api(loop), "127.0.0.1", 0)
    try:
        yield int(server.server_address[1]), core
    finally:
        server.shutdown()
        server.server_close()
        loop.stop()


def request(port: int, method: str, path: str, body: Optional[bytes] = None,
            headers: Optional[dict[str, str]] = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw)
    finally:
        conn.close()


def post(port: int, body: Any) -> tuple[int, Any]:
    return request(port, "POST", "/v1/instances", json.dumps(body).encode())


@pytest.mark.parametrize("raw, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not UTF-8"),
    (b'{"name": "../../etc/passwd", "command": "x"}', 400, "name must be"),
    (b'{"name": "web", "command": "x", "count": 100000000}', 400, "count must be between"),
    (b'{"name": "web", "command": "x", "rm": "-rf /"}', 400, "unknown field"),
    (b'{"name": "web\\n", "command": "x"}', 400, "name must be"),
    (b"[]", 400, "JSON object"),
])
def test_hostile_bodies_get_a_4xx_with_a_message_and_create_nothing(
        api: tuple[int, InstanceScheduler], raw: bytes, status: int, words: str) -> None:
    """Each bad POST is refused with its reason; GET then lists no group."""
    port, _ = api
    code, answer = request(port, "POST", "/v1/instances", raw)
    assert code == status and words in answer["error"] and "Traceback" not in answer["error"]
    assert request(port, "GET", "/v1/instances")[1]["groups"] == []


def test_hostile_paths_and_oversized_bodies_are_refused(api: tuple[int, InstanceScheduler]) -> None:
    """Path characters in a name, unknown paths, a body past MAX_BODY, a missing length: 4xx."""
    port, _ = api
    assert request(port, "GET", "/v1/instances/..%2F..%2Fetc")[0] == 400
    assert request(port, "DELETE", "/v1/instances/a;b")[0] == 400
    assert request(port, "GET", "/v2/whatever")[0] == 404
    assert request(port, "POST", "/v1/instances", b"x" * (MAX_BODY + 1))[0] == 413
    assert request(port, "PATCH", "/v1/instances/web", b'{"count": 2, "x": 1}')[0] == 400


def test_create_read_scale_delete(api: tuple[int, InstanceScheduler]) -> None:
    """201 then 200 'nothing changed' for the same body; GET lists NAME-0..n-1; PATCH scales;
    DELETE is accepted; an unknown group is 404."""
    port, _ = api
    body = {"name": "web", "command": "sleep 3600", "count": 2, "cpus": 0.2, "mem": 128}
    code, answer = post(port, body)
    assert code == 201 and answer["created"] is True
    code, answer = post(port, body)
    assert code == 200 and answer["created"] is False and "nothing changed" in answer["message"]
    assert post(port, {**body, "count": 3})[0] == 409
    code, group = request(port, "GET", "/v1/instances/web")
    assert code == 200 and [i["name"] for i in group["instances"]] == ["web-0", "web-1"]
    assert request(port, "PATCH", "/v1/instances/web", b'{"count": 3}')[0] == 200
    assert len(request(port, "GET", "/v1/instances/web")[1]["instances"]) == 3
    assert request(port, "DELETE", "/v1/instances/web")[0] == 202
    assert request(port, "GET", "/v1/instances/nope")[0] == 404
