"""The reaper against real libvirtd, qemu-img and dnsmasq: it removes a dead executor's guest and
nothing else.

Reaping is restricted to this test's own executor id (and, for orphan files, to private
directories), so guests of tests running in parallel on the same host are never at risk.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import libvirt
import pytest

from tests.real.conftest import Leftovers
from vm_isolation.config import Settings
from vm_isolation.domainxml import DomainSpec, Owner, render
from vm_isolation.guest import GuestFactory, GuestRequest
from vm_isolation.hypervisor import LibvirtHypervisor
from vm_isolation.ids import domain_name_for, random_mac
from vm_isolation.leases import Leases
from vm_isolation.overlay import create_overlay
from vm_isolation.ownership import Liveness, liveness, read_owner_file
from vm_isolation.reaper import Kind, reap
from vm_isolation.sshkeys import generate_client_key
from vm_isolation.waiting import Deadline, poll_until

FOREIGN = "reaper-foreign-test"
FOREIGN_OWNED = "reaper-foreign-owned-test"


def start_time_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19]


def dead_owner(executor_id: str) -> Owner:
    """An Owner whose process existed and is gone: a `sleep` started and killed."""
    proc = subprocess.Popen(["sleep", "600"])
    start = start_time_of(proc.pid)
    proc.kill()
    proc.wait()
    return Owner(framework_id="reaper-test", executor_id=executor_id, task_id="t",
                 executor_pid=proc.pid, executor_start_time=start)


def spec(settings: Settings, name: str, owner: Owner) -> DomainSpec:
    return DomainSpec(
        name=name, domain_type="qemu", vcpus=1, memory_mib=128, kernel=settings.images.kernel,
        initrd=settings.images.initrd, cmdline="console=ttyS0", disk=settings.vm.overlay_dir / f"{name}.qcow2",
        mac=random_mac(), network=settings.libvirt.network,
        console_log=settings.vm.console_dir / f"{name}.console", owner=owner)


@pytest.fixture
def executor_id() -> str:
    return f"reaper-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def bystanders(settings: Settings, hypervisor: LibvirtHypervisor, executor_id: str) -> Iterator[list[str]]:
    """Three defined (not started) domains the reaper must leave alone, removed afterwards."""
    live = domain_name_for("reaper-live")
    hypervisor.define(spec(settings, live, Owner(executor_id=executor_id, executor_pid=os.getpid(),
                                                 executor_start_time=start_time_of(os.getpid()))))
    # Our metadata and a dead owner, but a name vm-isolation never makes.
    hypervisor.define(spec(settings, FOREIGN_OWNED, dead_owner(executor_id)))
    foreign_xml = re.sub(r"<metadata>.*</metadata>", "", render(spec(settings, FOREIGN, Owner())), flags=re.S)
    conn = libvirt.open(settings.libvirt.uri)
    try:
        conn.defineXML(foreign_xml)
        yield [live, FOREIGN_OWNED, FOREIGN]
    finally:
        conn.close()
        for name in (live, FOREIGN_OWNED, FOREIGN):
            hypervisor.undefine(name)


OWNER_CODE = ("import os, sys; from pathlib import Path; from vm_isolation.ownership import OwnerFile; "
              "f = OwnerFile.create(Path(sys.argv[1]), executor_id='reaper-test', pid=os.getpid()); "
              "print(os.getpid(), f.path, flush=True); sys.stdin.read()")


@contextlib.contextmanager
def owner_process(owner_dir: Path, *prefix: str) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """A process holding an owner file in ``owner_dir`` until killed: (process, its own pid as it
    sees it, the owner file). ``prefix`` runs it under another command (e.g. unshare)."""
    owner_dir.mkdir(parents=True, exist_ok=True)
    with subprocess.Popen([*prefix, sys.executable, "-c", OWNER_CODE, str(owner_dir)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            pid, path = proc.stdout.readline().split()
            yield proc, int(pid), Path(path)
        finally:
            proc.kill()


def test_a_dead_executors_running_guest_is_reaped_and_bystanders_are_untouched(
        settings: Settings, hypervisor: LibvirtHypervisor, launcher: GuestFactory, leftovers: Leftovers,
        executor_id: str, bystanders: list[str], tmp_path: Path) -> None:
    """A booted guest whose owner holds its owner-file lock is kept; once the owner is killed it
    loses domain, overlay, key dir and lease; a live owner's domain, a metadata-less foreign
    domain and a foreign-named one stay defined. The owner records pid 2, as an executor in a
    pid namespace would: only the lock decides.

    The owner file lives in a directory of this test, and the reaper is called with that
    owner_dir; the host's watcher (whose owner_dir is the host's) therefore counts this owner
    as alive throughout and leaves the guest to this test."""
    private = replace(settings, vm=replace(settings.vm, owner_dir=tmp_path / "owners"))
    before = leftovers.snapshot()
    with owner_process(private.vm.owner_dir) as (owner_proc, _, owner_file):
        owner = Owner(framework_id="reaper-test", executor_id=executor_id, task_id="t", executor_pid=2,
                      executor_start_time="1", owner_file=str(owner_file))
        req = GuestRequest(name=domain_name_for("reaped"), base_image=settings.images.base(settings.images.default),
                           memory_mib=settings.vm.default_memory_mib, owner=owner)
        overlay = settings.vm.overlay_dir / f"{req.name}.qcow2"
        key_dir = settings.vm.key_dir / req.name
        with launcher.boot(req) as guest:
            mac = guest.mac
            assert overlay.exists() and key_dir.is_dir() and leftovers.leases_of({mac})
            alive = reap(private, hypervisor, Leases(hypervisor), only_executor_id=executor_id)
            assert alive.found == [] and hypervisor.state(req.name) == "running"
            owner_proc.kill()
            owner_proc.wait()
            report = reap(private, hypervisor, Leases(hypervisor), only_executor_id=executor_id)
            assert report.ok, report.errors
            assert [(f.kind, f.name) for f in report.found] == [(Kind.DOMAIN, req.name)]
            assert hypervisor.state(req.name) is None
            assert not overlay.exists() and not key_dir.exists()
            poll_until(lambda: True if not leftovers.leases_of({mac}) else None, Deadline.after(10),
                       what="the reaped guest's lease to be released")
            assert all(hypervisor.state(name) == "shutoff" for name in bystanders)
            assert any(line.endswith("is alive") and line.startswith(bystanders[0]) for line in report.kept)
    # The launcher's own teardown then finds nothing left to undo, and does not fail.
    leftovers.assert_none_since(before, {mac}, prefixes=["vmiso-reaped-"])


def test_an_owner_in_another_pid_namespace_is_judged_by_its_lock(tmp_path: Path) -> None:
    """Under the agent's namespaces/pid isolator the executor's own pid means nothing on the host.
    A real pid namespace (unshare): the owner sees itself as pid 1; the host's pid 1 is another
    process, started at another time. The lock still says alive, then dead once it is killed."""
    unshare = ("unshare", "--pid", "--fork", "--kill-child", "--mount-proc")
    with owner_process(tmp_path / "owners", *unshare) as (proc, pid, path):
        assert pid == 1
        assert read_owner_file(path).pid == 1
        assert liveness(path) is Liveness.ALIVE
        proc.kill()
        proc.wait()
        poll_until(lambda: True if liveness(path) is Liveness.DEAD else None, Deadline.after(10),
                   what="the namespaced owner's lock to be released")


@pytest.fixture
def private_settings(settings: Settings, tmp_path: Path) -> Settings:
    """The host's settings with overlay and key directories of this test only."""
    vm = replace(settings.vm, overlay_dir=tmp_path / "overlays", key_dir=tmp_path / "keys",
                 owner_dir=tmp_path / "run" / "owners")
    vm.overlay_dir.mkdir()
    return replace(settings, vm=vm)


def orphans(settings: Settings) -> tuple[Path, Path]:
    """A real qcow2 overlay and a real key directory named like a guest that was never defined."""
    name = domain_name_for("orphan")
    overlay = create_overlay(settings.images.base(settings.images.default), settings.vm.overlay_dir / f"{name}.qcow2")
    key_dir = settings.vm.key_dir / name
    generate_client_key(key_dir)
    return overlay, key_dir


def test_orphaned_overlays_and_keys_of_no_domain_are_removed(
        private_settings: Settings, hypervisor: LibvirtHypervisor) -> None:
    """An overlay and key dir whose domain libvirt does not know are deleted; a foreign file stays."""
    overlay, key_dir = orphans(private_settings)
    stranger = private_settings.vm.overlay_dir / "not-ours.qcow2"
    stranger.write_text("x")
    report = reap(private_settings, hypervisor, Leases(hypervisor), only_executor_id="no-such-executor",
                  orphan_files=True, orphan_min_age_s=0)
    assert report.ok, report.errors
    assert sorted(f.kind for f in report.found) == [Kind.KEY_DIR, Kind.OVERLAY]
    assert not overlay.exists() and not key_dir.exists() and stranger.exists()


def test_the_cli_dry_run_prints_json_and_deletes_nothing(private_settings: Settings) -> None:
    """`vm-isolation-reap --dry-run --json --min-age 0` lists the orphans, exits 0 and leaves them."""
    overlay, key_dir = orphans(private_settings)
    env = dict(os.environ, VM_ISOLATION_VM_OVERLAY_DIR=str(private_settings.vm.overlay_dir),
               VM_ISOLATION_VM_KEY_DIR=str(private_settings.vm.key_dir))
    cli = Path(sys.executable).parent / "vm-isolation-reap"
    assert private_settings.source is not None
    proc = subprocess.run([str(cli), "--dry-run", "--json", "--min-age", "0", "--config",
                           str(private_settings.source)],
                          capture_output=True, text=True, timeout=60, check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["dry_run"] is True and report["removed"] == []
    assert {f["path"] for f in report["found"] if f["kind"] != "domain"} == {str(overlay), str(key_dir)}
    assert overlay.exists() and key_dir.exists()

