"""The executor's connection to its Mesos agent: the only module that imports pymesos.

pymesos 0.3.15 does the v1 executor HTTP API's streaming part for us: the SUBSCRIBE
connection, its chunked RecordIO framing, the IO thread. Its defects are fixed here, so
that none of them reaches the executor. Each override below says which defect it fixes:

* import: installs a process-wide SIGINT handler, configures its own log handler, and makes
  its IO thread ``_thread.interrupt_main()`` on any error. Undone/rerouted at our import.
* ``MESOS_CHECKPOINT="0"`` is read as *on* (``bool("0")``); its constructor reads
  ``os.environ`` itself. We configure it from :class:`~vm_isolation.config.MesosEnvironment`.
* reconnection ignores checkpointing, ``MESOS_SUBSCRIPTION_BACKOFF_MAX`` and
  ``MESOS_RECOVERY_TIMEOUT``. We decide in ``on_close``.
* sent updates are never tracked, so ``unacknowledged_updates`` is always empty; an update
  sent while disconnected raises and is lost. We keep a ledger and an outbox.
* SHUTDOWN (and any close without checkpointing) arms a thread that SIGKILLs our own
  process group after the grace period (0 s when unset), and drops the connection before
  the final updates are acknowledged. We hand SHUTDOWN to the executor instead.
* KILL drops ``kill_policy``; assertions on agent input kill the IO thread.

Usage::

    connection = AgentConnection(mesos_environment(), events)
    connection.start()
    ...                                  # events arrive on the IO thread
    uuid = connection.send_update(task_id, "TASK_FINISHED")
    connection.wait_acknowledged(uuid, timeout_s=60)
    connection.stop(); connection.join(5)

Importing this module must happen on the main thread (pymesos calls ``signal.signal``).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import random
import signal
import sys
import threading
from typing import Any, Callable, Mapping, NoReturn, Optional

import pymesos
import pymesos.process as pymesos_process
from pymesos import MesosExecutorDriver

from .agent_protocol import (
    CallRefused,
    ExecutorEvents,
    JsonDict,
    Outbox,
    Subscribed,
    UpdateLedger,
    decode_uuid,
    deliver_updates,
    kill_grace_s,
    new_status,
    parse_subscribed,
    reconnect_delay_s,
)
from .config import MesosEnvironment
from .waiting import SYSTEM_CLOCK, Clock, Deadline

__all__ = ["AgentConnection", "ExecutorEvents", "Subscribed"]

logger = logging.getLogger(__name__)

API_PATH = "/api/v1/executor"
# pymesos gives up connecting after its own `timeout` and formats that deadline with
# time.localtime (so it must be finite). We enforce MESOS_RECOVERY_TIMEOUT ourselves.
_PYMESOS_CONNECT_DEADLINE_S = 10 * 365 * 86400.0


# --- what `import pymesos` did to the process -----------------------------------------------

_io_owner = threading.local()
"""The :class:`_Driver` whose pymesos IO thread is the current thread."""


class _IoThreadCrash:
    """Stands in for the ``_thread`` module inside ``pymesos.process``.

    NOTE: when anything raises in pymesos's IO loop, it stores the exception in a global and
    calls ``_thread.interrupt_main()``: a KeyboardInterrupt in our main thread, wherever it
    is. This reports it to the connection that owns the thread instead.
    """

    @staticmethod
    def interrupt_main() -> None:
        exc = sys.exc_info()[1]  # called inside pymesos's `except Exception:` block
        pymesos_process._exc_info = None  # nothing left for its SIGINT handler to re-raise
        driver = getattr(_io_owner, "driver", None)
        if isinstance(driver, _Driver):
            driver.io_thread_died(exc)
        else:
            logger.error("a pymesos IO thread we do not own died: %r", exc)


class _AgentConnection(pymesos_process.Connection):  # type: ignore[misc]
    """pymesos's connection, for our driver: a 404 to SUBSCRIBE is a close, not a crash.

    NOTE: pymesos raises on any status but 200, 307 and 503, which ends its IO thread (and so,
    for us, the agent is lost and every guest destroyed). A real agent SIGKILLed and restarted
    answers 404 until its executor API is routed (seen at restart 10 of 10 in
    tests/mesos/test_lifecycle.py): like its 503 during recovery, that is a re-subscription
    with back-off, within MESOS_RECOVERY_TIMEOUT (our on_close).
    """

    def read(self) -> bool:
        try:
            return bool(super().read())
        except RuntimeError as exc:
            if isinstance(self._callback, _Driver) and str(exc).startswith("Failed with HTTP 404"):
                logger.warning("the agent answered 404 to SUBSCRIBE (restarting, its executor API not "
                               "routed yet): retrying")
                return False
            raise


_PYMESOS_CHATTER = ("Remote %s closed", "connect to %s error", "Master is not available")
"""pymesos.process messages about routine disconnections: ERROR/WARNING there, DEBUG here."""


def _demote_chatter(record: logging.LogRecord) -> bool:
    """Logging filter: pymesos's per-attempt connection messages become DEBUG (we log our own)."""
    if isinstance(record.msg, str) and record.msg.startswith(_PYMESOS_CHATTER):
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        # The logger's level was checked before its filters ran: check again for DEBUG.
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
    return True


def _undo_pymesos_import_side_effects() -> None:
    """Give the process back its SIGINT handler and logging, and reroute IO-thread crashes.

    Idempotent; runs once at our import.
    """
    # NOTE: pymesos/__init__.py adds a stderr handler to the "pymesos" logger and sets it to
    # INFO at import. Logging is configured by our CLI only.
    pymesos_logger = logging.getLogger("pymesos")
    handler = getattr(pymesos, "handler", None)
    if handler is not None:
        pymesos_logger.removeHandler(handler)
    pymesos_logger.setLevel(logging.NOTSET)
    process_logger = logging.getLogger(pymesos_process.__name__)
    if _demote_chatter not in process_logger.filters:
        process_logger.addFilter(_demote_chatter)
    # NOTE: pymesos/process.py replaces the SIGINT handler at import with one that re-raises
    # IO-thread exceptions in the main thread; it kept the previous one in _prev_handler.
    if signal.getsignal(signal.SIGINT) is pymesos_process._handle_sigint:
        previous = pymesos_process._prev_handler
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    pymesos_process.thread = _IoThreadCrash
    pymesos_process.Connection = _AgentConnection


_undo_pymesos_import_side_effects()


# --- the driver (pymesos's IO thread) -------------------------------------------------------


class _Driver(MesosExecutorDriver):  # type: ignore[misc]  # pymesos ships no types
    """pymesos's executor driver with its defects overridden.

    Every ``on_*`` method and ``gen_request`` runs on pymesos's IO thread; the events they
    produce go to the executor's :class:`ExecutorEvents`.
    """

    def __init__(
        self,
        env: MesosEnvironment,
        events: ExecutorEvents,
        ledger: UpdateLedger,
        outbox: Outbox,
        *,
        clock: Clock,
        rng: Callable[[], float],
        http_timeout_s: float,
    ) -> None:
        # NOTE: MesosExecutorDriver.__init__ reads os.environ itself and parses MESOS_CHECKPOINT
        # as bool(string), so "0" is on. We skip it and set the same attributes from `env`.
        pymesos_process.Process.__init__(self, master=env.agent_endpoint, timeout=_PYMESOS_CONNECT_DEADLINE_S)
        self.framework_id = {"value": env.framework_id}
        self.executor_id = {"value": env.executor_id}
        self.grace_shutdown_period = env.shutdown_grace_period_s
        self.checkpoint = env.checkpoint
        self.local = False
        self.executor = None  # pymesos's Executor interface is unused: see self._events
        self.framework_info = None
        self.executor_info = None
        self.tasks: dict[str, JsonDict] = {}  # unused: self._ledger tracks them
        self.updates: dict[bytes, JsonDict] = {}  # unused: self._ledger tracks them
        self._conn = None
        self._dict_cls = dict
        self._http_timeout = http_timeout_s
        self._env = env
        self._events = events
        self._ledger = ledger
        self._outbox = outbox
        self._clock = clock
        self._rng = rng
        token = env.variables.get("MESOS_EXECUTOR_AUTHENTICATION_TOKEN", "")
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._stopping = threading.Event()
        self._lost = False
        self._carried: frozenset[bytes] = frozenset()  # updates in the last SUBSCRIBE
        self._disconnected_at: Optional[float] = None
        self._attempt = 0
        self.agent_id = env.agent_id

    # -- lifecycle ---------------------------------------------------------------------------

    def _run(self) -> None:
        _io_owner.driver = self  # lets _IoThreadCrash find the owner of this thread
        super()._run()

    def stop(self) -> None:
        """End the IO thread and the sender (we stop, or the agent is lost)."""
        self._stopping.set()  # also cuts short a reconnection wait in on_close
        super().stop()
        left = self._outbox.close()
        if left:
            logger.warning("stopping with %d status update(s) the agent never received", left)

    def _delay_kill(self) -> None:
        # NOTE: pymesos's version SIGKILLs our whole process group after the grace period.
        logger.debug("not arming pymesos's SIGKILL of our process group")

    def _backoff(self, num_conn_retry: int) -> float:
        # NOTE: pymesos's time.sleep()s 2-15 s after failed connects only; on_close waits instead.
        return 0.0

    def io_thread_died(self, exc: Optional[BaseException]) -> None:
        if not self._stopping.is_set():
            self._lose_agent(f"the connection to the agent failed: {exc!r}")

    def _lose_agent(self, reason: str) -> None:
        if self._lost:
            return
        self._lost = True
        logger.error("agent at %s lost: %s", self._env.agent_endpoint, reason)
        self.stop()
        try:
            self._events.on_agent_lost(reason)
        except Exception:
            logger.exception("on_agent_lost raised")

    # -- the SUBSCRIBE stream ----------------------------------------------------------------

    def gen_request(self) -> bytes:
        # NOTE: pymesos never records sent updates, so its SUBSCRIBE always carries
        # unacknowledged_updates=[]; it also counts Content-Length in characters and cannot
        # send an Authorization header.
        tasks, updates = self._ledger.pending()
        self._carried = frozenset(raw for raw, _ in updates)
        body = json.dumps({
            "type": "SUBSCRIBE",
            "framework_id": self.framework_id,
            "executor_id": self.executor_id,
            "subscribe": {
                "unacknowledged_tasks": tasks,
                "unacknowledged_updates": [{"status": status} for _, status in updates],
            },
        }).encode("utf-8")
        headers = {
            "Host": self.master,
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Connection": "close",
            "Content-Length": str(len(body)),
            **self._auth,
        }
        head = f"POST {API_PATH} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if not self._stopping.is_set():  # pymesos opens one more connection after a stop
            logger.info("subscribing (%d unacknowledged tasks, %d updates)", len(tasks), len(updates))
        return (head + "\r\n").encode("ascii") + body

    def on_close(self) -> None:
        # NOTE: pymesos re-subscribes at once after any close, also without checkpointing
        # (it parses MESOS_CHECKPOINT="0" as on; when off it SIGKILLs its process group), and
        # backs off only after failed TCP connects, ignoring MESOS_SUBSCRIPTION_BACKOFF_MAX
        # and MESOS_RECOVERY_TIMEOUT. Here, as in Mesos's own executor library: no
        # checkpointing -> agent lost; else retry, backoff bounded, until the recovery timeout.
        self._outbox.disconnected()
        if self._stopping.is_set() or self._lost:
            return
        if not self.checkpoint:
            self._lose_agent("the agent closed the connection, and without checkpointing "
                             "(MESOS_CHECKPOINT=0) an executor must not reconnect")
            return
        now = self._clock.monotonic()
        if self._disconnected_at is None:
            self._disconnected_at = now
            logger.warning("disconnected from the agent; re-subscribing for up to %.0fs",
                           self._env.recovery_timeout_s)
        left = self._env.recovery_timeout_s - (now - self._disconnected_at)
        if left <= 0:
            self._lose_agent(f"could not re-subscribe within MESOS_RECOVERY_TIMEOUT "
                             f"({self._env.recovery_timeout_s:g}s)")
            return
        delay = min(left, reconnect_delay_s(self._attempt, self._env.subscription_backoff_max_s, self._rng))
        self._attempt += 1
        # NOTE: this blocks pymesos's IO thread, which has nothing else to do while disconnected.
        self._stopping.wait(delay)

    def on_event(self, event: JsonDict) -> None:
        # NOTE: an exception from an event handler aborts pymesos's IO thread. A malformed
        # event or a bug in a callback must cost that event only, not the connection.
        try:
            super().on_event(event)
        except Exception:
            logger.exception("dropped a %s event", event.get("type", "malformed"))

    def on_subscribed(self, payload: JsonDict) -> None:
        # NOTE: pymesos asserts the IDs (killing its IO thread when they differ).
        info = parse_subscribed(payload)
        got = (info.executor_info.get("executor_id"), info.framework_info.get("id"))
        if got != (self.executor_id, self.framework_id):
            self._lose_agent(f"SUBSCRIBED for executor/framework {got}, but we are "
                             f"{(self.executor_id, self.framework_id)}")
            return
        self._disconnected_at, self._attempt = None, 0
        self.agent_id = info.agent_id or self.agent_id
        self._outbox.subscribed(self._carried)
        logger.info("subscribed to agent %s (container %s)", self.agent_id, info.container_id)
        self._events.on_subscribed(info)

    def on_launch(self, payload: JsonDict) -> None:
        # NOTE: pymesos asserts that the task ID is new (killing its IO thread). A repeated ID
        # keeps its first TaskInfo in the ledger and still goes to the executor, which decides.
        task = payload["task"]
        self._ledger.launched(task)
        self._events.on_launch(task)

    def on_launch_group(self, payload: JsonDict) -> None:
        tasks: list[JsonDict] = payload["task_group"]["tasks"]
        for task in tasks:
            self._ledger.launched(task)
        self._events.on_launch_group(tasks)

    def on_kill(self, payload: JsonDict) -> None:
        # NOTE: pymesos passes only the task ID and drops the kill policy.
        self._events.on_kill(str(payload["task_id"]["value"]), kill_grace_s(payload))

    def on_acknowledged(self, payload: JsonDict) -> None:
        # NOTE: pymesos pops uuid.UUID keys from a dict it never fills.
        self._ledger.acknowledged(str(payload["task_id"]["value"]), decode_uuid(payload["uuid"]))

    def on_message(self, payload: JsonDict) -> None:
        self._events.on_message(base64.b64decode(payload["data"]))  # pymesos passes base64 text

    def on_error(self, payload: JsonDict) -> None:
        self._events.on_error(str(payload["message"]))

    def on_shutdown(self) -> None:
        # NOTE: pymesos arms _delay_kill and abort()s the connection, so the ACKs of the
        # executor's final updates would never arrive. The executor tears down, then stops us.
        logger.info("SHUTDOWN from the agent (grace period %.1fs)", self._env.shutdown_grace_period_s)
        self._events.on_shutdown()

    # -- calls -------------------------------------------------------------------------------

    def _send(self, body: JsonDict, path: str = API_PATH, method: str = "POST",
              headers: Optional[dict[str, str]] = None) -> JsonDict:
        # NOTE: pymesos's _send holds the Process lock, which its IO thread also takes, for
        # the whole HTTP exchange; reuses a connection the agent may have closed; shares a
        # mutable default `headers`; and refuses to send before the stream is up. One short
        # connection per call instead; raises OSError, HTTPException or CallRefused.
        host, _, port = self.master.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=self._http_timeout)
        try:
            conn.request(method, path, body=json.dumps(body).encode("utf-8"),
                         headers={"Content-Type": "application/json", **self._auth, **(headers or {})})
            response = conn.getresponse()
            text = response.read().decode("utf-8", "replace")
        finally:
            conn.close()
        if not 200 <= response.status < 300:
            raise CallRefused(response.status, text)
        return {}

    def sendStatusUpdate(self, status: JsonDict) -> NoReturn:
        raise NotImplementedError("use AgentConnection.send_update: it tracks and retries updates")

    def post_update(self, status: JsonDict) -> None:
        """POST one UPDATE call; raises like :meth:`_send`."""
        self._send({"type": "UPDATE", "framework_id": self.framework_id,
                    "executor_id": self.executor_id, "update": {"status": status}})


# --- the public face ------------------------------------------------------------------------


class AgentConnection:
    """This executor's connection to its Mesos agent (v1 executor HTTP API).

    Owns two daemon threads: pymesos's IO thread, which reads the SUBSCRIBE stream and runs
    every :class:`ExecutorEvents` callback, and a sender that delivers status updates in the
    order they were sent. Start once; :meth:`stop` ends both.
    """

    def __init__(
        self,
        env: MesosEnvironment,
        events: ExecutorEvents,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: Callable[[], float] = random.random,
        http_timeout_s: float = 10.0,
    ) -> None:
        self._env = env
        self._rng = rng
        self._ledger = UpdateLedger(clock)
        self._outbox = Outbox()
        self._driver = _Driver(env, events, self._ledger, self._outbox,
                               clock=clock, rng=rng, http_timeout_s=http_timeout_s)
        self._sender = threading.Thread(
            target=deliver_updates, name="mesos-updates", daemon=True,
            args=(self._outbox, self._ledger, self._driver.post_update, self._retry_delay_s),
        )
        self._clock = clock
        self._io_thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Connect and subscribe in the background; events follow on the IO thread."""
        self._driver.start()
        self._io_thread = self._driver._io_thread
        self._sender.start()

    def stop(self) -> None:
        """Close the connection. No callback starts after the IO thread ends.

        Updates the agent has not accepted by now are dropped (and logged): wait for
        acknowledgements first (:meth:`wait_acknowledged`).
        """
        self._driver.stop()

    def join(self, timeout_s: Optional[float] = None) -> None:
        """Wait for both threads to end (after :meth:`stop` or when the agent is lost)."""
        deadline = None if timeout_s is None else Deadline.after(timeout_s, self._clock)
        for thread in (self._io_thread, self._sender):
            if thread is not None and thread.ident is not None:
                thread.join(None if deadline is None else deadline.remaining())

    @property
    def running(self) -> bool:
        """True while the IO thread (the agent connection) is alive."""
        return self._io_thread is not None and self._io_thread.is_alive()

    def send_update(self, task_id: str, state: str, *, reason: Optional[str] = None,
                    message: Optional[str] = None, data: Optional[bytes] = None,
                    healthy: Optional[bool] = None, check_status: Optional[Mapping[str, Any]] = None) -> bytes:
        """Queue a status update for the agent and return its uuid (16 raw bytes).

        Never blocks on the network and never raises because the agent is unreachable: the
        update is delivered in order once subscribed, and re-sent in every SUBSCRIBE until
        acknowledged. ValueError for a state the agent would reject (TASK_STAGING).
        """
        raw, status = new_status(task_id, str(state), executor_id=self._env.executor_id,
                                 agent_id=self._driver.agent_id, reason=reason,
                                 message=message, data=data, healthy=healthy, check_status=check_status)
        self._ledger.sent(raw, status)
        self._outbox.put(raw, status)
        return raw

    def wait_acknowledged(self, uuid: bytes, timeout_s: float) -> bool:
        """True once the agent acknowledged update ``uuid``; False at the deadline or if refused."""
        return self._ledger.wait(uuid, timeout_s)

    def all_acknowledged(self) -> bool:
        """True when every update sent so far has been acknowledged."""
        return self._ledger.all_acknowledged()

    def _retry_delay_s(self) -> float:
        return max(0.1, self._rng() * self._env.subscription_backoff_max_s)

    def send_message(self, data: bytes) -> None:
        """Best-effort framework message (Mesos may drop it too); failures are only logged."""
        try:
            self._driver.sendFrameworkMessage(base64.b64encode(data).decode("ascii"))
        except (OSError, http.client.HTTPException, CallRefused) as exc:
            logger.warning("framework message of %d bytes not delivered: %s", len(data), exc)
