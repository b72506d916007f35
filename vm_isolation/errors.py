"""The project's errors, grouped by what the caller does next.

    VmIsolationError
    ├── ConfigError            the operator must fix the configuration; nothing was started
    ├── InvalidTask            the framework sent something we cannot run -> TASK_ERROR
    ├── HostError              the host is not ready (libvirtd, network, images, disk) -> TASK_FAILED
    │   ├── LibvirtUnavailable
    │   ├── NetworkUnavailable
    │   ├── ImageError
    │   ├── StorageError
    │   └── FirewallError      the guests' network policy cannot be enforced (nft, rules missing)
    ├── GuestError             one guest failed in a phase (boot, address, ssh, ...) -> TASK_FAILED
    │   ├── GuestDied
    │   ├── AddressTimeout
    │   ├── SshError
    │   │   ├── SshAuthError
    │   │   ├── HostKeyMismatch
    │   │   └── SshUnavailable
    │   └── TransferError
    └── NotFound               a looked-up object (domain, lease) does not exist

Every error carries a message that says what is wrong *and* what to do about it. Library
errors (libvirt, paramiko, subprocess) are turned into these in the one module that talks to
that library, with ``raise ... from``.
"""

from __future__ import annotations


class VmIsolationError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(VmIsolationError):
    """The configuration is missing, unreadable or has an invalid value."""


class InvalidTask(VmIsolationError):
    """A task cannot be run as given; the message says what the framework must change."""


class HostError(VmIsolationError):
    """The host is not ready to run guests; an operator must act."""


class LibvirtUnavailable(HostError):
    """libvirtd cannot be reached."""


class NetworkUnavailable(HostError):
    """The libvirt network is missing or inactive."""


class ImageError(HostError):
    """A base image, kernel or initramfs is missing or unusable."""


class StorageError(HostError):
    """A directory we must write to is missing, read-only or full."""


class FirewallError(HostError):
    """The host cannot enforce the guests' network policy: nft is missing, the table is not
    installed, or nft refused a change."""


class NotFound(VmIsolationError):
    """A domain, network or lease that was looked up does not exist."""


class GuestError(VmIsolationError):
    """A guest failed during one phase of its life.

    ``phase`` names the phase (``start``, ``address``, ``ssh``, ...); ``console_tail`` holds
    the last lines of the guest's serial console when they were available, because that is
    where a guest that fails to boot says why.
    """

    def __init__(self, message: str, *, phase: str, console_tail: str = "") -> None:
        super().__init__(message)
        self.phase = phase
        self.console_tail = console_tail

    def __str__(self) -> str:
        text = super().__str__()
        if self.console_tail:
            text += "\n--- last lines of the guest console ---\n" + self.console_tail
        return text


class GuestDied(GuestError):
    """The domain stopped running when it should be running."""


class AddressTimeout(GuestError):
    """The guest got no DHCP lease before the deadline."""


class SshError(GuestError):
    """SSH to the guest failed."""


class SshAuthError(SshError):
    """The guest refused our key."""


class HostKeyMismatch(SshError):
    """The guest presented a host key other than the one it announced at boot."""


class SshUnavailable(SshError):
    """The guest's SSH server did not answer before the deadline, or the session was lost."""


class TransferError(GuestError):
    """A file could not be copied into or out of the guest."""
