"""The reaper on fakes of its own boundaries: what it removes, and above all what it never touches."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import pytest

from vm_isolation.config import Settings, VmSettings
from vm_isolation.domainxml import Owner
from vm_isolation.errors import VmIsolationError
from vm_isolation.hosttypes import OwnedDomain
from vm_isolation.journal import Journal
from vm_isolation.leases import Lease
from vm_isolation.procinfo import ProcProcessTable
from vm_isolation.reaper import Kind, reap

NOW = 1_000_000.0
DEAD_NAME = "vmiso-job-0123456789"
LIVE_NAME = "vmiso-live-abcdef0123"
NETWORK = "default"


class FakeDomains:
    """Defined domains as a dict; refuses to destroy or undefine names it was told to protect."""

    def __init__(self, domains: list[OwnedDomain], *, others: tuple[str, ...] = (),
                 fail_destroy: tuple[str, ...] = ()) -> None:
        self.domains = {d.name: d for d in domains}
        self.others = set(others)
        """Defined domains without our metadata (owned_domains does not list them)."""
        self.fail_destroy = set(fail_destroy)
        self.calls: list[tuple[str, str]] = []

    def owned_domains(self) -> list[OwnedDomain]:
        return list(self.domains.values())

    def state(self, name: str) -> Optional[str]:
        return "running" if name in self.domains or name in self.others else None

    def owner_of(self, name: str) -> Optional[Owner]:
        return self.domains[name].owner if name in self.domains else None

    def destroy(self, name: str) -> None:
        self.calls.append(("destroy", name))
        if name in self.fail_destroy:
            raise VmIsolationError(f"destroy {name}: refused")
        assert name in self.domains, f"destroy of a domain the reaper must not touch: {name}"

    def undefine(self, name: str) -> None:
        self.calls.append(("undefine", name))
        assert name in self.domains, f"undefine of a domain the reaper must not touch: {name}"
        del self.domains[name]


@dataclass
class FakeLeases:
    by_mac: dict[str, list[Lease]] = field(default_factory=dict)
    released: list[Lease] = field(default_factory=list)

    def all_for(self, network: str, mac: str) -> list[Lease]:
        assert network == NETWORK
        return list(self.by_mac.get(mac, []))

    def release(self, network: str, lease: Lease) -> None:
        self.released.append(lease)
        self.by_mac[lease.mac] = [x for x in self.by_mac.get(lease.mac, []) if x != lease]


@dataclass
class FakeProcesses:
    """pid -> start time of the processes that run."""

    running: dict[int, str] = field(default_factory=dict)

    def is_alive(self, pid: int, start_time: str) -> bool:
        return pid in self.running and (not start_time or self.running[pid] == start_time)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    overlays, keys, owners = tmp_path / "overlays", tmp_path / "keys", tmp_path / "run" / "owners"
    overlays.mkdir()
    keys.mkdir()
    owners.mkdir(parents=True)
    return replace(Settings(), vm=VmSettings(overlay_dir=overlays, key_dir=keys, owner_dir=owners))


def domain(settings: Settings, name: str, pid: int, start: str = "4242", *, executor_id: str = "exec-1",
           disks: Optional[tuple[str, ...]] = None, mac: str = "52:54:00:aa:bb:cc") -> OwnedDomain:
    owner = Owner(framework_id="fw", executor_id=executor_id, task_id="t", executor_pid=pid,
                  executor_start_time=start, created_at=1.0)
    if disks is None:
        disks = (str(settings.vm.overlay_dir / f"{name}.qcow2"),)
    return OwnedDomain(name, "running", owner, (mac,), disks)


def files_of(settings: Settings, name: str) -> tuple[Path, Path]:
    """Create the overlay and key directory a guest called ``name`` would have."""
    overlay = settings.vm.overlay_dir / f"{name}.qcow2"
    overlay.write_bytes(b"QFI\xfb")
    key_dir = settings.vm.key_dir / name
    key_dir.mkdir()
    (key_dir / "id_ed25519").write_text("secret")
    return overlay, key_dir


def later() -> float:
    """A wall clock a minute ahead, so files just created count as older than a zero minimum age."""
    return time.time() + 60


def lease(mac: str, ip: str = "192.168.122.9", hostname: str = "h") -> Lease:
    return Lease(mac, ip, hostname, 2e9, "", "libvirt-api")


def test_a_domain_of_a_dead_executor_is_destroyed_undefined_and_its_files_and_lease_removed(
        settings: Settings) -> None:
    """Dead owner pid: destroy, undefine, release each lease, delete overlay and key dir."""
    overlay, key_dir = files_of(settings, DEAD_NAME)
    hv = FakeDomains([domain(settings, DEAD_NAME, pid=777)])
    leases = FakeLeases({"52:54:00:aa:bb:cc": [lease("52:54:00:aa:bb:cc")]})
    report = reap(settings, hv, leases, processes=FakeProcesses(), wallclock=lambda: NOW)
    assert [(f.kind, f.name) for f in report.found] == [(Kind.DOMAIN, DEAD_NAME)]
    assert hv.calls == [("destroy", DEAD_NAME), ("undefine", DEAD_NAME)]
    assert [x.ip for x in leases.released] == ["192.168.122.9"]
    assert not overlay.exists() and not key_dir.exists()
    assert report.ok and len(report.removed) == 4


def test_a_domain_whose_owner_changed_after_it_was_judged_is_left_alone(settings: Settings) -> None:
    """A pool guest handed over between the listing and the removal: its new owner keeps it."""
    overlay, key_dir = files_of(settings, DEAD_NAME)
    hv = FakeDomains([domain(settings, DEAD_NAME, pid=777)])
    new_owner = Owner(executor_id="exec-2", executor_pid=555, executor_start_time="100")
    hv.owner_of = lambda name: new_owner  # type: ignore[method-assign]
    report = reap(settings, hv, FakeLeases(), processes=FakeProcesses({555: "100"}), wallclock=lambda: NOW)
    assert hv.calls == [] and overlay.exists() and key_dir.exists()
    assert any("owner changed" in line for line in report.kept)


def test_a_domain_whose_owner_is_alive_is_left_alone(settings: Settings) -> None:
    """Owner pid running with the recorded start time: nothing is called, nothing deleted."""
    overlay, key_dir = files_of(settings, LIVE_NAME)
    hv = FakeDomains([domain(settings, LIVE_NAME, pid=555, start="100")])
    report = reap(settings, hv, FakeLeases(), processes=FakeProcesses({555: "100"}),
                  orphan_min_age_s=0, wallclock=later)
    assert report.found == [] and hv.calls == []
    assert overlay.exists() and key_dir.exists()
    assert report.kept == [f"{LIVE_NAME}: owner pid 555, started 100 is alive"]


def test_a_reused_pid_is_detected_by_its_start_time(settings: Settings) -> None:
    """The recorded pid runs, but started at another time: the owner is gone, the domain reaped."""
    hv = FakeDomains([domain(settings, DEAD_NAME, pid=555, start="100")])
    report = reap(settings, hv, FakeLeases(), processes=FakeProcesses({555: "999"}), wallclock=lambda: NOW)
    assert [f.name for f in report.found] == [DEAD_NAME]
    assert ("undefine", DEAD_NAME) in hv.calls


def test_a_domain_with_our_metadata_but_a_foreign_name_is_never_touched(settings: Settings) -> None:
    """Metadata alone is not enough: the name must be one vm-isolation produces."""
    foreign = ["reaper-foreign-test", "vmiso-../../etc", "vmiso-UPPER-0123456789", "vmiso-"]
    hv = FakeDomains([domain(settings, name, pid=777) for name in foreign])
    report = reap(settings, hv, FakeLeases(), processes=FakeProcesses(), wallclock=lambda: NOW)
    assert report.found == [] and hv.calls == []


def test_a_domain_that_recorded_no_owner_pid_is_kept(settings: Settings) -> None:
    """vm-isolation-boot records pid 0: its liveness cannot be judged, so it is never reaped."""
    hv = FakeDomains([domain(settings, DEAD_NAME, pid=0, start="")])
    report = reap(settings, hv, FakeLeases(), processes=FakeProcesses(), wallclock=lambda: NOW)
    assert report.found == [] and hv.calls == []
    assert "no owner pid or owner file recorded" in report.kept[0]


def test_orphaned_overlays_and_key_dirs_without_a_domain_are_removed(settings: Settings) -> None:
    """Files named like our domains, of no defined domain and old enough, are deleted."""
    overlay, key_dir = files_of(settings, DEAD_NAME)
    report = reap(settings, FakeDomains([]), FakeLeases(), processes=FakeProcesses(),
                  orphan_min_age_s=60, wallclock=lambda: overlay.stat().st_mtime + 61)
    assert sorted((f.kind, f.path) for f in report.found) == [
        (Kind.KEY_DIR, str(key_dir)), (Kind.OVERLAY, str(overlay))]
    assert not overlay.exists() and not key_dir.exists()
    assert report.ok


def test_orphan_files_that_are_too_young_or_foreign_or_of_a_defined_domain_are_kept(settings: Settings) -> None:
    """A booting guest's fresh overlay, a foreign file and a defined (foreign) domain's files stay."""
    young, _ = files_of(settings, DEAD_NAME)
    defined, defined_key = files_of(settings, LIVE_NAME)
    other = settings.vm.overlay_dir / "someone-elses.qcow2"
    other.write_text("x")
    not_ours = settings.vm.key_dir / "vmiso-notahexsuffix"
    not_ours.mkdir()
    old = young.stat().st_mtime - 3600
    os.utime(defined, (old, old))
    os.utime(defined_key, (old, old))
    hv = FakeDomains([], others=(LIVE_NAME,))
    report = reap(settings, hv, FakeLeases(), processes=FakeProcesses(), orphan_min_age_s=60,
                  wallclock=lambda: young.stat().st_mtime + 1)
    assert report.found == []
    assert all(p.exists() for p in (young, defined, defined_key, other, not_ours))


def test_a_dry_run_lists_everything_and_touches_nothing(settings: Settings) -> None:
    """With dry_run the report lists the dead domain and the orphans; no call, no deletion."""
    overlay, key_dir = files_of(settings, DEAD_NAME)
    orphan, orphan_key = files_of(settings, "vmiso-orphan-0123456789")
    hv = FakeDomains([domain(settings, DEAD_NAME, pid=777)])
    leases = FakeLeases({"52:54:00:aa:bb:cc": [lease("52:54:00:aa:bb:cc")]})
    report = reap(settings, hv, leases, processes=FakeProcesses(), orphan_min_age_s=0,
                  dry_run=True, wallclock=later)
    assert sorted(f.kind.value for f in report.found) == ["domain", "key_dir", "overlay"]
    assert hv.calls == [] and leases.released == [] and report.removed == []
    assert all(p.exists() for p in (overlay, key_dir, orphan, orphan_key))
    json.dumps(report.to_dict())  # the CLI's --json must be able to print it


def test_a_disk_outside_the_overlay_dir_is_never_deleted(settings: Settings, tmp_path: Path) -> None:
    """A reaped domain whose XML names disks elsewhere (or via ../) leaves those files alone."""
    outside = tmp_path / "precious.qcow2"
    outside.write_text("keep me")
    sneaky = settings.vm.overlay_dir / ".." / "precious.qcow2"
    hv = FakeDomains([domain(settings, DEAD_NAME, pid=777, disks=(str(outside), str(sneaky), "/etc/passwd"))])
    report = reap(settings, hv, FakeLeases(), processes=FakeProcesses(), wallclock=lambda: NOW)
    assert [f.name for f in report.found] == [DEAD_NAME]
    assert outside.read_text() == "keep me" and Path("/etc/passwd").exists()
    assert not any("precious" in line or "passwd" in line for line in report.removed)


def test_a_symlinked_key_dir_is_unlinked_not_followed(settings: Settings, tmp_path: Path) -> None:
    """A key 'directory' that is a symlink elsewhere loses the link, never the target's files."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "file").write_text("keep")
    (settings.vm.key_dir / DEAD_NAME).symlink_to(target)
    reap(settings, FakeDomains([domain(settings, DEAD_NAME, pid=777)]), FakeLeases(),
         processes=FakeProcesses(), wallclock=lambda: NOW)
    assert (target / "file").read_text() == "keep"
    assert not (settings.vm.key_dir / DEAD_NAME).is_symlink()


def test_only_executor_id_restricts_reaping_to_that_executors_domains(settings: Settings) -> None:
    """At executor start-up only its own dead domains go; others' and orphan files are not scanned."""
    mine, theirs = "vmiso-mine-0123456789", "vmiso-theirs-0123456789"
    orphan, _ = files_of(settings, "vmiso-orphan-0123456789")
    hv = FakeDomains([domain(settings, mine, pid=777, executor_id="me"),
                      domain(settings, theirs, pid=778, executor_id="other")])
    report = reap(settings, hv, FakeLeases(), processes=FakeProcesses(), only_executor_id="me",
                  orphan_min_age_s=0, wallclock=later)
    assert [f.name for f in report.found] == [mine]
    assert theirs in hv.domains and orphan.exists()


def test_a_failed_destroy_is_reported_and_keeps_the_domains_files(settings: Settings) -> None:
    """If libvirt refuses, the error is in the report, ok is False and the overlay stays."""
    overlay, key_dir = files_of(settings, DEAD_NAME)
    hv = FakeDomains([domain(settings, DEAD_NAME, pid=777)], fail_destroy=(DEAD_NAME,))
    report = reap(settings, hv, FakeLeases(), processes=FakeProcesses(), wallclock=lambda: NOW)
    assert not report.ok and "refused" in report.errors[0]
    assert overlay.exists() and key_dir.exists()


def test_the_proc_process_table_knows_this_process_and_rejects_a_wrong_start_time(tmp_path: Path) -> None:
    """/proc: our own pid with its start time is alive; another start time, pid 0 or a zombie is not."""
    table = ProcProcessTable()
    start = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[-1].split()[19]
    assert table.is_alive(os.getpid(), start)
    assert table.is_alive(os.getpid(), "")
    assert not table.is_alive(os.getpid(), start + "1")
    assert not table.is_alive(0, "")
    fake_proc = tmp_path / "proc"
    (fake_proc / "42").mkdir(parents=True)
    (fake_proc / "42" / "stat").write_text("42 (a) b) Z " + " ".join(["0"] * 19) + " 77 0\n")
    assert not ProcProcessTable(fake_proc).is_alive(42, "77")
    assert not ProcProcessTable(fake_proc).is_alive(43, "77")


class _NoHypervisor:
    def __init__(self, uri: str) -> None:
        self.uri = uri

    def close(self) -> None:
        pass


@pytest.mark.parametrize("errors,code", [([], 0), (["cannot delete /x: busy"], 1)])
def test_the_cli_prints_json_and_exits_1_only_when_a_removal_failed(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], settings: Settings,
        errors: list[str], code: int) -> None:
    """vm-isolation-reap --json prints the report and exits 0 on success, 1 when something failed."""
    pytest.importorskip("libvirt", reason="the CLI is composed with the libvirt adapter (wiring)")
    from vm_isolation.cli import reap as cli
    from vm_isolation.reaper import ReapReport

    seen: dict[str, object] = {}

    def fake_reap(*args: object, **kwargs: object) -> ReapReport:
        seen.update(kwargs)
        return ReapReport(dry_run=bool(kwargs["dry_run"]), errors=list(errors))

    monkeypatch.setattr(cli, "load_settings", lambda path: settings)
    monkeypatch.setattr(cli, "real_hypervisor", lambda settings, **kwargs: _NoHypervisor(""))
    monkeypatch.setattr(cli, "reap", fake_reap)
    assert cli.main(["--dry-run", "--json", "--min-age", "5"]) == code
    assert json.loads(capsys.readouterr().out)["errors"] == errors
    assert seen["dry_run"] is True and seen["orphan_min_age_s"] == 5.0


MAC = "52:54:00:0a:0b:0c"


def journal_of(tmp_path: Path, settings: Settings, name: str, pid: int = 777, start: str = "4242",
               overlay: Optional[str] = None) -> Path:
    """The journal an executor (pid, start) left after creating ``name``'s resources."""
    journal = Journal(tmp_path / "sandbox" / "journal.jsonl", Owner(executor_id="exec-1", executor_pid=pid,
                                                                     executor_start_time=start))
    journal.creating("overlay", name, path=overlay or str(settings.vm.overlay_dir / f"{name}.qcow2"))
    journal.creating("key_dir", name, path=str(settings.vm.key_dir / name))
    journal.creating("domain", name)
    journal.creating("lease", name, mac=MAC, network=NETWORK)
    journal.creating("launcher", name, path="/tmp/vmiso-launch-1.sh")
    journal.close()
    return journal.path


def test_a_dead_executors_journal_finishes_its_teardown_at_once(settings: Settings, tmp_path: Path) -> None:
    """Crash after the overlay and key existed but with no domain defined (or one already
    undefined): the journal's overlay, key dir and lease go at once, with no minimum age; a
    lease of the same MAC held by another hostname is not released."""
    overlay, key_dir = files_of(settings, DEAD_NAME)
    mine, other = lease(MAC, "192.168.122.7", DEAD_NAME), lease(MAC, "192.168.122.8", "someone-else")
    leases = FakeLeases({MAC: [mine, other]})
    report = reap(settings, FakeDomains([]), leases, processes=FakeProcesses(), orphan_files=False,
                  journals=[journal_of(tmp_path, settings, DEAD_NAME)])
    assert [(f.kind, f.path) for f in report.found] == [
        (Kind.OVERLAY, str(overlay)), (Kind.KEY_DIR, str(key_dir)), (Kind.LEASE, "192.168.122.7")]
    assert not overlay.exists() and not key_dir.exists()
    assert leases.released == [mine] and report.ok


def test_a_journal_whose_owner_is_alive_or_whose_domain_is_defined_is_left_alone(
        settings: Settings, tmp_path: Path) -> None:
    overlay, key_dir = files_of(settings, DEAD_NAME)
    leases = FakeLeases({MAC: [lease(MAC, hostname=DEAD_NAME)]})
    alive = reap(settings, FakeDomains([]), leases, processes=FakeProcesses({777: "4242"}),
                 orphan_files=False, journals=[journal_of(tmp_path, settings, DEAD_NAME)])
    assert alive.found == [] and alive.kept[-1].endswith("owner pid 777, started 4242 is alive")
    defined = reap(settings, FakeDomains([], others=(DEAD_NAME,)), leases, processes=FakeProcesses(),
                   orphan_files=False, journals=[journal_of(tmp_path, settings, DEAD_NAME)])
    assert defined.found == [] and overlay.exists() and key_dir.exists() and leases.released == []


def test_a_journal_naming_a_path_we_never_create_deletes_nothing(settings: Settings, tmp_path: Path) -> None:
    """The sandbox is not ours alone: a journal cannot steer the reaper at arbitrary files."""
    victim = tmp_path / "precious"
    victim.write_text("keep me")
    report = reap(settings, FakeDomains([]), FakeLeases(), processes=FakeProcesses(), orphan_files=False,
                  journals=[journal_of(tmp_path, settings, DEAD_NAME, overlay=str(victim))])
    assert victim.read_text() == "keep me"
    assert any("not where vm-isolation puts" in e for e in report.errors)


def test_a_dry_run_over_a_journal_lists_and_keeps(settings: Settings, tmp_path: Path) -> None:
    overlay, key_dir = files_of(settings, DEAD_NAME)
    report = reap(settings, FakeDomains([]), FakeLeases(), processes=FakeProcesses(), orphan_files=False,
                  journals=[journal_of(tmp_path, settings, DEAD_NAME)], dry_run=True)
    assert {f.kind for f in report.found} == {Kind.OVERLAY, Kind.KEY_DIR}
    assert overlay.exists() and key_dir.exists() and report.removed == []


def test_an_unreadable_journal_is_an_error_not_a_crash(settings: Settings, tmp_path: Path) -> None:
    report = reap(settings, FakeDomains([]), FakeLeases(), processes=FakeProcesses(), orphan_files=False,
                  journals=[tmp_path / "missing.jsonl"])
    assert report.errors and "cannot read the journal" in report.errors[0]


def test_journal_files_are_not_reported_twice_by_the_orphan_scan(settings: Settings, tmp_path: Path) -> None:
    overlay, key_dir = files_of(settings, DEAD_NAME)
    report = reap(settings, FakeDomains([]), FakeLeases(), processes=FakeProcesses(), orphan_min_age_s=0,
                  wallclock=later, journals=[journal_of(tmp_path, settings, DEAD_NAME)], dry_run=True)
    assert sorted(f.path for f in report.found) == sorted([str(overlay), str(key_dir)])


def test_an_agent_port_opening_whose_guest_is_gone_is_closed_and_a_live_guests_is_kept(settings: Settings) -> None:
    """Full pass: an opening for an IP no defined domain of ours holds is closed; the opening of
    a live guest (its MAC's lease holds the IP) stays."""
    from tests.unit.fakes import FakeFirewall

    hv = FakeDomains([domain(settings, LIVE_NAME, pid=555, start="100")])
    live_mac = hv.domains[LIVE_NAME].macs[0]
    leases = FakeLeases({live_mac: [lease(live_mac, ip="192.168.122.20")]})
    ports = FakeFirewall()
    ports.opened = {("192.168.122.20", 5051), ("192.168.122.99", 5051)}
    report = reap(settings, hv, leases, processes=FakeProcesses({555: "100"}), orphan_min_age_s=0,
                  wallclock=later, ports=ports)
    assert ports.opened == {("192.168.122.20", 5051)}
    assert [f.path for f in report.found if f.kind.value == "agent_port"] == ["192.168.122.99:5051"]
    assert report.removed == ["closed agent port 192.168.122.99:5051"]


def test_a_cloud_init_guests_seed_goes_with_its_domain_its_journal_or_as_an_orphan(
        settings: Settings, tmp_path: Path) -> None:
    """The seed next to the overlay is deleted with a reaped domain, from a dead owner's journal,
    and as an old orphan; a foreign .seed.iso is kept."""
    dead_seed = settings.vm.overlay_dir / f"{DEAD_NAME}.seed.iso"
    files_of(settings, DEAD_NAME)
    dead_seed.write_bytes(b"CD001")
    hv = FakeDomains([domain(settings, DEAD_NAME, pid=777)])
    reap(settings, hv, FakeLeases(), processes=FakeProcesses(), wallclock=lambda: NOW)
    assert not dead_seed.exists()

    journalled = settings.vm.overlay_dir / "vmiso-journalled-0123456789.seed.iso"
    journalled.write_bytes(b"CD001")
    journal = Journal(tmp_path / "sb" / "journal.jsonl", Owner(executor_id="e", executor_pid=777,
                                                               executor_start_time="4242"))
    journal.creating("seed", "vmiso-journalled-0123456789", path=str(journalled))
    journal.close()
    report = reap(settings, FakeDomains([]), FakeLeases(), processes=FakeProcesses(), orphan_files=False,
                  journals=[journal.path])
    assert [(f.kind, f.path) for f in report.found] == [(Kind.SEED, str(journalled))] and not journalled.exists()

    orphan = settings.vm.overlay_dir / "vmiso-orphan-0123456789.seed.iso"
    foreign = settings.vm.overlay_dir / "not-ours.seed.iso"
    for path in (orphan, foreign):
        path.write_bytes(b"CD001")
    report = reap(settings, FakeDomains([]), FakeLeases(), processes=FakeProcesses(), orphan_min_age_s=60,
                  wallclock=lambda: orphan.stat().st_mtime + 61)
    assert (Kind.SEED, str(orphan)) in [(f.kind, f.path) for f in report.found]
    assert not orphan.exists() and foreign.exists()
