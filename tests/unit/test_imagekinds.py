"""The image-profile seam on fakes: the cloud-init kind boots from its own disk with a per-task
seed (journalled, removed on every path), a host key pinned before boot, the login user, its
HOME and its own boot deadline; the direct-kernel kind is what it always was."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import pytest

from tests.unit.fakes import FakeConnector, FakeHypervisor, FakeRemote
from tests.unit.test_guest import NAME, World
from vm_isolation import cloudseed, domainxml
from vm_isolation.config import ImageProfile, Settings
from vm_isolation.errors import AddressTimeout, SshUnavailable
from vm_isolation.guest import GuestRequest
from vm_isolation.imagekinds import kind_for
from vm_isolation.imagekinds.cloudinit import CloudInitKind
from vm_isolation.journal import Journal, read_journal
from vm_isolation.sshkeys import HostKeyPair

PROFILE = ImageProfile(path=Path("/images/debian-cloud.qcow2"), kind="cloud-init", user="debian",
                       boot_timeout_s=200.0)
HOST_KEY = HostKeyPair("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
                       "ssh-ed25519 AAAAguesthostkey")


class Seeds:
    """The seed writer: keeps the documents, makes the file so teardown has something to remove."""

    def __init__(self) -> None:
        self.written: dict[Path, Mapping[str, str]] = {}

    def write(self, files: Mapping[str, str], path: Path, work_dir: Path) -> Path:
        assert work_dir.is_dir()  # the guest's private key directory exists by then
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("seed")
        self.written[path] = files
        return path


def _session_setup_only(remote: FakeRemote, command: str, out: object, err: object) -> int:
    """The cloud-init kind's one command after SSH: give the login user its directories."""
    assert command.startswith("sudo -n install -d "), command
    return 0


def cloud_world(tmp_path: Path, hv: FakeHypervisor | None = None, connector: FakeConnector | None = None
                ) -> tuple[World, Seeds]:
    seeds = Seeds()
    w = World(tmp_path, hv or FakeHypervisor(), connector or FakeConnector(handler=_session_setup_only))
    w.launcher._kinds = lambda settings, profile, kernel=None: (  # type: ignore[assignment]
        CloudInitKind(profile, write_seed=seeds.write, make_host_key=lambda: HOST_KEY)
        if profile.kind == "cloud-init" else kind_for(settings, profile))
    w.request = GuestRequest(name=NAME, base_image=PROFILE.path, profile=PROFILE,
                             journal=Journal(tmp_path / "journal.jsonl", w.request.owner))
    return w, seeds


def seed_file(w: World) -> Path:
    return w.settings.vm.overlay_dir / f"{NAME}.seed.iso"


def test_a_cloud_init_guest_boots_from_its_disk_with_its_seed_and_a_pinned_host_key(tmp_path: Path) -> None:
    w, seeds = cloud_world(tmp_path)
    phases: list[str] = []
    with w.launcher.boot(w.request, progress=lambda p, s: phases.append(p)) as guest:
        spec = w.hv.specs[NAME]
        assert spec.kernel is None and spec.seed == seed_file(w) and seed_file(w).exists()
        session = w.connector.sessions[0]
        assert session.host_key == "ssh-ed25519 AAAAguesthostkey"  # pinned, not read from the console
        assert guest.user == "debian" and guest.home == "/home/debian"
        assert "sudo -n install -d" in session.commands[0] and "/mnt/mesos/sandbox" in session.commands[0]
        user_data = seeds.written[seed_file(w)]["user-data"]
        assert "ssh-ed25519 AAAAclientkey" in user_data and "AAAAguesthostkey" in user_data
    assert phases == ["overlay", "seed", "define", "start", "lease", "ssh"]
    assert not seed_file(w).exists()
    journal = read_journal(tmp_path / "journal.jsonl")
    assert journal.outstanding == []  # the seed was recorded, and its removal too
    assert '"kind": "seed"' in (tmp_path / "journal.jsonl").read_text()
    w.assert_nothing_left()


def test_the_seed_is_removed_when_the_define_fails(tmp_path: Path) -> None:
    w, _ = cloud_world(tmp_path)
    w.hv.define = lambda spec: (_ for _ in ()).throw(RuntimeError("define refused"))  # type: ignore[method-assign]
    with pytest.raises(RuntimeError), w.launcher.boot(w.request):
        pass
    assert not seed_file(w).exists()
    assert "seed" not in {r.kind for r in read_journal(tmp_path / "journal.jsonl").outstanding}
    w.assert_nothing_left()


def test_the_kinds_boot_deadline_bounds_lease_and_ssh(tmp_path: Path) -> None:
    """No lease: AddressTimeout in phase lease after the kind's own deadline, naming its key."""
    w, _ = cloud_world(tmp_path, FakeHypervisor(gives_lease=False))
    w.request = replace(w.request, profile=replace(PROFILE, boot_timeout_s=45.0))
    with pytest.raises(AddressTimeout) as info, w.launcher.boot(w.request):
        pass
    assert info.value.phase == "lease" and "boot_timeout_s ([image:NAME])" in str(info.value)
    assert sum(w.clock.sleeps) == pytest.approx(45, abs=0.2)
    assert not seed_file(w).exists()


def test_no_ssh_within_the_deadline_names_the_phase_and_quotes_the_console(tmp_path: Path) -> None:
    w, _ = cloud_world(tmp_path, connector=FakeConnector(SshUnavailable("connection refused", phase="ssh")))
    w.request = replace(w.request, profile=replace(PROFILE, boot_timeout_s=20.0))
    refuse = w.launcher._connect

    def slow_refusal(*args: object, **kw: object) -> object:
        w.clock.sleep(3.0)  # an attempt takes its time, as a real one does
        return refuse(*args, **kw)

    w.launcher._connect = slow_refusal  # type: ignore[assignment]
    with pytest.raises(SshUnavailable) as info, w.launcher.boot(w.request):
        pass
    assert info.value.phase == "ssh" and "as 'debian'" in str(info.value) and "cloud-init" in str(info.value)
    assert "Linux booting" in info.value.console_tail
    w.assert_nothing_left()


def test_a_login_user_that_cannot_get_the_sandbox_fails_the_boot(tmp_path: Path) -> None:
    connector = FakeConnector()
    w, _ = cloud_world(tmp_path, connector=connector)
    original = connector.__call__

    def connect(host: str, **kw: object):  # type: ignore[no-untyped-def]
        remote = original(host, **kw)  # type: ignore[arg-type]
        remote.handler = lambda r, c, o, e: 1
        remote.run_capture = lambda command, timeout_s=None: (1, b"", b"sudo: a password is required")  # type: ignore[attr-defined]
        return remote

    w.launcher._connect = connect
    with pytest.raises(SshUnavailable, match="password-less sudo"), w.launcher.boot(w.request):
        pass
    w.assert_nothing_left()


def test_root_as_the_login_user_needs_no_session_setup() -> None:
    kind = CloudInitKind(replace(PROFILE, user="root"))
    assert kind.home == "/root" and kind.session_setup(("/mnt/mesos/sandbox",)) is None


def test_the_direct_kernel_kind_keeps_the_kernel_command_line_and_the_console_host_key(tmp_path: Path) -> None:
    w = World(tmp_path, FakeHypervisor())
    with w.launcher.boot(w.request) as guest:
        spec = w.hv.specs[NAME]
        assert spec.kernel == Settings().images.fast_kernel and spec.initrd is None and spec.seed is None
        assert "vmiso.authkey=ssh-ed25519:AAAAclientkey" in spec.cmdline and "root=/dev/vda" in spec.cmdline
        assert w.connector.sessions[0].host_key == "ssh-ed25519 AAAAhostkey"
        assert guest.user == "root" and guest.home == "/root"


def test_a_disk_boot_domain_has_no_kernel_boots_hd_and_attaches_the_seed_read_only() -> None:
    from tests.unit.test_domainxml import spec as domain_spec
    xml = domainxml.render(replace(domain_spec(), kernel=None, initrd=None, cmdline="",
                                   seed=Path("/var/lib/vm-isolation/overlays/vmiso-x-0123456789.seed.iso")))
    root = ET.fromstring(xml)
    assert root.find("os/kernel") is None and root.find("os/cmdline") is None
    assert root.find("os/boot").get("dev") == "hd"  # type: ignore[union-attr]
    assert root.find("os/bios").get("useserial") == "yes"  # type: ignore[union-attr]
    seed = [d for d in root.findall("devices/disk") if d.find("target").get("dev") == "vdb"]  # type: ignore[union-attr]
    assert len(seed) == 1 and seed[0].find("readonly") is not None
    assert seed[0].find("driver").get("type") == "raw"  # type: ignore[union-attr]


def test_the_seed_names_the_guest_and_its_user() -> None:
    docs = cloudseed.documents(cloudseed.Seed(NAME, NAME, "debian", "ssh-ed25519 AAAAclientkey",
                                              HOST_KEY.public_openssh, HOST_KEY.private_openssh))
    assert f'"local-hostname": "{NAME}"' in docs["meta-data"] and '"name": "debian"' in docs["user-data"]
