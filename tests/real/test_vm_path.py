"""The VM path against the real stack: base image -> overlay -> guest -> lease -> SSH -> command."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.real.conftest import Leftovers
from vm_isolation.config import Settings
from vm_isolation.errors import AddressTimeout, TransferError
from vm_isolation.guest import GuestFactory, GuestRequest
from vm_isolation.guestrun import run_launcher
from vm_isolation.hypervisor import LibvirtHypervisor
from vm_isolation.ids import domain_name_for
from vm_isolation.launch_script import LaunchSpec
from vm_isolation.wiring import real_launcher

PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
BIN_FIND_ADDR = Path(__file__).resolve().parents[2] / "bin" / "find_addr.py"


def request(settings: Settings, hint: str) -> GuestRequest:
    return GuestRequest(name=domain_name_for(hint), base_image=settings.images.base(settings.images.default),
                        memory_mib=settings.vm.default_memory_mib)


def test_a_launcher_runs_in_a_fresh_guest_and_everything_is_removed(
        settings: Settings, launcher: GuestFactory, leftovers: Leftovers) -> None:
    """The guest prints its own hostname, exits 7, and teardown leaves no domain, overlay, key or lease."""
    before = leftovers.snapshot()
    req = request(settings, "exit7")
    out: list[bytes] = []
    started: list[int] = []
    with launcher.boot(req) as guest:
        mac = guest.mac
        assert leftovers.hv.state(req.name) == "running"
        spec = LaunchSpec(workdir=settings.executor.guest_sandbox, env={"PATH": PATH},
                          shell_command='hostname; echo "$0"; exit 7')
        status = run_launcher(guest, spec, on_started=started.append, on_stdout=out.append,
                              on_stderr=lambda b: None)
        assert set(guest.timings) == {"overlay", "define", "start", "lease", "ssh", "ssh.console", "ssh.connect"}
        # Where the launcher cannot be written, that is what the error says (not "exited with 121").
        assert guest.remote.run("mount -t tmpfs -o ro,size=64k vmiso-ro /tmp") == 0
        with pytest.raises(TransferError, match=f"could not write the launcher to /tmp/vmiso-launch-.* in {req.name}"):
            run_launcher(guest, spec, on_started=started.append, on_stdout=out.append, on_stderr=lambda b: None)
    assert status.code == 7
    assert b"".join(out).decode() == f"{req.name}\n/bin/sh\n"
    assert len(started) == 1 and started[0] > 1
    leftovers.assert_none_since(before, {mac}, prefixes=[req.name])


def test_writes_stay_in_the_overlay_and_argv0_is_kept(
        settings: Settings, launcher: GuestFactory, leftovers: Leftovers) -> None:
    """A file written in one guest is absent from the next (base untouched); argv[0] is passed."""
    before = leftovers.snapshot()
    base = settings.images.base(settings.images.default)
    base_bytes = base.stat().st_size
    outputs = []
    names = []
    for hint in ("write", "read"):
        out: list[bytes] = []
        req = request(settings, hint)
        names.append(req.name)
        with launcher.boot(req) as guest:
            spec = LaunchSpec(workdir="/", env={"PATH": PATH}, executable="/bin/busybox",
                              arguments=["sh", "-c", "cat /marker 2>/dev/null || echo absent; echo x > /marker; sync"])
            run_launcher(guest, spec, on_started=lambda p: None, on_stdout=out.append, on_stderr=lambda b: None)
        outputs.append(b"".join(out))
    assert outputs == [b"absent\n", b"absent\n"]
    assert base.stat().st_size == base_bytes
    leftovers.assert_none_since(before, prefixes=names)


def test_a_guest_that_never_gets_a_lease_fails_with_the_named_error(
        settings: Settings, hypervisor: LibvirtHypervisor, leftovers: Leftovers) -> None:
    """On a network without DHCP the boot fails with AddressTimeout quoting the console, and cleans up."""
    net = "vmiso-test-nodhcp"
    hypervisor.redefine_network(net, f"""<network><name>{net}</name>
      <bridge name='vmisotest0' stp='off'/><ip address='192.168.251.1' netmask='255.255.255.0'/></network>""",
                                restart=False)
    try:
        hypervisor.start_network(net)
        s = dataclasses.replace(settings, libvirt=dataclasses.replace(settings.libvirt, network=net),
                                vm=dataclasses.replace(settings.vm, boot_timeout_s=20),
                                # a scratch network the host's table does not cover
                                network=dataclasses.replace(settings.network, isolation="off"))
        before = leftovers.snapshot()
        req = request(s, "nolease")
        with pytest.raises(AddressTimeout) as info, real_launcher(s, hypervisor).boot(req):
            pass
        assert info.value.phase == "lease"
        assert "VMISO-HOSTKEY" in info.value.console_tail
        leftovers.assert_none_since(before, prefixes=[req.name])
    finally:
        hypervisor.remove_network(net)


@pytest.fixture
def running_guest(settings: Settings, launcher: GuestFactory, leftovers: Leftovers):  # type: ignore[no-untyped-def]
    before = leftovers.snapshot()
    req = request(settings, "findaddr")
    with launcher.boot(req) as guest:
        yield guest
    leftovers.assert_none_since(before, {guest.mac}, prefixes=[req.name])


def find_addr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vm_isolation.cli.find_addr", *args],
                          capture_output=True, text=True, timeout=60)


def test_find_addr_prints_a_real_guests_address(running_guest) -> None:  # type: ignore[no-untyped-def]
    """find_addr NAME, find_addr MAC and bin/find_addr.py all print the leased IPv4."""
    assert find_addr(running_guest.name).stdout == f"{running_guest.ip}\n"
    assert find_addr(running_guest.mac).stdout == f"{running_guest.ip}\n"
    script = subprocess.run([sys.executable, str(BIN_FIND_ADDR), running_guest.name],
                            capture_output=True, text=True, timeout=60)
    assert (script.returncode, script.stdout) == (0, f"{running_guest.ip}\n")


def test_find_addr_json_tells_where_the_address_came_from(running_guest) -> None:  # type: ignore[no-untyped-def]
    """--json gives mac, ip, lease source, hostname, expiry and the wait."""
    result = find_addr(running_guest.name, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["ip"] == running_guest.ip and data["mac"] == running_guest.mac
    assert data["source"] == "libvirt-api"
    assert data["hostname"] == running_guest.name
    assert data["expiry_time"] > 0 and data["waited_s"] >= 0


def test_find_addr_exit_codes_for_missing_things() -> None:
    """4 for an unknown domain, 3 for a MAC with no lease, 5 when libvirt cannot be reached."""
    assert find_addr("vmiso-no-such-domain").returncode == 4
    assert find_addr("52:54:00:00:00:01", "--wait", "0.3").returncode == 3
    unreachable = subprocess.run(
        [sys.executable, "-m", "vm_isolation.cli.find_addr", "x"], capture_output=True, text=True, timeout=60,
        env={"VM_ISOLATION_LIBVIRT_URI": "qemu+unix:///system?socket=/nonexistent/sock", "PATH": "/usr/bin:/bin"})
    assert unreachable.returncode == 5, unreachable.stderr
    assert "host-setup" in unreachable.stderr


@pytest.mark.parametrize("kind", ["fast", "debian"])
def test_each_kernel_boots_the_same_disk_and_only_debians_has_modules_and_cgroups(
        kind: str, settings: Settings, launcher: GuestFactory, leftovers: Leftovers) -> None:
    """The fast kernel boots without an initramfs straight into the disk's init; Debian's kernel
    (``kernel = debian``, for tasks that need them) boots with its initramfs and has loadable
    modules and cgroups. Either way the guest comes up with its host key, address and SSH."""
    before = leftovers.snapshot()
    req = dataclasses.replace(request(settings, f"kern-{kind}"), kernel=settings.images.guest_kernel(kind))
    out: list[bytes] = []
    with launcher.boot(req) as guest:
        mac = guest.mac
        spec = LaunchSpec(workdir="/", env={"PATH": PATH}, shell_command=(
            "uname -r; test -e /proc/modules && echo modules; grep -qw cgroup2 /proc/filesystems && echo cgroups; "
            "grep -q ' / ext4 ' /proc/mounts && echo root-ext4"))
        status = run_launcher(guest, spec, on_started=lambda pgid: None, on_stdout=out.append,
                              on_stderr=lambda b: None)
    assert status.code == 0
    release, *facts = b"".join(out).decode().split()
    if kind == "fast":
        assert release.endswith("-vmiso-fast") and facts == ["root-ext4"]
    else:
        assert release.endswith("-amd64") and facts == ["modules", "cgroups", "root-ext4"]
    leftovers.assert_none_since(before, {mac}, prefixes=[req.name])
