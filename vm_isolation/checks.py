"""Health checks and checks of a running task, run inside its guest with Mesos's semantics.

Mesos's command executor runs ``TaskInfo.health_check`` and ``TaskInfo.check`` in the task's
container (its network namespace: ``127.0.0.1`` is the task's). Here the task's container is
its guest, so each probe runs there: a COMMAND probe over SSH (under busybox ``timeout``, so a
hung probe does not outlive its timeout), HTTP and TCP probes through a connection the guest's
SSH server opens to its own ``127.0.0.1:port`` (``ssh -L``): what a process in the guest sees.

The decisions are pure state machines fed with results, unit-tested without time passing:

* :class:`HealthTracker` — failures within ``grace_period_s`` of the task's start are ignored
  until the first success; every failure after that is reported (``healthy: false``), and the
  ``consecutive_failures``-th in a row asks for a kill; a success after failures (or the first
  one) is reported as ``healthy: true``. As Mesos's HealthChecker.
* :class:`CheckTracker` — a ``check_status`` is reported whenever it differs from the last.

:class:`Checker` is the loop (after ``delay_s``, every ``interval_s``) on its own thread.
"""

from __future__ import annotations

import logging
import shlex
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol

from .checkspec import CheckSpec, Probe, ProbeKind

log = logging.getLogger(__name__)

HTTP_HEALTHY = range(200, 400)
MAX_STATUS_LINE = 4096


class GuestSession(Protocol):
    def run_capture(self, command: str, *, timeout_s: Optional[float] = None) -> tuple[int, bytes, bytes]: ...
    def connect_in_guest(self, port: int, timeout_s: float) -> Any: ...


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    """Healthy by Mesos's rules: exit status 0, HTTP 200-399, TCP connected."""
    status: Mapping[str, Any]
    """The CheckStatusInfo (v1 JSON); the inner result is missing when the probe itself failed."""
    detail: str = ""


def run_probe(session: GuestSession, probe: Probe, timeout_s: float, *, workdir: str,
              env: Mapping[str, str]) -> ProbeResult:
    """Run ``probe`` once in the guest; never raises."""
    kind = probe.kind.value
    try:
        if probe.kind is ProbeKind.COMMAND:
            code = _run_command(session, probe, timeout_s, workdir, env)
            return ProbeResult(code == 0, {"type": kind, "command": {"exit_code": code}}, f"exit status {code}")
        if probe.kind is ProbeKind.TCP:
            try:
                session.connect_in_guest(probe.port, timeout_s).close()
            except ConnectionRefusedError:
                return ProbeResult(False, {"type": kind, "tcp": {"succeeded": False}}, f"port {probe.port} refused")
            return ProbeResult(True, {"type": kind, "tcp": {"succeeded": True}}, f"port {probe.port} accepted")
        code = _http_status(session, probe, timeout_s)
        return ProbeResult(code in HTTP_HEALTHY, {"type": kind, "http": {"status_code": code}}, f"HTTP {code}")
    except Exception as exc:  # noqa: BLE001 - a probe that cannot run is a failed probe, not a crash
        return ProbeResult(False, {"type": kind, kind.lower(): {}}, f"probe failed: {exc}")


def _run_command(session: GuestSession, probe: Probe, timeout_s: float, workdir: str,
                 env: Mapping[str, str]) -> int:
    cmd = probe.command
    exports = " ".join(shlex.quote(f"{name}={value}") for name, value in {**env, **cmd.environment}.items())
    argv = ["sh", "-c", cmd.value] if cmd.shell else [cmd.value, *cmd.arguments[1:]]
    line = (f"cd {shlex.quote(workdir)} && env {exports} timeout -s KILL {max(1, round(timeout_s))} "
            + " ".join(shlex.quote(a) for a in argv))
    code, _out, _err = session.run_capture(line, timeout_s=timeout_s + 5)
    return code


def _http_status(session: GuestSession, probe: Probe, timeout_s: float) -> int:
    channel = session.connect_in_guest(probe.port, timeout_s)
    try:
        channel.sendall((f"GET {probe.path} HTTP/1.0\r\nHost: 127.0.0.1:{probe.port}\r\n"
                         "User-Agent: vm-isolation-check\r\nConnection: close\r\n\r\n").encode("ascii"))
        head = b""
        while b"\n" not in head and len(head) < MAX_STATUS_LINE:
            chunk = channel.recv(1024)
            if not chunk:
                break
            head += chunk
    finally:
        channel.close()
    parts = head.split(b"\n", 1)[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {head[:60]!r}")
    return int(parts[1])


@dataclass(frozen=True)
class HealthVerdict:
    healthy: bool
    kill: bool
    failures: int
    detail: str


@dataclass
class HealthTracker:
    spec: CheckSpec
    started_at: float
    healthy: Optional[bool] = None
    failures: int = 0
    ever_healthy: bool = False

    def feed(self, result: ProbeResult, now: float) -> Optional[HealthVerdict]:
        """What to report for ``result`` at ``now`` (None: nothing)."""
        if result.ok:
            changed = self.healthy is not True
            self.healthy, self.failures, self.ever_healthy = True, 0, True
            return HealthVerdict(True, False, 0, result.detail) if changed else None
        if not self.ever_healthy and now - self.started_at < self.spec.grace_period_s:
            return None  # still in the grace period: the task may not be up yet
        self.healthy = False
        self.failures += 1
        return HealthVerdict(False, self.failures >= self.spec.consecutive_failures, self.failures, result.detail)


@dataclass
class CheckTracker:
    last: Optional[Mapping[str, Any]] = None

    def feed(self, result: ProbeResult) -> Optional[Mapping[str, Any]]:
        if result.status == self.last:
            return None
        self.last = result.status
        return result.status


@dataclass
class Checker:
    """Probes every ``interval_s`` after ``delay_s`` until stopped; ``on_result`` gets each result."""

    spec: CheckSpec
    probe: Callable[[], ProbeResult]
    on_result: Callable[[ProbeResult], None]
    name: str
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._loop, name=self.name, daemon=True).start()

    def _loop(self) -> None:
        if self.stop.wait(self.spec.delay_s):
            return
        while not self.stop.is_set():
            result = self.probe()
            if self.stop.is_set():
                return
            try:
                self.on_result(result)
            except Exception:  # noqa: BLE001 - a reporting failure must not end the checks silently
                log.exception("%s: reporting a result failed", self.name)
            if self.stop.wait(self.spec.interval_s):
                return
