"""The scheduler's runtime pieces without a master: the pymesos callbacks decode and post,
the event loop runs calls and ticks on its thread, and the TaskInfo carries the identity."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_scheduler_core import FakeDriver
from vm_isolation.scheduler.core import InstanceScheduler
from vm_isolation.scheduler.instances import TaskStatus
from vm_isolation.scheduler.mesos_driver import _Callbacks
from vm_isolation.scheduler.model import parse_group
from vm_isolation.scheduler.oneshot import OneShot
from vm_isolation.scheduler.placement import Need, Offer
from vm_isolation.scheduler.service import EventLoop
from vm_isolation.scheduler.store import SqliteStore
from vm_isolation.scheduler.taskinfo import ExecutorCommand, identity_env, task_info
from vm_isolation.waiting import SYSTEM_CLOCK


def test_callbacks_decode_into_values_and_skip_what_they_cannot_read() -> None:
    """A status and an offer become TaskStatus/Offer events; a malformed offer is dropped."""
    posted: list[tuple[str, Any]] = []
    cb = _Callbacks(lambda kind, payload: posted.append((kind, payload)))
    cb.statusUpdate(None, {"task_id": {"value": "web-0.1"}, "state": "TASK_RUNNING", "agent_id": {"value": "a"}})
    cb.resourceOffers(None, [{"id": {"value": "o"}, "agent_id": {"value": "a"}, "resources": []}, {"junk": 1}])
    cb.registered(None, {"value": "fw"}, {})
    assert posted == [("status", TaskStatus("web-0.1", "TASK_RUNNING", "a")),
                      ("offers", [Offer("o", "a", "", 0.0, 0.0, {})]), ("registered", "fw")]


def test_the_loop_runs_calls_on_its_thread_and_hands_back_results_and_errors(tmp_path: Path) -> None:
    """call() returns fn's value or raises fn's exception; posted events reach the core."""
    core = InstanceScheduler(SqliteStore(tmp_path / "s.db"), FakeDriver(), SYSTEM_CLOCK, ExecutorCommand("/x"))
    loop = EventLoop(core, tick_s=0.05)
    loop.start()
    try:
        loop.post("registered", "fw-7")
        assert loop.call(lambda: core.framework_id) == "fw-7"
        with pytest.raises(ZeroDivisionError):
            loop.call(lambda: 1 // 0)
        assert loop.failure is None
    finally:
        loop.stop()
    assert loop.done.is_set()


def test_the_task_info_runs_the_command_with_the_instance_identity() -> None:
    """data is a JSON CommandInfo (shell) whose environment names group, instance and ordinal;
    the image label and the executor's path are set; the task id is the one given."""
    spec = parse_group({"name": "db", "command": "run $VMISO_ORDINAL", "env": {"ROLE": "replica"}, "count": 3})
    info = task_info(spec, 2, "db-2.ab", "agent-1", ExecutorCommand("/opt/x", "/etc/c.conf"),
                     identity_env(spec, 2))
    command = json.loads(base64.b64decode(info["data"]))
    env = {v["name"]: v["value"] for v in command["environment"]["variables"]}
    assert command["value"] == "run $VMISO_ORDINAL" and command["shell"] is True
    assert env == {"ROLE": "replica", "VMISO_GROUP": "db", "VMISO_INSTANCE": "db-2", "VMISO_ORDINAL": "2",
                   "VMISO_COMPONENT": "db"}
    assert info["task_id"] == {"value": "db-2.ab"} and info["executor"]["command"]["value"] == "/opt/x"
    assert info["executor"]["command"]["arguments"] == ["vm-isolation-executor", "--config", "/etc/c.conf"]
    assert {"key": "vm_isolation.image", "value": "busybox"} in info["labels"]["labels"]


def test_a_one_off_run_takes_the_first_qualifying_offer_that_fits_and_declines_the_rest() -> None:
    """vm-isolation-run --master: the plain agent and a too-small offer are declined, one task
    is launched on the VM agent with its agent id, offers are suppressed, the end is recorded."""
    d = FakeDriver()
    task = {"task_id": {"value": "vm-isolation-run-1"}, "name": "vm-isolation-run"}
    run = OneShot(d, task, Need("vm-isolation-run-1", "run", 1.0, 256), {"vt_enabled": "1"})
    run.on_offers([Offer("small", "a", "h", 0.5, 4096, {"vt_enabled": "1"}),
                   Offer("plain", "p", "h", 4, 4096, {"vt_enabled": "0"})])
    assert d.launched() == [] and d.named("decline") == [(("small", "plain"), 1.0)]
    run.on_offers([Offer("big", "b", "h", 2, 4096, {"vt_enabled": "1"}), Offer("other", "c", "h", 2, 4096,
                                                                              {"vt_enabled": "1"})])
    assert d.launched() == [{**task, "agent_id": {"value": "b"}}] and ("suppress", None) in d.calls
    run.on_status(TaskStatus("someone-else", "TASK_FINISHED"))
    run.on_status(TaskStatus("vm-isolation-run-1", "TASK_FAILED", data=b'{"exit_status": 3}'))
    assert run.final is not None and run.final.state == "TASK_FAILED"
