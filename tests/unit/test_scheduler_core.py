"""The scheduler's pure core on a fake driver and a fake clock: validation, placement and
spread, stable identities, idempotent create, delete, and the reconcile decisions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.fakes import FakeClock
from vm_isolation.scheduler.core import Conflict, InstanceScheduler, NotFound
from vm_isolation.scheduler.instances import Phase, TaskStatus, Timings, backoff_s
from vm_isolation.scheduler.model import MAX_COUNT, InvalidSpec, parse_group
from vm_isolation.scheduler.placement import Need, Offer, decode_offer, place
from vm_isolation.scheduler.store import SqliteStore
from vm_isolation.scheduler.taskinfo import ExecutorCommand

VM = {"vt_enabled": "1"}


class FakeDriver:
    """Records every call; refuses nothing (the core decides, the test asserts)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def launch(self, offer_id: str, tasks: list[dict[str, Any]]) -> None:
        self.calls.append(("launch", (offer_id, tasks)))

    def decline(self, offer_ids: list[str], refuse_s: float) -> None:
        self.calls.append(("decline", (tuple(offer_ids), refuse_s)))

    def kill(self, task_id: str, agent_id: str) -> None:
        self.calls.append(("kill", task_id))

    def reconcile(self, tasks: list[tuple[str, str]]) -> None:
        self.calls.append(("reconcile", tuple(t for t, _ in tasks)))

    def suppress(self) -> None:
        self.calls.append(("suppress", None))

    def revive(self) -> None:
        self.calls.append(("revive", None))

    def named(self, kind: str) -> list[Any]:
        return [arg for k, arg in self.calls if k == kind]

    def launched(self) -> list[dict[str, Any]]:
        return [t for _, tasks in self.named("launch") for t in tasks]


def offer(n: int, agent: str, *, vt: bool = True, cpus: float = 2.0, mem: float = 2048.0) -> Offer:
    return Offer(f"o{n}", agent, f"host-{agent}", cpus, mem, {"vt_enabled": "1" if vt else "0"})


def web(count: int = 6, **extra: Any) -> Any:
    return parse_group({"name": "web", "command": "sleep 3600", "count": count, **extra})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def new_scheduler(tmp_path: Path, clock: FakeClock, driver: FakeDriver) -> InstanceScheduler:
    return InstanceScheduler(SqliteStore(tmp_path / "s.db"), driver, clock, ExecutorCommand("/x/vm-isolation-executor"),
                             required=VM, timings=Timings())


def registered(tmp_path: Path, clock: FakeClock, driver: FakeDriver) -> InstanceScheduler:
    s = new_scheduler(tmp_path, clock, driver)
    s.on_registered("fw-1")
    clock.now += Timings().settle_s
    return s


def run_all(s: InstanceScheduler) -> None:
    for inst in list(s.instances.values()):
        if inst.phase == Phase.LAUNCHING:
            s.on_status(TaskStatus(inst.task_id, "TASK_RUNNING", inst.agent_id))


# --- validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("body, field", [
    ({"name": "../etc", "command": "x"}, "name"),
    ({"name": "a b", "command": "x"}, "name"),
    ({"name": "web\n", "command": "x"}, "name"),
    ({"name": "web-", "command": "x"}, "name"),
    ({"name": "A", "command": "x"}, "name"),
    ({"name": "x" * 33, "command": "x"}, "name"),
    ({"name": "web", "command": "x", "count": MAX_COUNT + 1}, "count"),
    ({"name": "web", "command": "x", "count": 10**12}, "count"),
    ({"name": "web", "command": "x", "count": True}, "count"),
    ({"name": "web", "command": "x", "cpus": float("nan")}, "cpus"),
    ({"name": "web", "command": "x", "mem": 1}, "mem"),
    ({"name": "web", "command": "x", "image": "../../root"}, "image"),
    ({"name": "web", "command": "x", "component": "$(id)"}, "component"),
    ({"name": "web", "command": "x", "env": {"A;B": "1"}}, "env"),
    ({"name": "web", "command": "x", "evil": 1}, "unknown field"),
    ({"name": "web"}, "missing"),
    ({"name": "web", "command": ""}, "command"),
    ([1, 2], "object"),
])
def test_hostile_bodies_are_refused_naming_the_field(body: Any, field: str) -> None:
    """Every bad body raises InvalidSpec whose message names what is wrong."""
    with pytest.raises(InvalidSpec, match=field):
        parse_group(body)


def test_a_group_has_stable_identities_and_defaults_its_component_to_its_name() -> None:
    """count 3 -> web-0, web-1, web-2; component defaults to the name."""
    spec = web(3)
    assert spec.instance_names() == ["web-0", "web-1", "web-2"] and spec.component == "web"


# --- placement --------------------------------------------------------------------------------

def test_placement_spreads_a_component_over_qualifying_agents_only() -> None:
    """Six needs and three offers (one agent without vt_enabled:1): 3 + 3, none on the third."""
    needs = [Need(f"web-{i}", "web", 0.2, 128) for i in range(6)]
    result = place(needs, [offer(1, "a"), offer(2, "b"), offer(3, "c", vt=False)], VM, {})
    per_agent = {a: sum(p.agent_id == a for p in result) for a in "abc"}
    assert per_agent == {"a": 3, "b": 3, "c": 0}


def test_placement_puts_the_next_instance_on_the_agent_with_fewest_of_its_type() -> None:
    """Existing counts are respected: a has 2 web, b has 0 -> both new ones go to b."""
    needs = [Need("web-2", "web", 0.2, 128), Need("web-3", "web", 0.2, 128)]
    result = place(needs, [offer(1, "a"), offer(2, "b")], VM, {("a", "web"): 2, ("a", "db"): 0})
    assert [p.agent_id for p in result] == ["b", "b"]


def test_placement_respects_resources_task_plus_executor() -> None:
    """An offer of 0.5 cpus fits one 0.2+0.1 instance, not two."""
    needs = [Need(f"web-{i}", "web", 0.2, 128) for i in range(2)]
    assert len(place(needs, [offer(1, "a", cpus=0.5)], VM, {})) == 1


def test_placement_waits_for_a_known_agent_with_fewer_instead_of_stacking() -> None:
    """Only a's offer is in hand, but b (known, with room, running fewer) holds it back."""
    needs = [Need("web-1", "web", 0.2, 128)]
    assert place(needs, [offer(1, "a")], VM, {("a", "web"): 1}, {"b": (2.0, 2048.0)}) == []
    assert place(needs, [offer(1, "a")], VM, {("a", "web"): 1}, {"b": (0.1, 2048.0)}) != []


def test_offers_decode_scalar_attributes_as_mesos_parses_them() -> None:
    """vt_enabled:1 arrives as a SCALAR attribute 1.0 and matches the constraint "1"."""
    raw = {"id": {"value": "o"}, "agent_id": {"value": "a"}, "hostname": "h",
           "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 1.5}},
                         {"name": "mem", "type": "SCALAR", "scalar": {"value": 512}}],
           "attributes": [{"name": "vt_enabled", "type": "SCALAR", "scalar": {"value": 1.0}}]}
    assert decode_offer(raw) == Offer("o", "a", "h", 1.5, 512.0, {"vt_enabled": "1"})


# --- the scheduler ----------------------------------------------------------------------------

def test_create_launches_each_identity_once_spread_and_then_suppresses(tmp_path: Path, clock: FakeClock) -> None:
    """web x6 on offers of a, b, c(no vt): 3 + 3, one task per identity; suppress once running."""
    d = FakeDriver()
    s = registered(tmp_path, clock, d)
    assert s.create(web()).created
    s.on_offers([offer(1, "a"), offer(2, "b"), offer(3, "c", vt=False)])
    tasks = d.launched()
    assert sorted(t["name"] for t in tasks) == [f"web-{i}" for i in range(6)]
    assert sorted(t["agent_id"]["value"] for t in tasks) == ["a"] * 3 + ["b"] * 3
    assert (("o3",), Timings().refuse_unusable_s) in d.named("decline")
    run_all(s)
    assert d.calls[-1] == ("suppress", None)


def test_offers_during_the_settle_time_are_declined_but_their_agents_noted(tmp_path: Path, clock: FakeClock) -> None:
    """Right after registering nothing is placed; a's and b's offers then give 3 + 3 even when
    a's next offer arrives alone first."""
    d = FakeDriver()
    s = new_scheduler(tmp_path, clock, d)
    s.on_registered("fw-1")
    s.create(web())
    s.on_offers([offer(1, "a"), offer(2, "b")])
    assert d.launched() == []
    clock.now += 5
    s.on_offers([offer(3, "a")])
    s.on_offers([offer(4, "b")])
    s.on_offers([offer(5, "a")])
    s.on_offers([offer(6, "b")])
    agents = sorted(t["agent_id"]["value"] for t in d.launched())
    assert agents == ["a"] * 3 + ["b"] * 3


def test_creating_what_exists_is_a_noop_that_says_so(tmp_path: Path, clock: FakeClock) -> None:
    """A second identical POST launches nothing; a different count or spec is a conflict."""
    d = FakeDriver()
    s = registered(tmp_path, clock, d)
    s.create(web(2))
    s.on_offers([offer(1, "a"), offer(2, "b")])
    again = s.create(web(2))
    assert not again.created and "nothing changed" in again.message
    s.on_offers([offer(3, "a"), offer(4, "b")])
    assert len(d.launched()) == 2
    with pytest.raises(Conflict, match="PATCH"):
        s.create(web(3))
    with pytest.raises(Conflict, match="DELETE"):
        s.create(web(2, image="python"))


def test_delete_kills_every_task_and_forgets_the_group_after_the_terminal_status(
        tmp_path: Path, clock: FakeClock) -> None:
    """DELETE -> KILL per task; the group lives until TASK_KILLED, then it and its rows are gone."""
    d = FakeDriver()
    s = registered(tmp_path, clock, d)
    s.create(web(2))
    s.on_offers([offer(1, "a"), offer(2, "b")])
    run_all(s)
    ids = [i.task_id for i in s.instances.values()]
    s.delete("web")
    assert sorted(d.named("kill")) == sorted(ids)
    assert s.describe("web")["deleting"]
    s.on_status(TaskStatus(ids[0], "TASK_KILLED"))
    assert "web" in s.groups
    s.on_status(TaskStatus(ids[1], "TASK_KILLED"))
    assert s.groups == {} and s.store.groups() == {} and s.store.tasks() == {}
    with pytest.raises(NotFound):
        s.describe("web")


def test_scale_down_kills_the_highest_ordinals(tmp_path: Path, clock: FakeClock) -> None:
    """count 3 -> 1 kills web-1 and web-2, keeps web-0."""
    d = FakeDriver()
    s = registered(tmp_path, clock, d)
    s.create(web(3))
    s.on_offers([offer(1, "a"), offer(2, "b")])
    run_all(s)
    s.scale("web", 1)
    assert sorted(d.named("kill")) == sorted([s.instances["web-1"].task_id, s.instances["web-2"].task_id])


def test_a_lost_task_is_relaunched_after_its_backoff_and_never_twice(tmp_path: Path, clock: FakeClock) -> None:
    """TASK_LOST -> pending with back-off: nothing launched before it ends, one task after."""
    d = FakeDriver()
    s = registered(tmp_path, clock, d)
    s.create(web(1))
    s.on_offers([offer(1, "a"), offer(2, "b")])
    run_all(s)
    first = s.instances["web-0"].task_id
    assert d.calls[-1] == ("suppress", None)
    s.on_status(TaskStatus(first, "TASK_LOST", "a", "REASON_AGENT_REMOVED"))
    assert d.calls[-1] == ("revive", None)
    s.on_offers([offer(3, "b")])
    assert len(d.launched()) == 1
    clock.now += backoff_s(1, Timings())
    s.tick()
    s.on_offers([offer(4, "b"), offer(5, "b2")])
    assert len(d.launched()) == 2 and s.instances["web-0"].task_id != first
    assert backoff_s(3, Timings()) == 4.0 and backoff_s(50, Timings()) == Timings().backoff_max_s


def test_a_restart_adopts_running_tasks_and_relaunches_only_what_is_gone(tmp_path: Path, clock: FakeClock) -> None:
    """After a restart every recorded task is reconciled first; RUNNING is adopted, LOST is
    relaunched, and nothing launches while an answer is outstanding."""
    d = FakeDriver()
    s = registered(tmp_path, clock, d)
    s.create(web(2))
    s.on_offers([offer(1, "a"), offer(2, "b")])
    run_all(s)
    ids = {n: i.task_id for n, i in s.instances.items()}
    s.store.close()

    d2 = FakeDriver()
    s2 = new_scheduler(tmp_path, clock, d2)
    assert s2.framework_id == "fw-1" and {i.phase for i in s2.instances.values()} == {Phase.RECONCILING}
    s2.on_registered("fw-1")
    assert sorted(d2.named("reconcile")[0]) == sorted(ids.values()) and d2.named("reconcile")[1] == ()
    clock.now += 10
    s2.on_offers([offer(3, "a"), offer(4, "b")])
    assert d2.launched() == []
    s2.on_status(TaskStatus(ids["web-0"], "TASK_RUNNING", "a"))
    s2.on_status(TaskStatus(ids["web-1"], "TASK_LOST", "b", "REASON_RECONCILIATION"))
    assert s2.instances["web-0"].phase == Phase.RUNNING and s2.instances["web-0"].task_id == ids["web-0"]
    clock.now += 5
    s2.tick()
    s2.on_offers([offer(5, "a"), offer(6, "b")])
    assert [t["name"] for t in d2.launched()] == ["web-1"]


def test_a_task_no_wanted_instance_owns_is_killed(tmp_path: Path, clock: FakeClock) -> None:
    """A RUNNING update (e.g. implicit reconciliation) for an unknown task id gets a KILL."""
    d = FakeDriver()
    s = registered(tmp_path, clock, d)
    s.on_status(TaskStatus("web-0.deadbeef", "TASK_RUNNING", "a"))
    assert d.named("kill") == ["web-0.deadbeef"]


def test_silent_reconciliation_is_asked_again(tmp_path: Path, clock: FakeClock) -> None:
    """A RECONCILING task without an answer is reconciled again after reconcile_retry_s."""
    d = FakeDriver()
    s = registered(tmp_path, clock, d)
    s.create(web(1))
    s.on_offers([offer(1, "a")])
    s.on_registered("fw-1")
    task = s.instances["web-0"].task_id
    clock.now += Timings().reconcile_retry_s
    s.tick()
    assert d.named("reconcile").count((task,)) == 2
