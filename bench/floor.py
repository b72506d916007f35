"""Floor: one guest booted through the library alone (no executor), as vm-isolation-boot does.

define -> start -> lease -> SSH -> ``true`` through the launcher script -> teardown. The
``total`` includes teardown, because the executor sends TASK_FINISHED only after it.
"""

from __future__ import annotations

from vm_isolation.guest import GuestLauncher
from vm_isolation.launcher import LaunchSpec
from vm_isolation.taskrun import run_launcher
from vm_isolation.wiring import real_launcher

from .common import BenchContext, Section, guest_request, now, repetitions

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run(ctx: BenchContext) -> Section:
    section = Section("floor")
    launcher = real_launcher(ctx.settings, ctx.hypervisor)
    section.extra["domain_type"] = launcher.domain_type
    for _ in repetitions(section, ctx.reps):
        try:
            _one(ctx, launcher, section)
        except Exception as exc:  # noqa: BLE001 - a failed repetition is counted, never fatal
            section.fail(f"boot failed: {exc}")
    return section


def _one(ctx: BenchContext, launcher: GuestLauncher, section: Section) -> None:
    request = guest_request(ctx, "bench-floor")
    spec = LaunchSpec(workdir="/", env={"PATH": PATH, "HOME": "/root"}, shell_command="true",
                      executable=None, arguments=[])
    started_at: list[float] = []
    t0 = now()
    with launcher.boot(request) as guest:
        booted = now()
        status = run_launcher(guest, spec, on_started=lambda pgid: started_at.append(now()),
                              on_stdout=lambda b: None, on_stderr=lambda b: None)
        ran = now()
        phases = dict(guest.timings)
    done = now()
    if status.code != 0:
        section.fail(f"`true` ended with {status.describe()}")
        return
    for phase, seconds in phases.items():
        section.add(f"phase.{phase}", seconds)
    section.add("boot", booted - t0)
    if started_at:
        section.add("command_started", started_at[0] - t0)
    section.add("phase.run", ran - booted)
    section.add("command_done", ran - t0)
    section.add("teardown", done - ran)
    section.add("total", done - t0)
