"""Choosing the domain type: ``kvm`` when hardware acceleration really works, else ``qemu``.

NOTE: on some hosts ``/dev/kvm`` opens but cannot run a stock guest kernel. Under the
``kvm_pvm`` module (a paravirtualised KVM for nested clouds) a Debian kernel crawls for ~75 s
and then pauses with "emulation failure" (measured on the development hosts).
``auto`` therefore treats PVM as unusable and falls back to software emulation, and says so
once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_warned = False


def resolve_domain_type(
    requested: str, *, dev_kvm: Path = Path("/dev/kvm"), sys_module: Path = Path("/sys/module")
) -> str:
    """Return ``kvm`` or ``qemu`` for a configured ``kvm``, ``qemu`` or ``auto``."""
    if requested in ("kvm", "qemu"):
        return requested
    reason = _kvm_unusable_reason(dev_kvm, sys_module)
    if reason is None:
        return "kvm"
    global _warned
    if not _warned:
        log.warning("domain_type=auto: using qemu (software emulation) because %s", reason)
        _warned = True
    return "qemu"


def _kvm_unusable_reason(dev_kvm: Path, sys_module: Path) -> str | None:
    if not dev_kvm.exists():
        return f"{dev_kvm} does not exist"
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return f"{dev_kvm} is not readable and writable by this user"
    if (sys_module / "kvm_pvm").exists():
        return "the host's KVM is kvm_pvm, which cannot run a stock guest kernel"
    return None
