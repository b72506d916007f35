"""The cloud-init image kind on real guests: the debian-cloud image built by
scripts/build-cloud-image.sh, booted from its own disk with a per-task NoCloud seed.

One boot of the cloud image in all (it is slow under emulation): a task through the executor
that prints its user and hostname, writes to the disk, reads its seed back from the seed volume
and exits 7. The failure paths are cheap: the busybox disk (no bootloader, no cloud-init) as a
cloud-init image with a short deadline, and a pinned host key the guest does not have on a
direct-kernel busybox guest (the pinned-key path of the cloud-init kind, without its boot time).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import yaml

from tests.real import test_executor_e2e
from tests.real.conftest import Leftovers
from tests.real.test_executor_e2e import Run, task
from vm_isolation.config import ImageProfile, Settings, conf_path, load_settings
from vm_isolation.errors import HostKeyMismatch
from vm_isolation.guest import GuestFactory, GuestRequest
from vm_isolation.ids import domain_name_for, name_prefix
from vm_isolation.imagekinds import BootPlan, KindContext
from vm_isolation.imagekinds.direct import DirectKernelKind
from vm_isolation.journal import journal_path, read_journal
from vm_isolation.sshkeys import generate_host_key

run = test_executor_e2e.run  # the fixture: one agent stand-in per test

CLOUD_BOOT_S = 420.0
"""The executor's deadline for the whole task: the image's boot_timeout_s (360) plus the run."""
SHORT_BOOT_S = 20.0


def cloud_config(tmp_path: Path, settings: Settings) -> Path:
    """The host's configuration plus the two cloud-init images these tests use."""
    images = settings.images.dir
    text = conf_path().read_text()
    if "[image:debian-cloud]" not in text:
        text += (f"\n[image:debian-cloud]\npath = {images / 'debian-cloud.qcow2'}\nkind = cloud-init\n"
                 "user = debian\nboot_timeout_s = 360\n")
    text += (f"\n[image:no-cloud-init]\npath = {images / 'busybox.qcow2'}\nkind = cloud-init\nuser = debian\n"
             f"boot_timeout_s = {SHORT_BOOT_S:g}\n")
    path = tmp_path / "cloud.conf"
    path.write_text(text)
    return path


def image_task(task_id: str, command: str, image: str, mem: int = 512) -> dict[str, object]:
    info = task(task_id, command, labels={"labels": [{"key": "vm_isolation.image", "value": image}]})
    info["resources"] = [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 1}},
                         {"name": "mem", "type": "SCALAR", "scalar": {"value": mem}}]
    return info


SEED_READER = ("sudo -n mkdir -p /run/seed && sudo -n mount -o ro /dev/vdb /run/seed && "
               "echo '--- user-data' && sudo -n cat /run/seed/user-data && "
               "echo '--- meta-data' && sudo -n cat /run/seed/meta-data && echo '--- end'")


def test_a_task_on_the_debian_cloud_image(run: Run, tmp_path: Path, settings: Settings) -> None:
    """Runs as the login user with the domain name as hostname, writes to its disk, exits 7 ->
    TASK_FAILED carrying 7; the seed it read from its volume has its public key, its pinned host
    key, no password and no client private key; nothing is left afterwards."""
    config = cloud_config(tmp_path, settings)
    if not load_settings(config).images.base("debian-cloud").exists():
        pytest.fail("no debian-cloud image: run `make image` (scripts/build-cloud-image.sh)")
    eid, h = run.executor(config)
    command = ("id -un; hostname; echo \"HOME=$HOME\"; echo on-disk > written.txt && sync && cat written.txt; "
               + SEED_READER + "; exit 7")
    run.launch(eid, image_task("cloudtask", command, "debian-cloud"))
    final = run.agent.wait_for_terminal("cloudtask", CLOUD_BOOT_S)
    assert run.states("cloudtask") == ["TASK_STARTING", "TASK_RUNNING", "TASK_FAILED"], final.message
    assert final.reason == "REASON_COMMAND_EXECUTOR_FAILED" and "exit status 7" in (final.message or "")
    assert json.loads(final.data or b"{}")["exit_status"] == 7
    out = run.task_file(h, "cloudtask", "stdout")
    lines = out.splitlines()
    assert lines[0] == "debian"
    assert lines[1].startswith(name_prefix("cloudtask")) and lines[2] == "HOME=/home/debian"
    assert lines[3] == "on-disk"
    user_data = out.split("--- user-data\n", 1)[1].split("--- meta-data\n", 1)[0]
    meta_data = yaml.safe_load(out.split("--- meta-data\n", 1)[1].split("--- end", 1)[0])
    seed = yaml.safe_load(user_data)
    assert meta_data["local-hostname"] == lines[1] == seed["hostname"]
    assert seed["ssh_pwauth"] is False and seed["users"][0]["lock_passwd"] is True
    assert not any("passw" in key and key != "lock_passwd" for key in [*seed, *seed["users"][0]])
    assert user_data.count("BEGIN OPENSSH PRIVATE KEY") == 1  # the guest's host key, nothing else
    assert set(seed["ssh_keys"]) == {"ed25519_private", "ed25519_public"}
    err = run.task_file(h, "cloudtask", "stderr")
    assert "seed done" in err and "ssh done" in err
    assert h.wait(60) == 0
    journal = read_journal(journal_path(h.sandbox))
    assert journal.outstanding == []
    records = [json.loads(line) for line in journal_path(h.sandbox).read_text().splitlines()]
    assert {(r["op"], r.get("kind")) for r in records} >= {("create", "seed"), ("remove", "seed")}
    run.assert_clean()


def test_an_image_without_cloud_init_fails_in_its_boot_phase_within_its_deadline(
        run: Run, tmp_path: Path, settings: Settings) -> None:
    """The busybox disk has no bootloader: the firmware says so on the serial console, no lease
    comes, and the task fails naming the phase and quoting the console, after the image's
    boot_timeout_s (not [vm] boot_timeout_s)."""
    eid, h = run.executor(cloud_config(tmp_path, settings))
    started = time.monotonic()
    run.launch(eid, image_task("nocloud", "true", "no-cloud-init", mem=256))
    final = run.agent.wait_for_terminal("nocloud", 120)
    elapsed = time.monotonic() - started
    assert (final.state, final.reason) == ("TASK_FAILED", "REASON_CONTAINER_LAUNCH_FAILED")
    message = final.message or ""
    assert "lease" in message and "boot_timeout_s" in message
    assert "last lines of the guest console" in message and "boot" in message.split("guest console", 1)[1].lower()
    assert elapsed < settings.vm.boot_timeout_s  # the image's own deadline, not the [vm] one
    assert h.wait(60) == 0
    run.assert_clean()


@dataclass
class _WrongPin:
    """The direct-kernel kind, but pinning a host key made here that the guest never got (the
    path the cloud-init kind takes: a key known before boot, nothing read from the console)."""

    inner: DirectKernelKind
    pinned: str
    name: str = "wrong-pin"
    user: str = "root"
    home: str = "/root"
    prepare_phase: Optional[str] = None
    boot_timeout_s: Optional[float] = 120.0

    def prepare(self, ctx: KindContext) -> BootPlan:
        plan = self.inner.prepare(ctx)
        return BootPlan(kernel=plan.kernel, initrd=plan.initrd, cmdline=plan.cmdline, host_key=self.pinned)

    def session_setup(self, directories: tuple[str, ...]) -> Optional[str]:
        return None


def test_a_guest_presenting_another_host_key_than_the_pinned_one_is_refused(
        launcher: GuestFactory, settings: Settings, leftovers: Leftovers) -> None:
    before = leftovers.snapshot()
    pinned = generate_host_key().public_openssh
    launcher._kinds = lambda s, profile, kernel=None: _WrongPin(  # type: ignore[assignment]
        DirectKernelKind(s, profile, kernel), pinned)
    profile = ImageProfile(path=settings.images.base("busybox"))
    request = GuestRequest(name=domain_name_for("wrongpin"), base_image=profile.path, profile=profile)
    with pytest.raises(HostKeyMismatch) as info, launcher.boot(request):
        pass
    assert info.value.phase == "ssh"
    leftovers.assert_none_since(before, prefixes=[name_prefix("wrongpin")])
