"""A guest's NoCloud seed: the ``meta-data`` and ``user-data`` documents cloud-init reads from a
volume labelled ``cidata`` (pure: no files, no tools; :mod:`seedimage` writes the volume).

Both documents are JSON, which is valid YAML: every value goes through :func:`json.dumps`, so a
hostname or key can carry no YAML syntax (no ``: ``, ``#``, newline, anchor or tag is ever
interpreted). ``user-data`` is a ``#cloud-config`` document whose body is that JSON.

What the seed sets up, per guest:

* ``meta-data``: the instance id (the domain name: unique per task, so cloud-init treats every
  guest as a first boot) and the hostname (the domain name, as the direct-kernel images use);
* ``user-data``: the login user, locked (no password can be used), with the per-task client
  public key as its only authorized key and password-less sudo; password logins off
  (``ssh_pwauth: false``); the guest's SSH host key, generated on the host and pinned there
  before the guest exists (``ssh_keys``; no other host key is generated, the image's own are
  deleted). No password appears anywhere in the seed, and no private key of the client.

The seed therefore holds the *guest's* host private key (never the client's): whoever reads the
seed file can impersonate that one guest's SSH server to the host. It lives next to the overlay,
0600, for the guest's lifetime only (SECURITY.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .errors import InvalidTask

CLOUD_CONFIG_HEADER = "#cloud-config\n"
LOGIN_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
"""A portable login name (useradd's default NAME_REGEX, without the trailing ``$``)."""
HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
PUBLIC_KEY = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)) [A-Za-z0-9+/]+={0,2}")
HOST_KEY_TYPES = {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa", "ecdsa-sha2-nistp256": "ecdsa",
                  "ecdsa-sha2-nistp384": "ecdsa", "ecdsa-sha2-nistp521": "ecdsa"}
"""OpenSSH key type -> the name cloud-init's ``ssh_keys`` uses (``<name>_private``/``_public``)."""
PRIVATE_KEY = re.compile(r"-----BEGIN OPENSSH PRIVATE KEY-----\n[A-Za-z0-9+/=\n]+-----END OPENSSH PRIVATE KEY-----\n?")


@dataclass(frozen=True)
class Seed:
    """What one guest's seed says."""

    instance_id: str
    hostname: str
    user: str
    authorized_key: str
    """The per-task client public key, ``ssh-ed25519 AAAA...``."""
    host_key_public: str
    host_key_private: str = field(repr=False)

    def __post_init__(self) -> None:
        _check(self)


def meta_data(seed: Seed) -> str:
    """The ``meta-data`` document."""
    return _json({"instance-id": seed.instance_id, "local-hostname": seed.hostname})


def user_data(seed: Seed) -> str:
    """The ``user-data`` document (``#cloud-config``)."""
    key_name = HOST_KEY_TYPES[seed.host_key_public.split()[0]]
    user = {
        "name": seed.user,
        "lock_passwd": True,
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "ssh_authorized_keys": [seed.authorized_key],
    }
    config = {
        "users": [user],
        "disable_root": seed.user != "root",
        "ssh_pwauth": False,
        "ssh_deletekeys": True,
        # Only the type handed in: cloud-init generates a type only when its key file is missing
        # (an empty list would do the same but is refused by cloud-init's schema).
        "ssh_genkeytypes": [key_name],
        "ssh_keys": {f"{key_name}_private": _with_newline(seed.host_key_private),
                     f"{key_name}_public": seed.host_key_public},
        "preserve_hostname": False,
        "hostname": seed.hostname,
        "manage_etc_hosts": True,
    }
    return CLOUD_CONFIG_HEADER + _json(config)


def documents(seed: Seed) -> dict[str, str]:
    """File name -> content, as the ``cidata`` volume holds them."""
    return {"meta-data": meta_data(seed), "user-data": user_data(seed)}


def _json(value: object) -> str:
    # ensure_ascii: the documents are plain ASCII, whatever a value holds.
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def _with_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def _check(seed: Seed) -> None:
    """Refuse values a guest could not use as given (they are escaped regardless)."""
    if not HOSTNAME.fullmatch(seed.hostname):
        raise InvalidTask(f"{seed.hostname!r} is not a hostname (lower-case letters, digits and '-', "
                          "at most 63, starting and ending with a letter or digit)")
    if not seed.instance_id or not seed.instance_id.isprintable() or len(seed.instance_id) > 128:
        raise InvalidTask("the instance id must be 1-128 printable characters")
    if not LOGIN_USER.fullmatch(seed.user):
        raise InvalidTask(f"{seed.user!r} is not a login name ([a-z_][a-z0-9_-]*, at most 32)")
    for what, key in (("client public key", seed.authorized_key), ("host public key", seed.host_key_public)):
        if not PUBLIC_KEY.fullmatch(key):
            raise InvalidTask(f"the {what} is not an OpenSSH public key line ('ssh-ed25519 AAAA...')")
    if not PRIVATE_KEY.fullmatch(seed.host_key_private):
        raise InvalidTask("the host private key is not an unencrypted OpenSSH private key")
