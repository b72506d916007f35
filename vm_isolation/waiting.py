"""Deadlines and the one polling loop: the only place in the package that sleeps.

Time is a parameter: every wait takes a :class:`Clock`, so unit tests pass a fake one
(tests/unit/fakes.py) and no real time passes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` for ``event``; True if it is set (as ``Event.wait``)."""
        ...


class SystemClock:
    """Real time."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(seconds)


SYSTEM_CLOCK = SystemClock()


@dataclass(frozen=True)
class Deadline:
    """A point in a clock's time after which a wait gives up."""

    at: float
    clock: Clock

    @classmethod
    def after(cls, seconds: float, clock: Clock = SYSTEM_CLOCK) -> Deadline:
        return cls(clock.monotonic() + seconds, clock)

    def remaining(self) -> float:
        return max(0.0, self.at - self.clock.monotonic())

    def expired(self) -> bool:
        return self.clock.monotonic() >= self.at


class WaitTimeout(Exception):
    """poll_until gave up; callers turn this into their own named error."""


def poll_until(
    probe: Callable[[], Optional[T]],
    deadline: Deadline,
    *,
    interval_s: float = 0.1,
    what: str = "condition",
) -> T:
    """Call ``probe`` until it returns something other than None, or the deadline passes.

    The probe is always called at least once, and once more at the deadline, so a condition
    that became true while we slept is never missed. Raises :class:`WaitTimeout`.
    """
    while True:
        value = probe()
        if value is not None:
            return value
        left = deadline.remaining()
        if left <= 0:
            raise WaitTimeout(f"gave up waiting for {what}")
        deadline.clock.sleep(min(interval_s, left))
