"""Image kinds: what kind of guest an ``[image:NAME]`` is, one module per kind.

A kind answers, for one guest: the boot section of its domain XML, how the per-task client key
gets in, how the host learns the guest's SSH host key, the login user and its HOME, and how
long the boot may take. :mod:`guest` runs the phases and journals every resource; a kind only
prepares what its guests need (:class:`~.base.ImageKind`).

======================  ==========================================================================
``direct-kernel``       :mod:`.direct`: the project's kernel + initramfs boot the image (busybox,
                        python); key on the kernel command line; host key read from the console
``cloud-init``          :mod:`.cloudinit`: the image boots from its own disk; a per-task NoCloud
                        seed carries the key, the hostname and a host key made on the host
======================  ==========================================================================

Adding a kind: a module here with a class implementing :class:`~.base.ImageKind`, its name in
``config.IMAGE_KINDS`` and in :func:`kind_for`.
"""

from __future__ import annotations

from typing import Optional

from ..config import GuestKernel, ImageProfile, Settings
from .base import BootPlan, ImageKind, KindContext
from .cloudinit import CloudInitKind
from .direct import DirectKernelKind

__all__ = ["BootPlan", "ImageKind", "KindContext", "kind_for"]


def kind_for(settings: Settings, profile: ImageProfile, kernel: Optional[GuestKernel] = None) -> ImageKind:
    """The kind of guest ``profile`` describes (``kernel``: what a direct-kernel guest boots;
    None: the fast kernel)."""
    if profile.kind == "cloud-init":
        return CloudInitKind(profile)
    return DirectKernelKind(settings, profile, kernel)
