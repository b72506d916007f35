"""cloud-init: create -> SSH command on the debian-cloud image (kind cloud-init: its own disk,
bootloader and kernel, systemd, cloud-init reading a per-task NoCloud seed), next to the same
measurement on busybox (direct-kernel) taken in the same run, alternating, so the two rows see
the same host load. Repetitions default to 1: a cloud boot under emulation takes minutes.
"""

from __future__ import annotations

from pathlib import Path

from vm_isolation.guest import GuestFactory, GuestRequest
from vm_isolation.guestrun import run_launcher
from vm_isolation.ids import domain_name_for
from vm_isolation.launch_script import GUEST_PATH, LaunchSpec
from vm_isolation.wiring import real_launcher

from .common import BenchContext, Section, now, repetitions

CLOUD_IMAGE = "debian-cloud"
CLOUD_MEM_MIB = 512


def run(ctx: BenchContext, reps: int = 1) -> Section:
    section = Section("cloud-init")
    images = ctx.settings.images
    if CLOUD_IMAGE not in images.bases or not images.base(CLOUD_IMAGE).exists():
        section.fail(f"no [image:{CLOUD_IMAGE}] built: make image (scripts/build-cloud-image.sh)")
        return section
    launcher = real_launcher(ctx.settings, ctx.hypervisor)
    for _ in repetitions(section, reps):
        for label, image, mem in (("busybox", images.default, 192), ("cloud", CLOUD_IMAGE, CLOUD_MEM_MIB)):
            try:
                _one(launcher, ctx, section, label, image, mem)
            except Exception as exc:  # noqa: BLE001 - a failed repetition is counted, never fatal
                section.fail(f"{label} boot failed: {exc}")
    return section


def _one(launcher: GuestFactory, ctx: BenchContext, section: Section, label: str, image: str, mem: int) -> None:
    profile = ctx.settings.images.profile(image)
    request = GuestRequest(name=domain_name_for(f"bench-{label}"), base_image=profile.path, profile=profile,
                           memory_mib=mem, console_log=ctx.work_dir / f"{label}.console")
    t0 = now()
    with launcher.boot(request) as guest:
        spec = LaunchSpec(workdir="/", env={"PATH": GUEST_PATH, "HOME": guest.home}, shell_command="true")
        status = run_launcher(guest, spec, on_started=lambda pgid: None, on_stdout=lambda b: None,
                              on_stderr=lambda b: None)
        ran = now()
        phases = dict(guest.timings)
    if status.code != 0:
        section.fail(f"{label}: `true` ended with {status.describe()}")
        return
    for phase, seconds in phases.items():
        section.add(f"{label}.phase.{phase}", seconds)
    section.add(f"{label}.create_to_ssh_command", ran - t0)
    Path(ctx.work_dir / f"{label}.console").unlink(missing_ok=True)
