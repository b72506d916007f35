"""Names derived from hostile task ids are safe, bounded and unique."""

from __future__ import annotations

import re

import pytest

from vm_isolation.ids import MAX_NAME, domain_name_for, is_our_domain_name, random_mac

HOSTILE_IDS = ["job-1", "../../etc", "a/b", "sp ace", "q'\"", "$(rm -rf /)", "`x`", "a;b", "nl\nx",
               "nul\0x", "x" * 10240, "ÜNICODE", "", "---", "\\x00\\xff"]


@pytest.mark.parametrize("task_id", HOSTILE_IDS)
def test_domain_names_use_only_safe_characters(task_id: str) -> None:
    """Any task id yields a DNS-label-safe name we recognise as ours."""
    name = domain_name_for(task_id)
    assert re.fullmatch(r"[a-z0-9-]+", name)
    assert len(name) <= MAX_NAME
    assert is_our_domain_name(name)


def test_ids_differing_only_in_dropped_characters_get_different_names() -> None:
    """Random suffixes keep names collision-free."""
    assert len({domain_name_for("a/b") for _ in range(50)} | {domain_name_for("a;b")}) == 51


def test_foreign_names_are_not_ours() -> None:
    """A domain an operator made is never mistaken for one of ours."""
    assert not is_our_domain_name("webserver")
    assert not is_our_domain_name("vmiso-../../x")


def test_random_macs_are_locally_administered_and_fresh() -> None:
    """MACs are in 52:54:00 (locally administered bit set) and do not repeat."""
    macs = {random_mac() for _ in range(200)}
    assert len(macs) == 200
    assert all(int(m.split(":")[0], 16) & 0x02 for m in macs)
