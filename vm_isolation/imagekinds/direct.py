"""The direct-kernel kind: the project's own images (busybox, python).

QEMU loads the project's kernel: the fast kernel without an initramfs (it mounts the overlay as its
root and starts the image's init itself), or Debian's with its initramfs (``[image:NAME] kernel =
debian``); the image's init
(scripts/guest/vmiso-init) reads the per-task client key from the kernel command line
(``vmiso.authkey=TYPE:BASE64``, public data), makes a fresh host key and announces it on the
serial console before its SSH server starts. Commands run as root.
"""

from __future__ import annotations

from typing import Optional

from ..config import GuestKernel, ImageProfile, Settings
from .base import BootPlan, KindContext


class DirectKernelKind:
    name = "direct-kernel"
    user = "root"
    home = "/root"
    prepare_phase: Optional[str] = None

    def __init__(self, settings: Settings, profile: ImageProfile, kernel: Optional[GuestKernel] = None) -> None:
        self._kernel = kernel or settings.images.guest_kernel("fast")
        self.boot_timeout_s = profile.boot_timeout_s

    def prepare(self, ctx: KindContext) -> BootPlan:
        return BootPlan(kernel=self._kernel.path, initrd=self._kernel.initrd,
                        cmdline=cmdline(ctx.name, ctx.client_public_key, own_root=self._kernel.initrd is None))

    def session_setup(self, directories: tuple[str, ...]) -> Optional[str]:
        return None


DIRECT_ROOT_CMDLINE = "root=/dev/vda rw rootfstype=ext4 init=/sbin/vmiso-init"
"""A kernel booted without an initramfs mounts the overlay disk itself and starts the image's init."""


def cmdline(name: str, client_public_key: str, *, own_root: bool = False) -> str:
    """The kernel command line; ``own_root``: no initramfs, the kernel mounts the disk itself."""
    key_type, key_b64 = client_public_key.split()[:2]
    # no_timer_check: under software emulation on a busy host the kernel's early check that
    # the IO-APIC timer ticks can fail ("IO-APIC + timer doesn't work!") and panic the guest.
    # acpi=noirq: ACPI PCI interrupt-link set-up runs AML under emulation, ~0.17 s per virtio
    # device; the guests need none of it (measured: ~0.5 s per boot saved).
    root = f" {DIRECT_ROOT_CMDLINE}" if own_root else ""
    return (f"console=ttyS0 quiet panic=-1 no_timer_check acpi=noirq{root} vmiso.hostname={name} "
            f"vmiso.authkey={key_type}:{key_b64}")
