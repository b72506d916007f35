"""vm-isolation-boot: boot one guest from a base image, run one command in it, tear it down.

    vm-isolation-boot [--image NAME] [--cpus N] [--mem MIB] [--config PATH] -- COMMAND [ARG...]
    vm-isolation-boot --shell 'uname -a; hostname'

The library path without Mesos: the floor any VM launcher pays here, and an operator's first
check that the host works. Prints one progress line per phase on stderr, the command's output
on stdout/stderr, the phase timings, and exits with the command's exit status.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO, Callable, Optional

from ..config import Settings, load_settings
from ..domainxml import Owner
from ..errors import VmIsolationError
from ..guest import GuestRequest
from ..guestrun import run_launcher
from ..ids import domain_name_for
from ..imagekinds import kind_for
from ..launch_script import LaunchSpec, guest_base_environment
from ..procinfo import own_start_time
from ..wiring import real_launcher
from .common import configure_logging

log = logging.getLogger("vm-isolation-boot")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vm-isolation-boot", description=__doc__.split("\n\n")[0])
    p.add_argument("--image", help="base image name from the configuration (default: its default)")
    p.add_argument("--cpus", type=float, default=1.0, help="vCPUs (rounded up, default 1)")
    p.add_argument("--mem", type=int, help="guest memory in MiB (default: [vm] default_memory_mib)")
    p.add_argument("--shell", help="run this through /bin/sh -c instead of an argv")
    p.add_argument("--config", type=Path, help="configuration file")
    p.add_argument("--json-timings", action="store_true", help="print the timings as JSON on stdout last")
    p.add_argument("argv", nargs="*", help="command and arguments (after --)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging("vm-isolation-boot")
    if (args.shell is None) == (not args.argv):
        print("vm-isolation-boot: give either --shell 'COMMAND' or -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config)
        image = args.image or settings.images.default
        request = GuestRequest(
            name=domain_name_for("boot"),
            base_image=settings.images.base(image),
            kernel=settings.images.kernel_for(image),
            profile=settings.images.profile(image),
            vcpus=max(1, math.ceil(args.cpus)),
            memory_mib=max(settings.vm.memory_floor_mib, args.mem or settings.vm.default_memory_mib),
            # Recorded so vm-isolation-reap can remove the guest if this process dies.
            owner=Owner(executor_id="vm-isolation-boot", executor_pid=os.getpid(),
                        executor_start_time=own_start_time()),
        )
        spec = LaunchSpec(
            workdir=settings.executor.guest_sandbox,
            env=guest_base_environment(kind_for(settings, settings.images.profile(image)).home),
            shell_command=args.shell, executable=None if args.shell else args.argv[0],
            arguments=args.argv,
        )
        return _boot_and_run(settings, request, spec, args.json_timings)
    except VmIsolationError as exc:
        log.error("%s", exc)
        return 1


def _boot_and_run(settings: Settings, request: GuestRequest, spec: LaunchSpec, json_timings: bool) -> int:
    launcher = real_launcher(settings)
    started = time.monotonic()

    def progress(phase: str, seconds: float) -> None:
        print(f"vm-isolation-boot: [{time.monotonic() - started:6.2f} s] {phase} done "
              f"({seconds:.2f} s)", file=sys.stderr, flush=True)

    print(f"vm-isolation-boot: booting {request.name} from {request.base_image} "
          f"({launcher.domain_type}, {request.vcpus} vCPU, {request.memory_mib} MiB)",
          file=sys.stderr, flush=True)
    with launcher.boot(request, progress=progress) as guest:
        run_started = time.monotonic()
        status = run_launcher(
            guest, spec,
            on_started=lambda pgid: progress("command started", time.monotonic() - run_started),
            on_stdout=_writer(sys.stdout.buffer),
            on_stderr=_writer(sys.stderr.buffer),
        )
        timings = dict(guest.timings, run=round(time.monotonic() - run_started, 3))
        teardown_started = time.monotonic()
    timings["teardown"] = round(time.monotonic() - teardown_started, 3)
    timings["total"] = round(time.monotonic() - started, 3)
    print(f"vm-isolation-boot: command ended with {status.describe()}", file=sys.stderr)
    print("vm-isolation-boot: phase timings (s): "
          + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()), file=sys.stderr)
    if json_timings:
        print(json.dumps(timings))
    return status.code


def _writer(stream: BinaryIO) -> Callable[[bytes], None]:
    def write(chunk: bytes) -> None:
        stream.write(chunk)
        stream.flush()

    return write


if __name__ == "__main__":
    sys.exit(main())
