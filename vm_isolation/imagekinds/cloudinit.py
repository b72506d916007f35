"""The cloud-init kind: a stock qcow2 cloud image (Debian, Ubuntu, ... with cloud-init and an
SSH server), booted from its own disk by its own bootloader and kernel.

Per guest, before its domain is defined, a NoCloud seed (:mod:`..cloudseed`, written by
:mod:`..seedimage`) is made next to the overlay and attached read-only: the instance id and
hostname (the domain name), the login user with the per-task client public key, password logins
off, and an SSH host key made here, whose public half the host pins (nothing is read from the
console). The seed is journalled before it exists and removed at teardown (and by the reaper).

Commands run as the configured login user; once SSH is up, ``sudo -n`` gives that user the
sandbox and the launcher's run directory (images whose sudo needs a password: those directories
must be writable by the user already).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Callable, Mapping, Optional

from .. import cloudseed, seedimage
from ..config import ImageProfile
from ..sshkeys import HostKeyPair, generate_host_key
from .base import BootPlan, KindContext

SEED_SUFFIX = ".seed.iso"
SeedWriter = Callable[[Mapping[str, str], Path, Path], Path]


def seed_path(overlay_dir: Path, name: str) -> Path:
    """Where the seed of guest ``name`` lives (the reaper removes exactly this path)."""
    return overlay_dir / f"{name}{SEED_SUFFIX}"


class CloudInitKind:
    name = "cloud-init"
    prepare_phase: Optional[str] = "seed"

    def __init__(self, profile: ImageProfile, *, write_seed: SeedWriter = seedimage.write_seed,
                 remove_seed: Callable[[Path], None] = seedimage.remove_seed,
                 make_host_key: Callable[[], HostKeyPair] = generate_host_key) -> None:
        self.user = profile.user
        self.home = "/root" if profile.user == "root" else f"/home/{profile.user}"
        self.boot_timeout_s = profile.boot_timeout_s
        self._write_seed = write_seed
        self._remove_seed = remove_seed
        self._make_host_key = make_host_key

    def prepare(self, ctx: KindContext) -> BootPlan:
        host_key = self._make_host_key()
        seed = cloudseed.Seed(instance_id=ctx.name, hostname=ctx.name, user=self.user,
                              authorized_key=" ".join(ctx.client_public_key.split()[:2]),
                              host_key_public=host_key.public_openssh, host_key_private=host_key.private_openssh)
        path = seed_path(ctx.overlay_dir, ctx.name)
        ctx.record("seed", path=str(path))
        ctx.on_undo("seed", lambda: self._remove_seed(path))
        self._write_seed(cloudseed.documents(seed), path, ctx.key_dir)
        return BootPlan(seed=path, host_key=host_key.public_openssh)

    def session_setup(self, directories: tuple[str, ...]) -> Optional[str]:
        if self.user == "root":
            return None
        dirs = " ".join(shlex.quote(d) for d in directories)
        return (f"sudo -n install -d -o \"$(id -u)\" -g \"$(id -g)\" -m 0755 {dirs} 2>/dev/null || "
                f"mkdir -p {dirs}")
