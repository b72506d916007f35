"""The scheduler's connection to the Mesos master: the one scheduler-side module that imports
pymesos (its executor side is :mod:`vm_isolation.mesos`, imported first for its fixes of
pymesos's import-time side effects).

Why pymesos's ``MesosSchedulerDriver`` rather than our own v1 HTTP client: it already speaks the
v1 scheduler API (SUBSCRIBE stream with RecordIO framing, Mesos-Stream-Id, redirects to the
leading master, ``zk://`` master detection through kazoo) and it is a dependency already. Its
callbacks run on its IO thread; each one here only decodes its JSON into our frozen values
and posts an event (a callable) to the service's loop, so the IO thread never blocks on our
decisions. Calls the other way (launch, decline, kill, ...) are plain HTTP POSTs on pymesos's
second connection, sent in order by one sender thread so that the scheduler's loop never waits
on the master; a failed call is logged and dropped: the scheduler's timers and reconciliation
repair whatever it would have done.

NOTE: pymesos reports the first SUBSCRIBED as ``registered`` only if it had no framework id;
with a stored id (re-registration after a restart) it calls ``reregistered`` without one, so
both read ``driver.framework_id``. ``stop(failover=False)`` sends TEARDOWN (every task is
killed): this adapter stops with ``failover=True`` unless asked to tear down (vm-isolation-run).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Optional

from pymesos import MesosSchedulerDriver, Scheduler

from .. import mesos as _executor_binding  # noqa: F401  (undoes pymesos's import-time side effects)
from .instances import TaskStatus, decode_status
from .placement import Offer, decode_offer

log = logging.getLogger(__name__)
STOP_DRAIN_S = 15.0


class _Callbacks(Scheduler):  # type: ignore[misc]  # pymesos ships no types
    def __init__(self, post: Callable[[str, Any], None]) -> None:
        self._post = post

    def registered(self, driver: Any, framework_id: Any, master_info: Any) -> None:
        self._post("registered", str(framework_id["value"]))

    def reregistered(self, driver: Any, master_info: Any) -> None:
        self._post("registered", str(driver.framework_id))

    def disconnected(self, driver: Any) -> None:
        self._post("disconnected", None)

    def resourceOffers(self, driver: Any, offers: list[Any]) -> None:  # noqa: N802 (pymesos's name)
        decoded: list[Offer] = []
        for raw in offers:
            try:
                decoded.append(decode_offer(raw))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("ignoring an offer we cannot read (%r): %s", exc, str(raw)[:300])
        self._post("offers", decoded)

    def offerRescinded(self, driver: Any, offer_id: Any) -> None:  # noqa: N802
        log.debug("offer %s rescinded", offer_id)

    def statusUpdate(self, driver: Any, status: Any) -> None:  # noqa: N802
        try:
            decoded: TaskStatus = decode_status(status)
        except (KeyError, TypeError) as exc:
            log.warning("ignoring a status update we cannot read (%r): %s", exc, str(status)[:300])
            return
        self._post("status", decoded)

    def slaveLost(self, driver: Any, agent_id: Any) -> None:  # noqa: N802
        self._post("agent_lost", str(agent_id.get("value", "")))

    def executorLost(self, driver: Any, executor_id: Any, agent_id: Any, status: Any) -> None:  # noqa: N802
        log.info("executor %s on agent %s ended (%s)", executor_id.get("value"), agent_id.get("value"), status)

    def error(self, driver: Any, message: str) -> None:
        self._post("error", str(message))

    def frameworkMessage(self, driver: Any, executor_id: Any, agent_id: Any, data: Any) -> None:  # noqa: N802
        pass


class MesosDriver:
    """:class:`~vm_isolation.scheduler.core.Driver` through pymesos's scheduler driver."""

    def __init__(self, master: str, framework_info: dict[str, Any], post: Callable[[str, Any], None],
                 framework_id: Optional[str] = None) -> None:
        info = dict(framework_info)
        if framework_id:
            info["id"] = {"value": framework_id}
        self._driver = MesosSchedulerDriver(_Callbacks(post), info, master, use_addict=False,
                                            implicit_acknowledgements=True)
        self._calls: queue.Queue[Optional[tuple[str, Callable[[], Any]]]] = queue.Queue()
        self._sender = threading.Thread(target=self._send_calls, name="mesos-calls", daemon=True)

    def start(self) -> None:
        self._sender.start()
        self._driver.start()

    def stop(self, *, teardown: bool = False) -> None:
        """Send what is queued, then disconnect, leaving the framework (and its tasks) to its
        failover timeout; with ``teardown`` the framework is removed and its tasks are killed
        (one-off runs)."""
        self._calls.put(None)
        if self._sender.is_alive():
            self._sender.join(STOP_DRAIN_S)
        self._driver.stop(failover=not teardown)
        self._driver.join()

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        # NOTE: each pymesos call is a blocking HTTP POST (10 s timeout) to the master; a
        # loaded master would stall the scheduler's loop (and its API) call after call. They
        # go, in order, through one sender thread instead; the loop only queues them.
        self._calls.put((what, lambda: fn(*args, **kwargs)))

    def _send_calls(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            what, call = item
            try:
                call()
            except Exception as exc:  # noqa: BLE001  (pymesos raises bare RuntimeError/OSError/AssertionError)
                log.warning("%s failed (the scheduler retries through its timers): %s", what, exc)

    def launch(self, offer_id: str, tasks: list[dict[str, Any]]) -> None:
        self._call("launch", self._driver.launchTasks, [{"value": offer_id}], tasks, filters={"refuse_seconds": 1.0})

    def decline(self, offer_ids: list[str], refuse_s: float) -> None:
        self._call("decline", self._driver.declineOffer, [{"value": o} for o in offer_ids],
                   filters={"refuse_seconds": refuse_s})

    def kill(self, task_id: str, agent_id: str) -> None:
        # NOTE: pymesos's killTask sends only the task id; the master finds the agent itself.
        self._call(f"kill {task_id}", self._driver.killTask, {"value": task_id})

    def reconcile(self, tasks: list[tuple[str, str]]) -> None:
        # NOTE: pymesos's reconcileTasks drops agent_id; the master then looks the task up itself
        # (and answers TASK_LOST for a task it does not know).
        self._call("reconcile", self._driver.reconcileTasks, [{"task_id": {"value": t}} for t, _ in tasks])

    def suppress(self) -> None:
        self._call("suppress", self._driver.suppressOffers)

    def revive(self) -> None:
        self._call("revive", self._driver.reviveOffers)
