"""Where instances go: pure functions over offers and the framework's own task counts.

Three rules, in order:

1. **Attributes.** An agent qualifies only if every required attribute matches
   (default ``vt_enabled:1``: the agent can run VMs).
2. **Resources.** The offer must still hold the instance's task *and* executor resources
   after what this round already put on it.
3. **Spread by component type.** Among qualifying offers the agent running the fewest
   instances of the instance's component type wins (ties: the agent id, so it is
   deterministic). Counts are the framework's own (its tasks per agent, plus what this round
   placed), never agent attributes, so nothing on the agent has to change or restart.

Offers arrive per agent; if only one agent's offer is in hand, fewest-first among offers alone
would stack every instance there. So an agent is also refused while another *known* agent
(one that qualified in a recent offer and could still fit the instance) runs fewer of that
type: :func:`place` then leaves the instance pending until that agent's offer comes. A known
agent that cannot fit it, or that the caller no longer lists (lost, or not seen lately), does
not hold anything back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

EXECUTOR_CPUS = 0.1
EXECUTOR_MEM_MIB = 32.0


@dataclass(frozen=True)
class Offer:
    id: str
    agent_id: str
    hostname: str
    cpus: float
    mem: float
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Need:
    """One instance waiting for a place."""

    instance: str
    component: str
    cpus: float
    mem: float

    @property
    def total_cpus(self) -> float:
        return self.cpus + EXECUTOR_CPUS

    @property
    def total_mem(self) -> float:
        return self.mem + EXECUTOR_MEM_MIB


@dataclass(frozen=True)
class Placement:
    offer_id: str
    agent_id: str
    instance: str


def parse_constraints(items: Sequence[str]) -> dict[str, str]:
    """``["vt_enabled:1", ...]`` -> {"vt_enabled": "1"}; ValueError names a malformed item."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or not key or not value:
            raise ValueError(f"attribute constraint {item!r} is not NAME:VALUE")
        out[key] = value
    return out


def qualifies(attributes: Mapping[str, str], required: Mapping[str, str]) -> bool:
    return all(attributes.get(key) == value for key, value in required.items())


def fits(cpus: float, mem: float, need: Need) -> bool:
    # A small epsilon: offered scalars are sums of decimals (0.1 + 0.2 ...).
    return cpus + 1e-6 >= need.total_cpus and mem + 1e-6 >= need.total_mem


def place(needs: Sequence[Need], offers: Sequence[Offer], required: Mapping[str, str],
          counts: Mapping[tuple[str, str], int],
          known_free: Optional[Mapping[str, tuple[float, float]]] = None) -> list[Placement]:
    """Placements for as many of ``needs`` (in order) as the offers allow.

    ``counts`` maps (agent id, component) to the instances of that type the framework runs or
    is launching there; ``known_free`` maps the ids of other qualifying agents known lately to
    their last known free (cpus, mem), so that they hold back stacking (module docstring).
    """
    usable = [o for o in offers if qualifies(o.attributes, required)]
    free = {o.id: [o.cpus, o.mem] for o in usable}
    tally = dict(counts)
    known = dict(known_free or {})
    placements: list[Placement] = []
    in_hand = {o.agent_id for o in usable}
    for need in needs:
        candidates = [o for o in usable if fits(free[o.id][0], free[o.id][1], need)]
        if not candidates:
            continue
        best = min(candidates, key=lambda o: (tally.get((o.agent_id, need.component), 0), o.agent_id))
        best_count = tally.get((best.agent_id, need.component), 0)
        waiting_for = [agent for agent, (cpus, mem) in known.items()
                       if agent not in in_hand and fits(cpus, mem, need)
                       and tally.get((agent, need.component), 0) < best_count]
        if waiting_for:
            continue
        free[best.id][0] -= need.total_cpus
        free[best.id][1] -= need.total_mem
        tally[(best.agent_id, need.component)] = best_count + 1
        placements.append(Placement(best.id, best.agent_id, need.instance))
    return placements


def decode_offer(raw: Mapping[str, object]) -> Offer:
    """An :class:`Offer` from the v1 API's JSON (pymesos hands dicts); scalars summed per name,
    TEXT and SCALAR attributes as strings."""
    resources = raw.get("resources") or []
    totals: dict[str, float] = {}
    for r in resources if isinstance(resources, list) else []:
        if isinstance(r, dict) and r.get("type") == "SCALAR":
            totals[str(r.get("name"))] = totals.get(str(r.get("name")), 0.0) + float(r["scalar"]["value"])
    attributes: dict[str, str] = {}
    for a in raw.get("attributes") or []:  # type: ignore[attr-defined]
        if not isinstance(a, dict):
            continue
        if a.get("type") == "TEXT":
            attributes[str(a["name"])] = str(a["text"]["value"])
        elif a.get("type") == "SCALAR":
            attributes[str(a["name"])] = f"{float(a['scalar']['value']):g}"
    return Offer(id=str(raw["id"]["value"]), agent_id=str(raw["agent_id"]["value"]),  # type: ignore[index]
                 hostname=str(raw.get("hostname", "")), cpus=totals.get("cpus", 0.0), mem=totals.get("mem", 0.0),
                 attributes=attributes)
