"""Where a task's guest comes from: the warm pool if it has one of the task's shape, else a cold boot.

:class:`WarmFactory` is what a :class:`session.TaskSession` boots through when ``[pool] size``
is above 0. It asks the pool (:mod:`poolclient`) with a short timeout; an offer is taken over
with :meth:`GuestFactory.adopt` (journal, owner switch, SSH), whose teardown is the boot's.
On no pool, no guest of that shape, or any failure of the hand-over it boots cold, so a task
never fails because of the pool. The guest's timings say which: ``pool`` (1: from the pool,
0: the pool had none or failed, cold boot) and ``handover`` (seconds from asking to a ready
SSH session).

A pool guest keeps its pool-given domain name; :meth:`power_off` maps the task's domain name
to it once the guest is the executor's, so the kill ladder reaches it.
"""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator, Optional

from .errors import VmIsolationError
from .guest import Cancelled, Guest, GuestFactory, GuestRequest, ProgressFn
from .poolclient import Handover, PoolClient
from .poolwire import ProtocolError, Shape, checked_shape
from .waiting import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)


class WarmFactory:
    """Boots through the pool when it can, cold otherwise (the session's guest factory)."""

    def __init__(self, launcher: GuestFactory, client: PoolClient, *, clock: Clock = SYSTEM_CLOCK,
                 on_offer: Callable[[Handover], None] = lambda handover: None) -> None:
        """``on_offer``: called with each offer before it is taken over (a test seam)."""
        self.launcher = launcher
        self.client = client
        self._clock = clock
        self._on_offer = on_offer
        self._lock = threading.Lock()
        self._adopted: dict[str, str] = {}

    @property
    def firewall(self):  # type: ignore[no-untyped-def]  # the launcher's, for wrap mode
        return self.launcher.firewall

    @contextmanager
    def boot(self, request: GuestRequest, *, cancel: Optional[threading.Event] = None,
             progress: ProgressFn = lambda phase, seconds: None) -> Iterator[Guest]:
        cancel = cancel or threading.Event()
        with ExitStack() as stack:
            guest = self._from_pool(request, cancel, progress, stack)
            if guest is None:
                guest = stack.enter_context(self.launcher.boot(request, cancel=cancel, progress=progress))
                guest.timings["pool"] = 0.0
            yield guest

    def domain_state(self, name: str) -> Optional[str]:
        return self.launcher.domain_state(name)

    def power_off(self, name: str) -> None:
        """Power off the task's guest: the adopted pool guest if it has one (only once it is
        ours: before that, the pool's), the cold-booted one of that name otherwise."""
        with self._lock:
            target = self._adopted.get(name, name)
        self.launcher.power_off(target)

    def _from_pool(self, request: GuestRequest, cancel: threading.Event, progress: ProgressFn,
                   stack: ExitStack) -> Optional[Guest]:
        if cancel.is_set() or not request.image:
            return None
        try:
            shape: Shape = checked_shape(request.image, request.vcpus, request.memory_mib)
        except ProtocolError:
            return None
        started = self._clock.monotonic()
        handover = self.client.take(shape)
        if handover is None:
            log.info("%s: no pool guest (%s); booting cold", request.name, self.client.last_miss)
            return None
        name = handover.offer.name

        def owned() -> None:
            with self._lock:
                self._adopted[request.name] = name
            handover.taken()

        stack.callback(self._unmap, request.name)
        try:
            self._on_offer(handover)
            guest = stack.enter_context(self.launcher.adopt(handover.offer, request, on_owned=owned,
                                                            cancel=cancel, progress=progress))
        except Cancelled:
            raise
        except VmIsolationError as exc:
            log.warning("%s: taking the pool guest %s failed (%s); booting cold", request.name, name, exc)
            self._unmap(request.name)
            return None
        finally:
            handover.close()  # 'refused' unless 'taken' was said
        guest.timings["pool"] = 1.0
        guest.timings["handover"] = round(self._clock.monotonic() - started, 3)
        log.info("%s: took the pool guest %s in %.3f s", request.name, name, guest.timings["handover"])
        return guest

    def _unmap(self, name: str) -> None:
        with self._lock:
            self._adopted.pop(name, None)
