"""Health checks and checks run inside real guests: an HTTP server in the guest is found healthy
through the guest's own 127.0.0.1, a port nobody serves fails until the task is killed."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.real.conftest import Leftovers
from tests.real.test_executor_e2e import BOOT_S, Run, task
from vm_isolation.localagent import LocalAgent
from vm_isolation.waiting import Deadline, poll_until


@pytest.fixture
def run(tmp_path: Path, leftovers: Leftovers) -> Iterator[Run]:
    with LocalAgent(tmp_path / "agent") as agent:
        yield Run(agent, leftovers)


def test_a_served_port_is_healthy_and_an_unserved_one_gets_the_task_killed(run: Run) -> None:
    """busybox httpd listens on the guest's 127.0.0.1:8080 only: reachable from the guest alone.
    Task "up": HTTP health check and TCP check on it -> TASK_RUNNING healthy=true, check_status
    tcp.succeeded=true. Task "down": HTTP health check on port 8081 (nothing there), grace 0, two
    failures -> TASK_RUNNING healthy=false twice, then TASK_KILLED naming the health check."""
    eid, h = run.executor()
    up = task("checks-up", "mkdir -p www && echo ok > www/index.html && exec httpd -f -p 127.0.0.1:8080 -h www")
    up["health_check"] = {"type": "HTTP", "http": {"port": 8080, "path": "/index.html"}, "delay_seconds": 0,
                          "interval_seconds": 1, "grace_period_seconds": 60, "consecutive_failures": 3}
    up["check"] = {"type": "TCP", "tcp": {"port": 8080}, "delay_seconds": 0, "interval_seconds": 1}
    down = task("checks-down", "sleep 600")
    down["health_check"] = {"type": "HTTP", "http": {"port": 8081, "path": "/"}, "delay_seconds": 0,
                            "interval_seconds": 0.5, "timeout_seconds": 2, "grace_period_seconds": 0,
                            "consecutive_failures": 2}
    run.launch(eid, up)
    run.launch(eid, down)

    def healthy_seen() -> bool | None:
        raws = [u.raw for u in run.agent.updates("checks-up")]
        healthy = any(r.get("healthy") is True for r in raws)
        tcp_ok = any(r.get("check_status", {}).get("tcp", {}).get("succeeded") is True for r in raws)
        return True if healthy and tcp_ok else None

    poll_until(healthy_seen, Deadline.after(BOOT_S), interval_s=0.2, what="checks-up reported healthy")
    reasons = {u.reason for u in run.agent.updates("checks-up") if u.state == "TASK_RUNNING"}
    assert {"REASON_TASK_HEALTH_CHECK_STATUS_UPDATED", "REASON_TASK_CHECK_STATUS_UPDATED"} <= reasons

    final = run.agent.wait_for_terminal("checks-down", BOOT_S)
    assert final.state == "TASK_KILLED" and "health check failed 2 times in a row" in (final.message or "")
    assert final.raw.get("healthy") is False
    unhealthy = [u for u in run.agent.updates("checks-down")
                 if u.state == "TASK_RUNNING" and u.raw.get("healthy") is False]
    assert len(unhealthy) == 2
    assert "TASK_FINISHED" not in run.states("checks-up"), "the healthy task was left alone"

    run.agent.kill_task(eid, "checks-up")
    assert run.agent.wait_for_terminal("checks-up", 60).state == "TASK_KILLED"
    assert h.wait(60) == 0
    run.assert_clean()
