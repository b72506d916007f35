"""What every image kind answers (:class:`ImageKind`) and the values it exchanges with the boot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol


@dataclass(frozen=True)
class KindContext:
    """What a kind may use of one guest's boot."""

    name: str
    """The domain name, also the guest's hostname."""
    client_public_key: str
    """The per-task client key, ``ssh-ed25519 AAAA...``."""
    key_dir: Path
    """The guest's private 0700 directory (removed at teardown): for intermediate files."""
    overlay_dir: Path
    """Where per-guest files qemu reads live (the overlay; a seed)."""
    record: Callable[..., None]
    """``record(kind, **detail)``: journal a resource before creating it."""
    on_undo: Callable[[str, Callable[[], object]], None]
    """``on_undo(kind, remove)``: remove it at teardown (journalled as removed once done)."""


@dataclass(frozen=True)
class BootPlan:
    """How one guest boots, as a kind prepared it."""

    kernel: Optional[Path] = None
    """Direct kernel boot; None: the guest boots from its own disk (its bootloader)."""
    initrd: Optional[Path] = None
    cmdline: str = ""
    seed: Optional[Path] = None
    """A read-only second disk (a NoCloud ``cidata`` volume)."""
    host_key: Optional[str] = None
    """The guest's host key (``ssh-ed25519 AAAA...``) when known before boot; None: the guest
    announces it on its serial console."""


class ImageKind(Protocol):
    name: str
    user: str
    """Who commands run as."""
    home: str
    """That user's HOME in the guest."""
    prepare_phase: Optional[str]
    """The name :meth:`prepare` is timed under, when it does real work (None: not timed)."""
    boot_timeout_s: Optional[float]
    """Domain start -> SSH session; None: [vm] boot_timeout_s (lease) and ssh_timeout_s."""

    def prepare(self, ctx: KindContext) -> BootPlan:
        """Make what the guest needs before its domain is defined (journalled through ``ctx``)."""
        ...

    def session_setup(self, directories: tuple[str, ...]) -> Optional[str]:
        """A command to run once SSH is up so that ``user`` can create and write ``directories``
        (the sandbox, the launcher's run directory); None if nothing is needed."""
        ...
