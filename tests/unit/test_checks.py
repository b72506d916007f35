"""Health checks and checks: parsing, the Mesos state machines, the probes on a fake session."""

from __future__ import annotations

import threading
from typing import Any, Optional

import pytest

from vm_isolation.checks import Checker, CheckTracker, HealthTracker, ProbeResult, run_probe
from vm_isolation.checkspec import CheckSpec, Probe, ProbeKind, parse_check, parse_health_check
from vm_isolation.errors import InvalidTask
from vm_isolation.taskinfo import command_info

OK = ProbeResult(True, {"type": "TCP", "tcp": {"succeeded": True}}, "ok")
BAD = ProbeResult(False, {"type": "TCP", "tcp": {"succeeded": False}}, "refused")


def health(**fields: Any) -> CheckSpec:
    spec = parse_health_check({"type": "TCP", "tcp": {"port": 80}, **fields}, command_info)
    assert spec is not None
    return spec


def test_defaults_are_mesoss() -> None:
    spec = health()
    assert (spec.delay_s, spec.interval_s, spec.timeout_s, spec.consecutive_failures, spec.grace_period_s) == (
        15.0, 10.0, 20.0, 3, 10.0)
    legacy = parse_health_check({"command": {"value": "true"}}, command_info)
    assert legacy is not None and legacy.probe.kind is ProbeKind.COMMAND and legacy.probe.command.value == "true"
    check = parse_check({"type": "HTTP", "http": {"port": 8080, "path": "/ready"}}, command_info)
    assert check is not None and check.probe == Probe(ProbeKind.HTTP, port=8080, path="/ready")
    nested = parse_check({"type": "COMMAND", "command": {"command": {"value": "ls"}}}, command_info)
    assert nested is not None and nested.probe.command.value == "ls"


@pytest.mark.parametrize("raw,says", [
    ("x", "health_check must be a JSON object"),
    ({"type": "UDP"}, "COMMAND, HTTP or TCP"),
    ({"type": "TCP"}, "tcp must be a JSON object"),
    ({"type": "TCP", "tcp": {"port": 0}}, "port number"),
    ({"type": "TCP", "tcp": {"port": "80"}}, "port number"),
    ({"type": "HTTP", "http": {"port": 80, "path": "/a b"}}, "path"),
    ({"type": "HTTP", "http": {"port": 80, "path": "/\r\nX: y"}}, "path"),
    ({"type": "HTTP", "http": {"port": 80, "scheme": "https"}}, "only http"),
    ({"type": "TCP", "tcp": {"port": 80}, "interval_seconds": 0}, "interval_seconds"),
    ({"type": "TCP", "tcp": {"port": 80}, "timeout_seconds": float("nan")}, "timeout_seconds"),
    ({"type": "TCP", "tcp": {"port": 80}, "delay_seconds": -1}, "delay_seconds"),
    ({"type": "TCP", "tcp": {"port": 80}, "consecutive_failures": 0}, "consecutive_failures"),
    ({"type": "COMMAND", "command": {"value": ""}}, "empty"),
])
def test_malformed_health_checks_name_the_field(raw: Any, says: str) -> None:
    with pytest.raises(InvalidTask, match=says):
        parse_health_check(raw, command_info)


def test_failures_in_the_grace_period_are_ignored_until_the_first_success() -> None:
    tracker = HealthTracker(health(grace_period_seconds=10, consecutive_failures=2), started_at=100.0)
    assert tracker.feed(BAD, 105.0) is None, "in the grace period: not counted"
    first = tracker.feed(OK, 106.0)
    assert first is not None and first.healthy and not first.kill
    assert tracker.feed(OK, 107.0) is None, "no change: nothing to report"
    one = tracker.feed(BAD, 108.0)  # still within 10 s, but the task was healthy once: counts
    assert one is not None and not one.healthy and not one.kill and one.failures == 1
    two = tracker.feed(BAD, 109.0)
    assert two is not None and two.kill and two.failures == 2


def test_after_the_grace_period_failures_count_and_a_success_resets_them() -> None:
    tracker = HealthTracker(health(grace_period_seconds=1, consecutive_failures=3), started_at=0.0)
    assert [v.failures for v in (tracker.feed(BAD, 2.0), tracker.feed(BAD, 3.0)) if v] == [1, 2]
    back = tracker.feed(OK, 4.0)
    assert back is not None and back.healthy and back.failures == 0
    verdicts = [tracker.feed(BAD, t) for t in (5.0, 6.0, 7.0)]
    assert [v.kill for v in verdicts if v] == [False, False, True]


def test_a_check_status_is_reported_when_it_changes() -> None:
    tracker = CheckTracker()
    assert tracker.feed(OK) == OK.status
    assert tracker.feed(OK) is None
    assert tracker.feed(BAD) == BAD.status


class Channel:
    def __init__(self, reply: bytes) -> None:
        self.reply, self.sent, self.closed = reply, b"", False

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def recv(self, n: int) -> bytes:
        chunk, self.reply = self.reply[:n], self.reply[n:]
        return chunk

    def close(self) -> None:
        self.closed = True


class Session:
    def __init__(self, ports: Optional[dict[int, bytes]] = None, exit_code: int = 0) -> None:
        self.ports = ports or {}
        self.exit_code = exit_code
        self.commands: list[str] = []
        self.channels: list[Channel] = []

    def run_capture(self, command: str, *, timeout_s: Optional[float] = None) -> tuple[int, bytes, bytes]:
        self.commands.append(command)
        return self.exit_code, b"", b""

    def connect_in_guest(self, port: int, timeout_s: float) -> Channel:
        if port not in self.ports:
            raise ConnectionRefusedError(f"nothing on {port}")
        channel = Channel(self.ports[port])
        self.channels.append(channel)
        return channel


@pytest.mark.parametrize("reply,ok,code", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True, 200),
    (b"HTTP/1.0 302 Found\r\n\r\n", True, 302),
    (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", False, 503),
])
def test_an_http_probe_asks_the_guests_own_port_and_judges_the_status(reply: bytes, ok: bool, code: int) -> None:
    session = Session({8080: reply})
    result = run_probe(session, Probe(ProbeKind.HTTP, port=8080, path="/health"), 2.0, workdir="/sb", env={})
    assert (result.ok, result.status) == (ok, {"type": "HTTP", "http": {"status_code": code}})
    assert session.channels[0].sent.startswith(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1:8080\r\n")
    assert session.channels[0].closed


def test_a_probe_that_cannot_run_fails_without_a_result_and_never_raises() -> None:
    refused = run_probe(Session(), Probe(ProbeKind.HTTP, port=81), 2.0, workdir="/sb", env={})
    assert not refused.ok and refused.status == {"type": "HTTP", "http": {}}
    garbage = run_probe(Session({81: b"SSH-2.0-dropbear\r\n"}), Probe(ProbeKind.HTTP, port=81), 2.0,
                        workdir="/sb", env={})
    assert not garbage.ok and "not an HTTP response" in garbage.detail
    tcp = run_probe(Session(), Probe(ProbeKind.TCP, port=22), 2.0, workdir="/sb", env={})
    assert tcp.status == {"type": "TCP", "tcp": {"succeeded": False}}


def test_a_command_probe_runs_in_the_sandbox_with_the_task_environment_quoted() -> None:
    session = Session(exit_code=3)
    probe = Probe(ProbeKind.COMMAND, command=command_info({"value": "test -f ready; echo $(x)"}))
    result = run_probe(session, probe, 5.0, workdir="/mnt/mesos/sandbox", env={"A": "it's $HOME"})
    assert (result.ok, result.status) == (False, {"type": "COMMAND", "command": {"exit_code": 3}})
    assert session.commands == ["cd /mnt/mesos/sandbox && env 'A=it'\"'\"'s $HOME' timeout -s KILL 5 sh -c "
                                "'test -f ready; echo $(x)'"]


def test_the_checker_waits_its_delay_then_probes_every_interval_until_stopped() -> None:
    waits: list[float] = []
    results: list[ProbeResult] = []
    stop = threading.Event()

    class Stop(threading.Event):
        def wait(self, timeout: Optional[float] = None) -> bool:
            waits.append(timeout or 0.0)
            return len(waits) > 3

    checker = Checker(health(delay_seconds=7, interval_seconds=2), lambda: OK, results.append, "t", stop=Stop())
    checker._loop()
    assert waits == [7.0, 2.0, 2.0, 2.0] and len(results) == 3
    assert not stop.is_set()
