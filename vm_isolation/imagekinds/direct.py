"""The direct-kernel kind: the project's own images (busybox, python).

QEMU loads the project's kernel and initramfs (``[images] kernel``/``initrd``); the image's init
(scripts/guest/vmiso-init) reads the per-task client key from the kernel command line
(``vmiso.authkey=TYPE:BASE64``, public data), makes a fresh host key and announces it on the
serial console before its SSH server starts. Commands run as root.
"""

from __future__ import annotations

from typing import Optional

from ..config import ImageProfile, Settings
from .base import BootPlan, KindContext


class DirectKernelKind:
    name = "direct-kernel"
    user = "root"
    home = "/root"
    prepare_phase: Optional[str] = None

    def __init__(self, settings: Settings, profile: ImageProfile) -> None:
        self._images = settings.images
        self.boot_timeout_s = profile.boot_timeout_s

    def prepare(self, ctx: KindContext) -> BootPlan:
        return BootPlan(kernel=self._images.kernel, initrd=self._images.initrd,
                        cmdline=cmdline(ctx.name, ctx.client_public_key))

    def session_setup(self, directories: tuple[str, ...]) -> Optional[str]:
        return None


def cmdline(name: str, client_public_key: str) -> str:
    key_type, key_b64 = client_public_key.split()[:2]
    # no_timer_check: under software emulation on a busy host the kernel's early check that
    # the IO-APIC timer ticks can fail ("IO-APIC + timer doesn't work!") and panic the guest.
    # acpi=noirq: ACPI PCI interrupt-link set-up runs AML under emulation, ~0.17 s per virtio
    # device; the guests need none of it (shared/reference/boot-spike.md).
    return (f"console=ttyS0 quiet panic=-1 no_timer_check acpi=noirq vmiso.hostname={name} "
            f"vmiso.authkey={key_type}:{key_b64}")
