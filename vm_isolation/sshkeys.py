"""Per-guest SSH client keys: the one module that generates key material (with
``cryptography``, paramiko's own dependency, which can write ed25519 keys where paramiko can't).

Each guest gets a fresh ed25519 key in a 0700 directory of its own; the caller removes the
directory at teardown. Key material is never logged: only SHA256 fingerprints are.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_ssh_private_key,
)

from .errors import StorageError

log = logging.getLogger(__name__)

CLIENT_KEY_NAME = "id_ed25519"


@dataclass(frozen=True)
class ClientKey:
    """A client key pair: the private half in a file, the public half as an OpenSSH line."""

    private_path: Path
    """OpenSSH-format private key file, mode 0600."""
    public_openssh: str
    """``ssh-ed25519 AAAA...`` without a comment."""

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(base64.b64decode(self.public_openssh.split()[1]))


def fingerprint_of(public_blob: bytes) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key in wire format."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(public_blob).digest()).decode().rstrip("=")


def generate_client_key(directory: Path) -> ClientKey:
    """Write a fresh ed25519 key into ``directory`` (created 0700, parents as needed).

    The key file is created 0600 with ``O_EXCL``: an existing key is never reused or
    overwritten. The mode given to mkdir/open is an upper bound that the umask can only
    narrow, so neither is ever readable by others, not even briefly; the process umask itself
    is left alone because it is shared with every other thread. The caller removes
    ``directory`` at teardown. Raises :class:`StorageError`.
    """
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
    public = private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode("ascii")
    path = directory / CLIENT_KEY_NAME
    try:
        _make_private_directory(directory)
        _write_new_private_file(path, pem)
    except OSError as exc:
        raise StorageError(
            f"cannot write a fresh SSH client key to {path}: {exc.strerror or exc}; the key "
            f"directory must be writable by this user and must not hold a key already"
        ) from exc
    key = ClientKey(path, public)
    log.debug("generated SSH client key %s (%s)", path, key.fingerprint)
    return key


def load_client_key(directory: Path) -> ClientKey:
    """The key a directory already holds (a pool guest's, handed over to this process).

    The directory must be ours and private (mode 0700, owned by this user), as
    :func:`generate_client_key` makes it and the pool leaves it after the hand-over; a key
    anyone else could have read or replaced is refused. Raises :class:`StorageError`.
    """
    path = directory / CLIENT_KEY_NAME
    try:
        for item, kind in ((directory, stat.S_ISDIR), (path, stat.S_ISREG)):
            info = os.lstat(item)
            if not kind(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
                raise OSError(f"{item} is not private to uid {os.geteuid()}")
        private = load_ssh_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot load the SSH client key {path}: {exc}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise StorageError(f"{path} is not an ed25519 key")
    public = private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode("ascii")
    return ClientKey(path, public)


def _make_private_directory(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise OSError(f"{directory} is not a directory owned by uid {os.geteuid()}")
    os.chmod(directory, 0o700)


def _write_new_private_file(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(data)
    except OSError:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


@dataclass(frozen=True)
class HostKeyPair:
    """A guest's SSH host key, made on the host: the host pins the public half before the guest
    exists and hands the private half in through the guest's NoCloud seed (SECURITY.md says
    what that means). ``repr`` never shows the private half."""

    private_openssh: str = field(repr=False)
    """``-----BEGIN OPENSSH PRIVATE KEY-----`` ... (unencrypted: sshd reads it at start)."""
    public_openssh: str = ""
    """``ssh-ed25519 AAAA...`` without a comment."""

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(base64.b64decode(self.public_openssh.split()[1]))


def generate_host_key() -> HostKeyPair:
    """A fresh ed25519 host key pair, in memory only (the caller writes it into the seed)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode("ascii")
    public = private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode("ascii")
    return HostKeyPair(pem, public)
