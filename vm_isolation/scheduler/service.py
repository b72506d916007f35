"""The scheduler process's one loop: driver events, API calls and timer ticks, in order.

:class:`InstanceScheduler` is single-threaded by design. pymesos's IO thread and the HTTP
server's threads never touch it: they put work on :class:`EventLoop`'s queue (driver events)
or submit a call and wait for its result (API requests), and the loop thread runs each in
turn, calling ``tick()`` every ``tick_s``.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, Optional, TypeVar

from ..waiting import SYSTEM_CLOCK, Clock
from .core import InstanceScheduler

log = logging.getLogger(__name__)
T = TypeVar("T")
API_TIMEOUT_S = 10.0


class Busy(Exception):
    """The loop did not answer an API call in time."""


class FrameworkRemoved(Exception):
    """The master refused the framework (e.g. its failover timeout passed): the message says so."""


def _nothing() -> None:
    pass


class EventLoop:
    def __init__(self, core: InstanceScheduler, *, tick_s: float = 1.0, clock: Clock = SYSTEM_CLOCK,
                 on_exit: Callable[[], None] = lambda: None) -> None:
        self.core = core
        self.on_exit = on_exit
        self.tick_s = tick_s
        self.clock = clock
        self._queue: queue.Queue[Optional[Callable[[], None]]] = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self.failure: Optional[BaseException] = None
        self.done = threading.Event()

    # --- producers (any thread) ------------------------------------------------------------
    def post(self, kind: str, payload: Any) -> None:
        """A driver event (see mesos_driver): decoded there, handled here on the loop."""
        handlers: dict[str, Callable[[], None]] = {
            "registered": lambda: self.core.on_registered(payload),
            "disconnected": self.core.on_disconnected,
            "offers": lambda: self.core.on_offers(list(payload)),
            "status": lambda: self.core.on_status(payload),
            "agent_lost": lambda: self.core.on_agent_lost(payload),
            "error": lambda: self._error(payload),
        }
        handler = handlers.get(kind)
        if handler is None:
            log.error("unknown driver event %s", kind)
            return
        self._queue.put(handler)

    def call(self, fn: Callable[[], T], timeout_s: float = API_TIMEOUT_S) -> T:
        """Run ``fn`` on the loop and return its result (its exception is raised here)."""
        future: Future[T] = Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except Exception as exc:  # noqa: BLE001  (handed to the caller, who maps it)
                    future.set_exception(exc)

        self._queue.put(run)
        try:
            return future.result(timeout_s)
        except TimeoutError as exc:
            future.cancel()
            raise Busy(f"the scheduler did not answer within {timeout_s:g} s") from exc

    # --- the loop ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scheduler-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        next_tick = self.clock.monotonic() + self.tick_s
        try:
            while True:
                try:
                    item = self._queue.get(timeout=max(0.0, next_tick - self.clock.monotonic()))
                except queue.Empty:
                    item = _nothing
                if item is None:
                    return
                item()
                if self.clock.monotonic() >= next_tick:  # ticks even while events keep coming
                    self.core.tick()
                    next_tick = self.clock.monotonic() + self.tick_s
        except BaseException as exc:
            log.exception("the scheduler loop stopped")
            self.failure = exc
        finally:
            self.done.set()
            self.on_exit()

    def _error(self, message: str) -> None:
        log.error("the master sent an error: %s", message)
        if "removed" in message.lower() or "failover" in message.lower():
            self.core.store.set_framework_id(None)
            raise FrameworkRemoved(f"the master removed this framework ({message}); its stored id was cleared: "
                                   "start the scheduler again to register anew (its instances are relaunched)")
