"""The local agent's ``/api/v1/executor`` against the rules of the real agent (http.cpp, slave.cpp).

The executor process here is a silent ``sleep``; the test itself plays the executor over
HTTP with the stdlib client from ``test_localagent_client``.
"""

from __future__ import annotations

import base64
import json
import socket
import uuid
from pathlib import Path
from typing import Iterator, Optional

import pytest

from tests.unit.test_localagent_client import SLEEPER, WAIT_S, EventReader, ExecutorClient, new_uuid, task_info
from vm_isolation.localagent import LocalAgent
from vm_isolation.waiting import Deadline, poll_until

EXECUTOR = "exec-1"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[LocalAgent]:
    with LocalAgent(tmp_path / "agent", framework_user="alice") as running:
        yield running


@pytest.fixture
def client(agent: LocalAgent) -> Iterator[ExecutorClient]:
    agent.launch_executor(EXECUTOR, SLEEPER)
    executor = ExecutorClient(agent.endpoint, agent.framework_id, EXECUTOR)
    yield executor
    executor.close()


def subscribed_with_task(agent: LocalAgent, client: ExecutorClient, task_id: str = "t1") -> None:
    """Subscribe, take the queued task and report it RUNNING (acknowledged)."""
    agent.launch_task(EXECUTOR, task_info(task_id))
    stream = client.subscribe()
    assert [e["type"] for e in stream.events(2)] == ["SUBSCRIBED", "LAUNCH"]
    client.update(task_id, "TASK_RUNNING")
    stream.next_of_type("ACKNOWLEDGED")


# --- SUBSCRIBE --------------------------------------------------------------------------------


def test_subscribe_streams_json_records_one_per_chunk(agent: LocalAgent, client: ExecutorClient) -> None:
    """SUBSCRIBE answers 200, application/json, chunked, each chunk one RecordIO record."""
    stream = client.subscribe()
    first = stream.next_event()
    assert stream.status == 200
    assert stream.headers["content-type"] == "application/json"
    assert stream.headers["transfer-encoding"] == "chunked"
    assert "mesos-stream-id" not in stream.headers
    assert first is not None and first["type"] == "SUBSCRIBED"
    size, record = stream.chunks[0].split(b"\n", 1)
    assert int(size) == len(record) and json.loads(record) == first


def test_subscribed_carries_executor_framework_agent_and_container(agent: LocalAgent, client: ExecutorClient) -> None:
    """SUBSCRIBED has executor_info, framework_info (id, user, name, checkpoint), agent_info and container_id."""
    subscribed = client.subscribe().next_of_type("SUBSCRIBED")["subscribed"]
    assert subscribed["executor_info"]["executor_id"] == {"value": EXECUTOR}
    assert subscribed["executor_info"]["command"] == SLEEPER
    framework = subscribed["framework_info"]
    assert framework["id"] == {"value": agent.framework_id}
    assert (framework["user"], framework["checkpoint"]) == ("alice", False) and framework["name"]
    assert subscribed["agent_info"]["id"] == {"value": agent.agent_id}
    assert subscribed["agent_info"]["port"] == int(agent.endpoint.rsplit(":", 1)[1])
    assert subscribed["agent_info"]["hostname"]
    assert subscribed["container_id"]["value"]


def test_tasks_given_before_subscribe_are_launched_right_after_subscribed(
        agent: LocalAgent, client: ExecutorClient) -> None:
    """Queued tasks follow SUBSCRIBED: single tasks as LAUNCH first, then groups as LAUNCH_GROUP."""
    agent.launch_task_group(EXECUTOR, [task_info("g1"), task_info("g2")])
    agent.launch_task(EXECUTOR, task_info("single"))
    events = client.subscribe().events(3)
    assert [e["type"] for e in events] == ["SUBSCRIBED", "LAUNCH", "LAUNCH_GROUP"]
    launched = events[1]["launch"]
    assert list(launched) == ["task"]
    assert launched["task"]["agent_id"] == {"value": agent.agent_id}
    assert "executor" not in launched["task"]  # a command task, as a real command executor receives it
    assert [t["task_id"]["value"] for t in events[2]["launch_group"]["task_group"]["tasks"]] == ["g1", "g2"]


def test_a_custom_executors_task_carries_the_executor_info(agent: LocalAgent, client: ExecutorClient) -> None:
    """A task without a command (its command is in data) is launched with the ExecutorInfo filled in."""
    agent.launch_task(EXECUTOR, {"name": "custom", "task_id": {"value": "custom"}, "data": "e30="})
    launched = client.subscribe().next_of_type("LAUNCH")["launch"]["task"]
    assert launched["executor"]["executor_id"] == {"value": EXECUTOR}


def test_a_task_with_both_command_and_executor_is_refused_as_a_real_master_would(
        agent: LocalAgent, client: ExecutorClient) -> None:
    """TaskInfo.command together with TaskInfo.executor never reaches an executor."""
    with pytest.raises(ValueError, match="both 'command' and 'executor'"):
        agent.launch_task(EXECUTOR, task_info("both", executor={"executor_id": {"value": EXECUTOR}}))


def test_a_task_given_to_a_subscribed_executor_is_launched_at_once(agent: LocalAgent, client: ExecutorClient) -> None:
    """After SUBSCRIBED, launch_task sends LAUNCH on the open stream."""
    stream = client.subscribe()
    stream.next_of_type("SUBSCRIBED")
    agent.launch_task(EXECUTOR, task_info("later"))
    assert stream.next_of_type("LAUNCH")["launch"]["task"]["task_id"] == {"value": "later"}


# --- UPDATE -----------------------------------------------------------------------------------


def test_update_gets_202_then_acknowledged_with_the_same_uuid(agent: LocalAgent, client: ExecutorClient) -> None:
    """An accepted UPDATE answers 202 Accepted and ACKNOWLEDGED{task_id, uuid} follows on the stream."""
    agent.launch_task(EXECUTOR, task_info("t1"))
    stream = client.subscribe()
    stream.events(2)
    code, text, sent = client.update("t1", "TASK_RUNNING", data=base64.b64encode(b"hi").decode())
    assert (code, text) == (202, "")
    assert stream.next_of_type("ACKNOWLEDGED")["acknowledged"] == {"task_id": {"value": "t1"}, "uuid": sent}
    record = agent.updates("t1")[0]
    assert (record.state, record.source, record.data) == ("TASK_RUNNING", "SOURCE_EXECUTOR", b"hi")
    assert record.uuid == base64.b64decode(sent)
    assert record.raw["agent_id"] == {"value": agent.agent_id}


def test_a_duplicate_update_is_acknowledged_again_but_recorded_once(agent: LocalAgent, client: ExecutorClient) -> None:
    """The status update manager drops a repeated uuid, yet the agent acknowledges it again."""
    subscribed_with_task(agent, client)
    stream = client.readers[-1]
    _, _, sent = client.update("t1", "TASK_FINISHED")
    client.update("t1", "TASK_FINISHED", uuid_b64=sent)
    assert [stream.next_of_type("ACKNOWLEDGED")["acknowledged"]["uuid"] for _ in range(2)] == [sent, sent]
    assert [u.state for u in agent.updates("t1")] == ["TASK_RUNNING", "TASK_FINISHED"]


def test_a_text_uuid_is_rejected_as_the_real_agent_rejects_it(agent: LocalAgent, client: ExecutorClient) -> None:
    """base64 of a 36-character uuid string (the docs' example style) is 400 'Not a valid UUID'."""
    subscribed_with_task(agent, client)
    text_uuid = base64.b64encode(str(uuid.uuid4()).encode()).decode()
    code, text, _ = client.update("t1", "TASK_FINISHED", uuid_b64=text_uuid)
    assert (code, text) == (400, "Failed to validate Executor::Call: Not a valid UUID")
    assert [u.state for u in agent.updates("t1")] == ["TASK_RUNNING"]


@pytest.mark.parametrize(("status", "message"), [
    ({"source": "SOURCE_MASTER"}, "Received Call from executor exec-1 of framework {fid} with invalid source, "
                                  "expecting 'SOURCE_EXECUTOR'"),
    ({"source": "SOURCE_SLAVE"}, "Received Call from executor exec-1 of framework {fid} with invalid source, "
                                 "expecting 'SOURCE_EXECUTOR'"),
    ({"state": "TASK_STAGING"}, "Received TASK_STAGING from executor exec-1 of framework {fid} which is not allowed"),
    ({"executor_id": {"value": "other"}}, "ExecutorID in Call: exec-1 does not match ExecutorID in TaskStatus: other"),
    ({"uuid": None}, "Expecting 'uuid' to be present"),
])
def test_invalid_updates_are_400_with_the_agents_message(
        agent: LocalAgent, client: ExecutorClient, status: dict[str, object], message: str) -> None:
    """validateExecutorCall: source must be SOURCE_EXECUTOR, no TASK_STAGING, same executor id, a uuid."""
    subscribed_with_task(agent, client)
    full = {"task_id": {"value": "t1"}, "state": "TASK_FINISHED", "source": "SOURCE_EXECUTOR", "uuid": new_uuid(),
            **status}
    code, text, _ = client.call(client.body("UPDATE", update={"status": full}))
    assert (code, text) == (400, "Failed to validate Executor::Call: " + message.format(fid=agent.framework_id))


def test_missing_required_fields_are_reported_like_protobuf(agent: LocalAgent, client: ExecutorClient) -> None:
    """A status without state, or a call without ids, fails JSON -> Call conversion, listing the fields."""
    subscribed_with_task(agent, client)
    code, text, _ = client.call(client.body("UPDATE", update={"status": {"task_id": {"value": "t1"}}}))
    assert (code, text) == (400, "Failed to convert JSON into Call protobuf: Missing required fields: "
                                 "update.status.state")
    code, text, _ = client.call({"type": "HEARTBEAT"})
    assert (code, text) == (400, "Failed to convert JSON into Call protobuf: Missing required fields: "
                                 "executor_id, framework_id")


def test_an_update_naming_another_agent_is_accepted_but_ignored(agent: LocalAgent, client: ExecutorClient) -> None:
    """A wrong status.agent_id gets 202 yet is neither recorded nor acknowledged (Slave::statusUpdate)."""
    subscribed_with_task(agent, client)
    code, _, _ = client.update("t1", "TASK_FINISHED", agent_id={"value": "someone-else"})
    assert code == 202
    assert [u.state for u in agent.updates("t1")] == ["TASK_RUNNING"]
    assert [e["type"] for e in agent.events_sent(EXECUTOR)].count("ACKNOWLEDGED") == 1


def test_with_acknowledgements_off_updates_are_recorded_but_not_acknowledged(
        agent: LocalAgent, client: ExecutorClient) -> None:
    """ack_updates(False) stops ACKNOWLEDGED events; updates are still accepted and recorded."""
    agent.launch_task(EXECUTOR, task_info("t1"))
    client.subscribe().events(2)
    agent.ack_updates(False)
    assert client.update("t1", "TASK_RUNNING")[0] == 202
    assert agent.wait_for_state("t1", "TASK_RUNNING", WAIT_S).state == "TASK_RUNNING"
    assert "ACKNOWLEDGED" not in [e["type"] for e in agent.events_sent(EXECUTOR)]


# --- request checks ---------------------------------------------------------------------------


def test_request_checks_answer_like_the_agent(agent: LocalAgent, client: ExecutorClient) -> None:
    """Missing Content-Type 400, other types 415, GET 405 with Allow, Accept without JSON 406, bad path 404."""
    body = client.body("SUBSCRIBE", subscribe={})
    assert client.call(body, content_type=None)[:2] == (400, "Expecting 'Content-Type' to be present")
    assert client.call(body, content_type="text/plain")[0] == 415
    assert client.call(body, content_type="application/json; charset=utf-8")[0] == 415
    assert client.call(body, content_type="application/x-protobuf")[0] == 415
    code, text, headers = client.call(body, method="GET")
    assert (code, headers["allow"]) == (405, "POST") and "but received 'GET'" in text
    assert client.call(body, headers={"Accept": "text/html"})[:2] == (
        406, "Expecting 'Accept' to allow 'application/x-protobuf' or 'application/json'")
    assert client.call(body, headers={"Accept": "application/json;q=0"})[0] == 406
    assert client.call(b"{not json")[0] == 400
    assert client.call(body, path="/api/v1/nothing")[0] == 404


def test_calls_before_subscribing_are_forbidden_but_heartbeats_pass(agent: LocalAgent, client: ExecutorClient) -> None:
    """Non-SUBSCRIBE calls from a REGISTERING executor get 403; HEARTBEAT gets 202 even with dummy ids."""
    agent.launch_task(EXECUTOR, task_info("t1"))
    assert client.update("t1", "TASK_RUNNING")[:2] == (403, "Executor is not subscribed")
    dummy = {"type": "HEARTBEAT", "framework_id": {"value": "x"}, "executor_id": {"value": "y"}}
    assert client.call(dummy)[:2] == (202, "")
    assert [c["status"] for c in agent.calls_received(EXECUTOR)] == [403]


def test_unknown_framework_or_executor_is_400(agent: LocalAgent, client: ExecutorClient) -> None:
    """Lookup failures answer 400 'Framework cannot be found' / 'Executor cannot be found'."""
    stranger = ExecutorClient(agent.endpoint, "no-such-framework", EXECUTOR)
    assert stranger.call(stranger.body("SUBSCRIBE", subscribe={}))[:2] == (400, "Framework cannot be found")
    ghost = ExecutorClient(agent.endpoint, agent.framework_id, "no-such-executor")
    assert ghost.call(ghost.body("SUBSCRIBE", subscribe={}))[:2] == (400, "Executor cannot be found")
    assert client.call(client.body("SUBSCRIBE"))[:2] == (
        400, "Failed to validate Executor::Call: Expecting 'subscribe' to be present")


def test_the_c_plus_plus_library_path_is_served_too(agent: LocalAgent, client: ExecutorClient) -> None:
    """``/slave(1)/api/v1/executor`` (built from MESOS_SLAVE_PID) reaches the same handler."""
    stream = client.subscribe(path="/slave(1)/api/v1/executor")
    assert (stream.status, stream.next_of_type("SUBSCRIBED")["type"]) == (200, "SUBSCRIBED")


# --- re-subscription and disconnections -------------------------------------------------------


def test_resubscribing_replaces_the_stream_replays_updates_and_loses_unlisted_staging_tasks(
        agent: LocalAgent, client: ExecutorClient) -> None:
    """Newest subscriber wins; unacked updates are replayed and acked; unlisted STAGING tasks become TASK_LOST."""
    agent.launch_task(EXECUTOR, task_info("kept"))
    agent.launch_task(EXECUTOR, task_info("lost"))
    old = client.subscribe()
    old.events(3)
    unacked = {"task_id": {"value": "kept"}, "state": "TASK_RUNNING", "source": "SOURCE_EXECUTOR", "uuid": new_uuid()}
    new = client.subscribe(tasks=[task_info("kept", agent_id={"value": agent.agent_id})],
                           updates=[{"status": unacked}])
    assert old.read_to_end() == []
    assert [e["type"] for e in new.events(2)] == ["SUBSCRIBED", "ACKNOWLEDGED"]
    assert [u.state for u in agent.updates("kept")] == ["TASK_RUNNING"]
    lost = agent.wait_for_terminal("lost", WAIT_S)
    assert (lost.state, lost.source, lost.reason, lost.message) == (
        "TASK_LOST", "SOURCE_SLAVE", "REASON_SLAVE_RESTARTED", "Task launched during agent restart")


def test_events_without_an_open_stream_are_dropped_and_not_replayed(agent: LocalAgent, client: ExecutorClient) -> None:
    """A KILL sent while the stream is down is lost; the next SUBSCRIBE does not bring it back."""
    subscribed_with_task(agent, client)
    assert agent.drop_stream(EXECUTOR) is True
    assert client.readers[-1].read_to_end() == []
    agent.kill_task(EXECUTOR, "t1")
    assert [e["type"] for e in agent.events_dropped(EXECUTOR)] == ["KILL"]
    stream = client.subscribe(tasks=[], updates=[])
    assert [e["type"] for e in stream.events(1)] == ["SUBSCRIBED"]
    agent.send_message(EXECUTOR, b"after")
    assert stream.next_event() == {"type": "MESSAGE", "message": {"data": base64.b64encode(b"after").decode()}}


def test_kill_carries_the_grace_period_in_nanoseconds(agent: LocalAgent, client: ExecutorClient) -> None:
    """KILL has kill_policy.grace_period.nanoseconds when a grace period is given, no kill_policy otherwise."""
    subscribed_with_task(agent, client)
    stream = client.readers[-1]
    agent.kill_task(EXECUTOR, "t1", grace_period_s=1.5)
    agent.kill_task(EXECUTOR, "t1")
    policy = {"grace_period": {"nanoseconds": 1_500_000_000}}
    assert stream.next_event() == {"type": "KILL", "kill": {"task_id": {"value": "t1"}, "kill_policy": policy}}
    assert stream.next_event() == {"type": "KILL", "kill": {"task_id": {"value": "t1"}}}


def test_a_task_killed_before_delivery_is_killed_by_the_agent_and_the_idle_executor_shut_down(
        agent: LocalAgent, client: ExecutorClient) -> None:
    """Killing a queued task gives TASK_KILLED from the agent; its executor then gets SHUTDOWN on SUBSCRIBE."""
    agent.launch_task(EXECUTOR, task_info("t1"))
    agent.kill_task(EXECUTOR, "t1")
    killed = agent.wait_for_terminal("t1", WAIT_S)
    assert (killed.state, killed.reason, killed.message) == (
        "TASK_KILLED", "REASON_TASK_KILLED_DURING_LAUNCH", "Killed before delivery to the executor")
    assert client.subscribe().next_event() == {"type": "SHUTDOWN"}


def test_a_terminating_executor_that_subscribes_gets_shutdown_and_the_stream_ends(
        agent: LocalAgent, client: ExecutorClient) -> None:
    """SUBSCRIBE from an executor being shut down is answered with SHUTDOWN and a closed stream."""
    agent.launch_task(EXECUTOR, task_info("t1"))
    agent.shutdown_executor(EXECUTOR)
    assert client.subscribe().read_to_end() == [{"type": "SHUTDOWN"}]


def test_heartbeat_events_come_at_the_configured_interval(tmp_path: Path) -> None:
    """With heartbeat_interval_s set short, HEARTBEAT events arrive on an idle stream."""
    with LocalAgent(tmp_path / "agent", heartbeat_interval_s=0.05) as agent:
        agent.launch_executor(EXECUTOR, SLEEPER)
        agent.launch_task(EXECUTOR, task_info("t1"))
        stream = ExecutorClient(agent.endpoint, agent.framework_id, EXECUTOR).subscribe()
        stream.events(2)
        assert stream.next_event(timeout_s=2.0) == {"type": "HEARTBEAT"}
        stream.close()


def test_a_paused_agent_refuses_connections_then_accepts_again(agent: LocalAgent, client: ExecutorClient) -> None:
    """pause() cuts the stream and refuses connections; after it, SUBSCRIBE works again."""
    subscribed_with_task(agent, client)
    agent.pause(0.3)
    with pytest.raises(ConnectionError):
        client.readers[-1].read_to_end()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((client.host, client.port), timeout=WAIT_S).close()
    stream = _subscribe_when_accepting(client)
    assert stream.next_of_type("SUBSCRIBED")["type"] == "SUBSCRIBED"


def _subscribe_when_accepting(client: ExecutorClient) -> EventReader:
    def attempt() -> Optional[EventReader]:
        try:
            return client.subscribe()
        except ConnectionRefusedError:
            return None
    return poll_until(attempt, Deadline.after(WAIT_S), interval_s=0.05, what="the agent to accept again")


def test_a_refusing_agent_keeps_open_streams_but_refuses_new_connections(
        agent: LocalAgent, client: ExecutorClient) -> None:
    """set_accepting(False) refuses connections; the open stream still delivers; set_accepting(True) reopens."""
    subscribed_with_task(agent, client)
    agent.set_accepting(False)
    with pytest.raises(ConnectionRefusedError):
        client.update("t1", "TASK_FINISHED")
    agent.send_message(EXECUTOR, b"still here")
    assert client.readers[-1].next_of_type("MESSAGE")["message"]["data"] == base64.b64encode(b"still here").decode()
    agent.set_accepting(True)
    assert client.update("t1", "TASK_FINISHED")[0] == 202


def test_a_reconnecting_agent_takes_subscribe_but_answers_other_calls_503(
        agent: LocalAgent, client: ExecutorClient) -> None:
    """In the reconnect phase of recovery SUBSCRIBE works and UPDATE/MESSAGE get 503."""
    subscribed_with_task(agent, client)
    agent.set_accepting(False, how="reconnecting")
    assert client.update("t1", "TASK_FINISHED")[:2] == (503, "Agent has not finished recovery")
    assert client.subscribe(tasks=[], updates=[]).next_of_type("SUBSCRIBED")["type"] == "SUBSCRIBED"


def test_executor_messages_are_accepted_and_kept(agent: LocalAgent, client: ExecutorClient) -> None:
    """MESSAGE from a subscribed executor answers 202 and its decoded data is kept for the test."""
    subscribed_with_task(agent, client)
    data = base64.b64encode(b"\x00hello").decode()
    assert client.call(client.body("MESSAGE", message={"data": data}))[:2] == (202, "")
    assert agent.messages_received(EXECUTOR) == [b"\x00hello"]


def test_a_recovering_agent_answers_503(agent: LocalAgent, client: ExecutorClient) -> None:
    """set_accepting(False, how='recovering') answers 503 'Agent has not finished recovery' until resumed."""
    agent.set_accepting(False, how="recovering")
    assert client.call(client.body("SUBSCRIBE", subscribe={}))[:2] == (503, "Agent has not finished recovery")
    agent.set_accepting(True)
    assert client.subscribe().next_of_type("SUBSCRIBED")["type"] == "SUBSCRIBED"
