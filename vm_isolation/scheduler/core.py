"""The scheduler's decisions: desired groups vs. the tasks it has, on one thread.

:class:`InstanceScheduler` is driven by events — (re)registered, disconnected, offers, a status
update, an agent lost, a timer tick, an API call — and answers with calls on a small
:class:`Driver` port (launch, decline, kill, reconcile, suppress, revive). It never blocks and
never sleeps; time comes from an injected clock, so the whole machine is unit-tested on a fake
driver and a fake clock.

The rules that make it safe to kill and restart at any moment:

* a task is written to the store *before* its launch is sent (like guest.py's journal);
* after (re)registering, every recorded task that may be alive is RECONCILING and is asked
  about explicitly; its instance is not launched again until the master answered;
* an implicit reconciliation, and every status update, shows tasks the master has for this
  framework: one that is not the current task of a wanted instance is killed;
* relaunches after a terminal status wait ``backoff_s(attempts)``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence

from ..waiting import Clock
from .hooks import Hooks, NoHooks
from .instances import AGENT_GONE_REASONS, Instance, Phase, TaskStatus, Timings, backoff_s
from .model import GroupSpec, InvalidSpec, split_instance
from .placement import Need, Offer, place, qualifies
from .store import GroupRecord, Store
from .taskinfo import ExecutorCommand, identity_env, new_task_id, task_info

log = logging.getLogger(__name__)


class Driver(Protocol):
    """What the scheduler asks of Mesos (see :mod:`.mesos_driver`)."""

    def launch(self, offer_id: str, tasks: list[dict[str, Any]]) -> None: ...
    def decline(self, offer_ids: list[str], refuse_s: float) -> None: ...
    def kill(self, task_id: str, agent_id: str) -> None: ...
    def reconcile(self, tasks: list[tuple[str, str]]) -> None: ...
    def suppress(self) -> None: ...
    def revive(self) -> None: ...


class NotFound(LookupError):
    """No such group."""


class Conflict(Exception):
    """The request contradicts what is declared (the message says what to do)."""


@dataclass(frozen=True)
class CreateResult:
    created: bool
    message: str


class InstanceScheduler:
    def __init__(self, store: Store, driver: Driver, clock: Clock, executor: ExecutorCommand, *,
                 required: Optional[dict[str, str]] = None, timings: Optional[Timings] = None,
                 hooks: Optional[Hooks] = None) -> None:
        self.store, self.driver, self.clock, self.executor = store, driver, clock, executor
        self.required = dict(required if required is not None else {"vt_enabled": "1"})
        self.timings = timings or Timings()
        self.hooks: Hooks = hooks or NoHooks()
        self.groups: dict[str, GroupRecord] = store.groups()
        self.instances: dict[str, Instance] = {}
        self.registered = False
        self.registered_at = 0.0
        self.suppressed = False
        self.framework_id = store.framework_id()
        self.known_agents: dict[str, tuple[float, float, float]] = {}
        """Qualifying agents seen lately: id -> (free cpus, free mem, when seen)."""
        self.orphans_killed: dict[str, float] = {}
        """Task ids killed because no wanted instance owns them -> when the kill was sent."""
        self.launches = 0
        self.implicit_at = 0.0
        for record in store.tasks().values():
            group, ordinal = split_instance(record.instance)
            phase = Phase.PENDING if record.phase == Phase.PENDING else Phase.RECONCILING
            self.instances[record.instance] = Instance(record.instance, group, ordinal, phase, record.task_id,
                                                       record.agent_id)

    # --- driver events ----------------------------------------------------------------------
    def on_registered(self, framework_id: str) -> None:
        now = self.clock.monotonic()
        if framework_id != self.framework_id:
            log.info("registered as framework %s", framework_id)
            self.store.set_framework_id(framework_id)
            self.framework_id = framework_id
        self.registered, self.registered_at, self.suppressed = True, now, False
        for inst in self.instances.values():
            if inst.phase in (Phase.LAUNCHING, Phase.STARTING, Phase.RUNNING):
                inst.phase = Phase.RECONCILING  # anything may have happened while we were away
        self._reconcile([i for i in self.instances.values() if i.phase == Phase.RECONCILING], now)
        self.driver.reconcile([])  # implicit: tasks the master has that we do not know of
        self.implicit_at = now
        self.converge()

    def on_disconnected(self) -> None:
        self.registered = False

    def on_agent_lost(self, agent_id: str) -> None:
        self.known_agents.pop(agent_id, None)

    def on_offers(self, offers: Sequence[Offer]) -> None:
        now = self.clock.monotonic()
        for o in offers:
            if qualifies(o.attributes, self.required):
                self.known_agents[o.agent_id] = (o.cpus, o.mem, now)
        needs = self._needs(now) if self.registered and now >= self.registered_at + self.timings.settle_s else []
        placements = place(needs, offers, self.required, self._counts(), self._known_free(now)) if needs else []
        by_offer: dict[str, list[str]] = {}
        for p in placements:
            by_offer.setdefault(p.offer_id, []).append(p.instance)
        t = self.timings
        unused: dict[float, list[str]] = {}  # refuse_seconds -> offer ids declined with it
        for o in offers:
            if o.id in by_offer:
                self._launch(o, by_offer[o.id], now)
                continue
            if not qualifies(o.attributes, self.required):
                refuse = t.refuse_unusable_s
            else:
                refuse = t.refuse_busy_s if self._wants_offers(now) else t.refuse_idle_s
            unused.setdefault(refuse, []).append(o.id)
        for refuse, ids in unused.items():
            self.driver.decline(ids, refuse)
        self.converge()

    def on_status(self, status: TaskStatus) -> None:
        now = self.clock.monotonic()
        inst = next((i for i in self.instances.values() if i.task_id == status.task_id and i.live), None)
        if inst is None:
            if not status.terminal:
                self._kill_orphan(status.task_id, status.agent_id, now)
            return
        if status.reason in AGENT_GONE_REASONS:
            self.known_agents.pop(inst.agent_id, None)
        inst.last_state, inst.message = status.state, status.message
        if status.terminal:
            self._ended(inst, status, now)
        elif status.state == "TASK_RUNNING":
            if inst.phase != Phase.KILLING:
                if inst.phase != Phase.RUNNING:
                    self.hooks.on_running(inst.name, inst.task_id, inst.agent_id)
                self._set_phase(inst, Phase.RUNNING)
                inst.attempts = 0
        elif status.state in ("TASK_STAGING", "TASK_STARTING") and inst.phase != Phase.KILLING:
            self._set_phase(inst, Phase.STARTING)  # (TASK_KILLING changes nothing: the end follows)
        if status.agent_id and not inst.agent_id:
            inst.agent_id = status.agent_id
        self.converge()

    def tick(self) -> None:
        """Timers: retry reconciliation and kills, ask about launches that stay silent."""
        now = self.clock.monotonic()
        if self.registered:
            t = self.timings
            stale = [i for i in self.instances.values()
                     if (i.phase == Phase.RECONCILING and now - i.last_sent_at >= t.reconcile_retry_s)
                     or (i.phase == Phase.LAUNCHING and now - i.last_sent_at >= t.launch_timeout_s)]
            self._reconcile(stale, now)
            for inst in self.instances.values():
                if inst.phase == Phase.KILLING and now - inst.last_sent_at >= t.kill_retry_s:
                    self.driver.kill(inst.task_id, inst.agent_id)
                    inst.last_sent_at = now
            if now - self.implicit_at >= t.implicit_reconcile_s:
                self.driver.reconcile([])
                self.implicit_at = now
        self.converge()

    # --- API ----------------------------------------------------------------------------------
    def create(self, spec: GroupSpec) -> CreateResult:
        existing = self.groups.get(spec.name)
        if existing is not None:
            if existing.deleting:
                raise Conflict(f"group {spec.name} is being deleted; create it again once GET says 404")
            if existing.spec == spec:
                return CreateResult(False, f"group {spec.name} already exists as declared: nothing changed")
            if existing.spec.same_declaration(spec):
                raise Conflict(f"group {spec.name} exists with count {existing.spec.count}; "
                               f"PATCH /v1/instances/{spec.name} {{\"count\": {spec.count}}} to scale it")
            raise Conflict(f"group {spec.name} exists with a different declaration; DELETE it first")
        self._put_group(GroupRecord(spec))
        self.converge()
        return CreateResult(True, f"group {spec.name} created: {', '.join(spec.instance_names())}")

    def scale(self, name: str, count: int) -> CreateResult:
        record = self._group(name)
        if record.deleting:
            raise Conflict(f"group {name} is being deleted")
        if count == 0:
            raise InvalidSpec("count must be at least 1 (DELETE removes a group)")
        if record.spec.count == count:
            return CreateResult(False, f"group {name} already has count {count}: nothing changed")
        spec = dataclasses.replace(record.spec, count=count)
        self._put_group(GroupRecord(spec))
        self.converge()
        return CreateResult(True, f"group {name} scaled from {record.spec.count} to {count}")

    def delete(self, name: str) -> CreateResult:
        record = self._group(name)
        if not record.deleting:
            self._put_group(GroupRecord(record.spec, deleting=True))
        self.converge()
        return CreateResult(not record.deleting, f"group {name} is being deleted: its tasks are killed")

    def describe(self, name: Optional[str] = None) -> Any:
        if name is not None:
            return self._describe(self._group(name))
        return {"framework_id": self.framework_id, "registered": self.registered,
                "groups": [self._describe(g) for g in self.groups.values()]}

    # --- the convergence step -------------------------------------------------------------
    def converge(self) -> None:
        now = self.clock.monotonic()
        wanted = self._wanted()
        for name, (group, ordinal) in wanted.items():
            if name not in self.instances:
                self.instances[name] = Instance(name, group, ordinal)
        for inst in list(self.instances.values()):
            if inst.name in wanted:
                continue
            if inst.phase == Phase.PENDING:
                self.store.remove_task(inst.name)
                del self.instances[inst.name]
            elif inst.phase != Phase.KILLING and self.registered:
                self._set_phase(inst, Phase.KILLING)
                self.driver.kill(inst.task_id, inst.agent_id)
                inst.last_sent_at = now
        for record in list(self.groups.values()):
            if record.deleting and not any(i.group == record.spec.name for i in self.instances.values()):
                self.store.remove_group(record.spec.name)
                del self.groups[record.spec.name]
                log.info("group %s deleted", record.spec.name)
        if self.registered:
            wants = self._wants_offers(now)
            if wants and self.suppressed:
                self.driver.revive()
                self.suppressed = False
            elif not wants and not self.suppressed:
                self.driver.suppress()
                self.suppressed = True

    # --- helpers -------------------------------------------------------------------------
    def _wanted(self) -> dict[str, tuple[str, int]]:
        return {f"{r.spec.name}-{i}": (r.spec.name, i)
                for r in self.groups.values() if not r.deleting for i in range(r.spec.count)}

    def _wants_offers(self, now: float) -> bool:
        """Something waits for a place now, or its back-off ends within a second."""
        wanted = self._wanted()
        return any(i.phase == Phase.PENDING and i.name in wanted and i.not_before <= now + 1.0
                   for i in self.instances.values())

    def _needs(self, now: float) -> list[Need]:
        wanted = self._wanted()
        pending = sorted((i for i in self.instances.values()
                          if i.phase == Phase.PENDING and i.name in wanted and i.not_before <= now),
                         key=lambda i: (i.group, i.ordinal))
        return [Need(i.name, self.groups[i.group].spec.component, self.groups[i.group].spec.cpus,
                     self.groups[i.group].spec.mem) for i in pending]

    def _counts(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for i in self.instances.values():
            if i.live and i.phase != Phase.KILLING and i.agent_id and i.group in self.groups:
                key = (i.agent_id, self.groups[i.group].spec.component)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def _known_free(self, now: float) -> dict[str, tuple[float, float]]:
        ttl = self.timings.known_agent_ttl_s
        return {a: (c, m) for a, (c, m, seen) in self.known_agents.items() if now - seen <= ttl}

    def _launch(self, offer: Offer, names: list[str], now: float) -> None:
        tasks = []
        for name in names:
            inst = self.instances[name]
            spec = self.groups[inst.group].spec
            inst.task_id, inst.agent_id = new_task_id(name), offer.agent_id
            inst.last_state, inst.message = "", ""
            env = self.hooks.before_launch(spec, inst.ordinal, identity_env(spec, inst.ordinal))
            tasks.append(task_info(spec, inst.ordinal, inst.task_id, offer.agent_id, self.executor, env))
            self._set_phase(inst, Phase.LAUNCHING)  # journaled before the launch is sent
            inst.last_sent_at = now
            need = Need(name, spec.component, spec.cpus, spec.mem)
            cpus, mem, seen = self.known_agents.get(offer.agent_id, (offer.cpus, offer.mem, now))
            self.known_agents[offer.agent_id] = (cpus - need.total_cpus, mem - need.total_mem, seen)
            log.info("launching %s as task %s on agent %s (%s)", name, inst.task_id, offer.agent_id, offer.hostname)
        self.launches += len(tasks)
        self.driver.launch(offer.id, tasks)

    def _ended(self, inst: Instance, status: TaskStatus, now: float) -> None:
        log.info("%s: task %s ended %s %s %s", inst.name, inst.task_id, status.state, status.reason, status.message)
        if inst.phase != Phase.KILLING:
            if status.state == "TASK_FINISHED":
                self.hooks.on_finished(inst.name, inst.task_id, status.state, status.message)
            else:
                self.hooks.on_lost(inst.name, inst.task_id, status.state, status.message)
        inst.attempts += 1
        inst.not_before = now + backoff_s(inst.attempts, self.timings)
        self._set_phase(inst, Phase.PENDING)

    def _reconcile(self, instances: list[Instance], now: float) -> None:
        if not instances:
            return
        self.driver.reconcile([(i.task_id, i.agent_id) for i in instances])
        for i in instances:
            i.last_sent_at = now

    def _kill_orphan(self, task_id: str, agent_id: str, now: float) -> None:
        last = self.orphans_killed.get(task_id)
        if last is None or now - last >= self.timings.kill_retry_s:
            log.warning("killing task %s on agent %s: no wanted instance owns it", task_id, agent_id)
            self.driver.kill(task_id, agent_id)
            self.orphans_killed[task_id] = now

    def _set_phase(self, inst: Instance, phase: Phase) -> None:
        if inst.phase == phase and phase != Phase.LAUNCHING:
            return
        inst.phase = phase
        record = inst.record()
        if record is not None:
            self.store.put_task(record)

    def _put_group(self, record: GroupRecord) -> None:
        self.store.put_group(record)
        self.groups[record.spec.name] = record

    def _group(self, name: str) -> GroupRecord:
        record = self.groups.get(name)
        if record is None:
            raise NotFound(f"no group {name}")
        return record

    def _describe(self, record: GroupRecord) -> dict[str, Any]:
        members = sorted((i for i in self.instances.values() if i.group == record.spec.name),
                         key=lambda i: i.ordinal)
        return {**record.spec.to_json(), "deleting": record.deleting, "instances": [i.to_json() for i in members]}
