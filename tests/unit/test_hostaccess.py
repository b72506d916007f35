"""The start-up check of what the executor's user may use, and the message it gives."""

from __future__ import annotations

import os
import pwd
from dataclasses import replace
from pathlib import Path

from vm_isolation.config import Settings, VmSettings
from vm_isolation.hostaccess import access_problems, describe


def test_unusable_directories_are_all_named(tmp_path: Path) -> None:
    ok = tmp_path / "ok"
    ok.mkdir()
    settings = replace(Settings(), vm=VmSettings(overlay_dir=tmp_path / "missing-overlays", key_dir=ok,
                                                 owner_dir=tmp_path / "missing-owners"))
    problems = access_problems(settings)
    assert [p.split()[0:2] for p in problems if "socket" not in p] == [
        ["[vm]", "overlay_dir"], ["[vm]", "owner_dir"]]


def test_the_message_names_the_user_and_the_fix() -> None:
    user = pwd.getpwuid(os.geteuid()).pw_name
    message = describe(["[vm] overlay_dir /x (not writable)"])
    assert f"runs as user {user!r}" in message and "[vm] overlay_dir /x" in message
    assert f"scripts/host-setup.sh --executor-user {user}" in message and "--switch_user=false" in message
