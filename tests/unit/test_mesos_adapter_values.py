"""The agent connection's parts that need no network: wire values, the ledger, the outbox."""

from __future__ import annotations

import base64
import threading
import uuid
from typing import Any

import pytest

from vm_isolation.agent_protocol import (
    CallRefused,
    JsonDict,
    Outbox,
    UpdateLedger,
    deliver_updates,
    kill_grace_s,
    new_status,
    parse_subscribed,
    reconnect_delay_s,
)


def task(task_id: str) -> JsonDict:
    return {"task_id": {"value": task_id}, "name": task_id}


def test_a_status_carries_a_fresh_16_byte_uuid4_and_everything_the_agent_checks() -> None:
    """new_status builds what validateExecutorCall accepts: uuid4 bytes, executor source, ids, float time."""
    raw, status = new_status("t1", "TASK_RUNNING", executor_id="e1", agent_id="a1",
                             reason="REASON_X", message="hi", data=b"\x00\xff", now=lambda: 12.5)
    assert len(raw) == 16 and uuid.UUID(bytes=raw).version == 4
    assert base64.b64decode(status["uuid"]) == raw
    assert status == {
        "task_id": {"value": "t1"}, "state": "TASK_RUNNING", "source": "SOURCE_EXECUTOR",
        "uuid": status["uuid"], "timestamp": 12.5, "executor_id": {"value": "e1"},
        "agent_id": {"value": "a1"}, "reason": "REASON_X", "message": "hi",
        "data": base64.b64encode(b"\x00\xff").decode(),
    }
    assert new_status("t1", "TASK_RUNNING", executor_id="e1", agent_id="a1")[0] != raw


def test_a_status_the_agent_would_reject_is_refused_before_it_can_poison_a_subscribe() -> None:
    """TASK_STAGING (and non-task states) raise ValueError instead of being queued."""
    for state in ("TASK_STAGING", "RUNNING"):
        with pytest.raises(ValueError, match="cannot send"):
            new_status("t1", state, executor_id="e1", agent_id="")


def test_without_an_agent_id_the_status_leaves_it_out() -> None:
    """An unknown agent ID is omitted rather than sent empty (a wrong one makes the agent drop it)."""
    assert "agent_id" not in new_status("t1", "TASK_RUNNING", executor_id="e1", agent_id="")[1]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"task_id": {"value": "t"}}, None),
        ({"task_id": {"value": "t"}, "kill_policy": {}}, None),
        ({"task_id": {"value": "t"}, "kill_policy": {"grace_period": {"nanoseconds": 2_500_000_000}}}, 2.5),
        ({"task_id": {"value": "t"}, "kill_policy": {"grace_period": {"nanoseconds": "1000000000"}}}, 1.0),
        ({"task_id": {"value": "t"}, "kill_policy": {"grace_period": {"nanoseconds": 0}}}, 0.0),
    ],
)
def test_the_kill_policy_grace_period_becomes_seconds(payload: JsonDict, expected: Any) -> None:
    """kill_policy.grace_period.nanoseconds -> seconds; None when no policy or no period was given."""
    assert kill_grace_s(payload) == expected


def test_subscribed_keeps_the_infos_and_flattens_ids() -> None:
    """SUBSCRIBED's container_id and agent_info.id come out as plain strings."""
    info = parse_subscribed({
        "executor_info": {"executor_id": {"value": "e"}}, "framework_info": {"id": {"value": "f"}},
        "agent_info": {"hostname": "h", "id": {"value": "a-S0"}}, "container_id": {"value": "c1"},
    })
    assert (info.container_id, info.agent_id, info.agent_info["hostname"]) == ("c1", "a-S0", "h")


def test_reconnecting_is_immediate_then_several_tries_fall_in_the_agents_window() -> None:
    """Attempt 0 is immediate; later attempts wait in [0, MESOS_SUBSCRIPTION_BACKOFF_MAX / 4], so
    at least four land in the agent's re-registration window (which is that bound)."""
    assert reconnect_delay_s(0, 2.0, rng=lambda: 0.99) == 0.0
    assert reconnect_delay_s(5, 2.0, rng=lambda: 1.0) == 0.5
    assert reconnect_delay_s(1, 2.0, rng=lambda: 0.5) == 0.25


def test_the_ledger_keeps_updates_until_acked_and_tasks_until_any_update_is_acked() -> None:
    """The executor API's re-subscription duty: unacked updates in send order, unacked TaskInfos."""
    ledger = UpdateLedger()
    assert ledger.launched(task("t1")) and ledger.launched(task("t2"))
    first, second = b"1" * 16, b"2" * 16
    ledger.sent(first, {"n": 1})
    ledger.sent(second, {"n": 2})
    assert ledger.pending() == ([task("t1"), task("t2")], [(first, {"n": 1}), (second, {"n": 2})])
    ledger.acknowledged("t1", first)
    assert ledger.pending() == ([task("t2")], [(second, {"n": 2})])
    assert not ledger.all_acknowledged()
    ledger.acknowledged("t2", second)
    assert ledger.all_acknowledged()


def test_the_ledger_refuses_a_second_launch_of_the_same_task() -> None:
    """A repeated LAUNCH is reported (False) instead of starting the task twice."""
    ledger = UpdateLedger()
    assert ledger.launched(task("t1"))
    ledger.acknowledged("t1", b"x" * 16)
    assert not ledger.launched(task("t1"))


def test_waiting_for_an_ack_returns_when_another_thread_records_it() -> None:
    """wait() wakes on acknowledged() from the IO thread; it does not wait out its timeout."""
    ledger = UpdateLedger()
    raw = b"u" * 16
    ledger.sent(raw, {})
    acker = threading.Timer(0.05, ledger.acknowledged, ("t", raw))
    acker.start()
    assert ledger.wait(raw, timeout_s=30.0)
    acker.join()
    assert ledger.wait(raw, timeout_s=0.0)  # already acknowledged: immediate


def test_waiting_for_an_ack_that_never_comes_returns_false() -> None:
    """A pending update at the deadline, or one the agent refused, gives False."""
    ledger = UpdateLedger()
    pending, refused = b"p" * 16, b"r" * 16
    ledger.sent(pending, {})
    ledger.sent(refused, {})
    ledger.rejected(refused)
    assert not ledger.wait(pending, timeout_s=0.01)
    assert not ledger.wait(refused, timeout_s=30.0)
    assert ledger.pending()[1] == [(pending, {})]


def test_waiting_for_an_unknown_uuid_is_a_caller_error() -> None:
    """A uuid that was never sent raises instead of looking like a timeout."""
    with pytest.raises(ValueError, match="no status update"):
        UpdateLedger().wait(b"?" * 16, timeout_s=1.0)


def test_the_outbox_drops_what_a_subscribe_carried_and_releases_the_rest_in_order() -> None:
    """After SUBSCRIBED, updates the SUBSCRIBE carried are gone; the others come out head first."""
    outbox = Outbox()
    for n in (1, 2, 3):
        outbox.put(bytes([n]) * 16, {"n": n})
    outbox.subscribed(carried={bytes([2]) * 16})
    assert outbox.next() == (bytes([1]) * 16, {"n": 1})
    outbox.done(bytes([1]) * 16)
    outbox.done(bytes([1]) * 16)  # a second done for the same update removes nothing else
    assert outbox.next() == (bytes([3]) * 16, {"n": 3})
    assert outbox.close() == 1
    assert outbox.next() is None


def test_the_outbox_holds_updates_while_disconnected() -> None:
    """next() blocks while not subscribed and returns once SUBSCRIBED arrives."""
    outbox = Outbox()
    outbox.put(b"a" * 16, {})
    got: list[Any] = []
    taker = threading.Thread(target=lambda: got.append(outbox.next()))
    taker.start()
    taker.join(0.05)
    assert taker.is_alive() and got == []
    outbox.subscribed(carried=())
    taker.join(5.0)
    assert got == [(b"a" * 16, {})]


def test_the_sender_retries_passing_failures_and_drops_permanent_refusals() -> None:
    """503 and connection errors are retried in place; a 400 is dropped and marked rejected."""
    outbox, ledger = Outbox(), UpdateLedger()
    statuses = [(bytes([n]) * 16, {"n": n}) for n in (1, 2)]
    for raw, status in statuses:
        ledger.sent(raw, status)
        outbox.put(raw, status)
    outbox.subscribed(carried=())
    answers: list[Exception | None] = [CallRefused(503, "recovering"), ConnectionRefusedError(),
                                       None, CallRefused(400, "bad"), None]
    posted: list[int] = []

    def post(status: JsonDict) -> None:
        posted.append(status["n"])
        answer = answers.pop(0)
        if not answers:
            outbox.close()
        if answer is not None:
            raise answer

    outbox.put(b"3" * 16, {"n": 3})
    ledger.sent(b"3" * 16, {"n": 3})
    deliver_updates(outbox, ledger, post, retry_delay_s=lambda: 0.0)
    assert posted == [1, 1, 1, 2, 3]
    assert not ledger.wait(statuses[1][0], timeout_s=0.0)
    assert [raw for raw, _ in ledger.pending()[1]] == [statuses[0][0], b"3" * 16]
