"""Floor: one guest booted through the library alone (no executor), as vm-isolation-boot does.

define -> start -> lease -> SSH -> ``true`` through the launcher script -> teardown. The
``total`` includes teardown, because the executor sends TASK_FINISHED only after it. Each
repetition boots the configured kernel and then the comparison kernel (:mod:`bench.kernels`);
``qemu_cpu_s`` is the CPU time qemu has used when the command is done, just before the
domain is destroyed: the cost of one boot plus ``true``.
"""

from __future__ import annotations

from vm_isolation.guest import GuestFactory
from vm_isolation.guestrun import run_launcher
from vm_isolation.launch_script import LaunchSpec
from vm_isolation.wiring import real_launcher

from .common import BenchContext, Section, guest_request, now, repetitions
from .kernels import KernelRun, qemu_cpu_s, runs

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run(ctx: BenchContext) -> Section:
    section = Section("floor")
    launcher = real_launcher(ctx.settings, ctx.hypervisor)
    section.extra["domain_type"] = launcher.domain_type
    kernels = runs(ctx.settings, ctx.work_dir, ctx.compare_kernel)
    section.extra["kernels"] = {k.prefix: {"kind": k.kernel.kind, "path": str(k.kernel.path)} for k in kernels}
    for _ in repetitions(section, ctx.reps):
        for kernel in kernels:
            try:
                _one(ctx, launcher, section, kernel)
            except Exception as exc:  # noqa: BLE001 - a failed repetition is counted, never fatal
                section.fail(f"{kernel.kernel.kind} kernel: boot failed: {exc}")
    return section


def _one(ctx: BenchContext, launcher: GuestFactory, section: Section, kernel: KernelRun) -> None:
    request = guest_request(ctx, "bench-floor", kernel.kernel)
    spec = LaunchSpec(workdir="/", env={"PATH": PATH, "HOME": "/root"}, shell_command="true",
                      executable=None, arguments=[])
    started_at: list[float] = []
    t0 = now()
    with launcher.boot(request) as guest:
        booted = now()
        status = run_launcher(guest, spec, on_started=lambda pgid: started_at.append(now()),
                              on_stdout=lambda b: None, on_stderr=lambda b: None)
        ran = now()
        cpu = qemu_cpu_s(guest.name)
        phases = dict(guest.timings)
    done = now()
    if status.code != 0:
        section.fail(f"{kernel.kernel.kind} kernel: `true` ended with {status.describe()}")
        return
    p = kernel.prefix
    for phase, seconds in phases.items():
        section.add(f"{p}phase.{phase}", seconds)
    section.add(f"{p}boot", booted - t0)
    if started_at:
        section.add(f"{p}command_started", started_at[0] - t0)
    section.add(f"{p}phase.run", ran - booted)
    section.add(f"{p}command_done", ran - t0)
    section.add(f"{p}teardown", done - ran)
    section.add(f"{p}total", done - t0)
    if cpu is not None:
        section.add(f"{p}qemu_cpu_s", cpu, unit="CPU s")
