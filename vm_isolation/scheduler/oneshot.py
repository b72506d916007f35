"""One task through a real master (``vm-isolation-run --master``): the first qualifying offer
that fits gets it, every other offer is declined, and the run ends with its terminal status.

Pure like :mod:`.core`: events in, :class:`~.core.Driver` calls out, on the caller's thread.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from .core import Driver
from .instances import TaskStatus
from .placement import Need, Offer, place

REFUSE_AFTER_LAUNCH_S = 3600.0
REFUSE_WHILE_WAITING_S = 1.0


class OneShot:
    def __init__(self, driver: Driver, task: dict[str, Any], need: Need, required: Mapping[str, str]) -> None:
        self.driver, self.task, self.need, self.required = driver, task, need, dict(required)
        self.agent_id: Optional[str] = None
        self.hostname = ""
        self.updates: list[TaskStatus] = []
        self.final: Optional[TaskStatus] = None

    @property
    def task_id(self) -> str:
        return str(self.task["task_id"]["value"])

    def on_offers(self, offers: Sequence[Offer]) -> None:
        used: Optional[str] = None
        if self.agent_id is None:
            chosen = place([self.need], offers, self.required, {})
            if chosen:
                used = chosen[0].offer_id
                offer = next(o for o in offers if o.id == used)
                self.agent_id, self.hostname = offer.agent_id, offer.hostname
                self.driver.launch(offer.id, [{**self.task, "agent_id": {"value": offer.agent_id}}])
                self.driver.suppress()
        declined = [o.id for o in offers if o.id != used]
        if declined:
            self.driver.decline(declined, REFUSE_AFTER_LAUNCH_S if self.agent_id else REFUSE_WHILE_WAITING_S)

    def on_status(self, status: TaskStatus) -> None:
        if status.task_id != self.task_id:
            return
        self.updates.append(status)
        if status.terminal:
            self.final = status
