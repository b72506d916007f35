"""The NoCloud seed: golden documents, hostile values kept as data (parsed by a real YAML
parser, as cloud-init does), no password and no client private key anywhere, and the cidata
volume written and read back with xorriso."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from vm_isolation import cloudseed, seedimage
from vm_isolation.cloudseed import Seed
from vm_isolation.errors import InvalidTask
from vm_isolation.sshkeys import generate_host_key

GOLDEN = Path(__file__).parent / "golden" / "seed"
FAKE_PRIVATE = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
                "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
                "-----END OPENSSH PRIVATE KEY-----\n")


def seed(**changes: str) -> Seed:
    values = dict(instance_id="vmiso-job-1-0123456789", hostname="vmiso-job-1-0123456789", user="debian",
                  authorized_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIClientKeyExample",
                  host_key_public="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyExample",
                  host_key_private=FAKE_PRIVATE)
    values.update(changes)
    return Seed(**values)


def parsed_user_data(text: str) -> dict[str, object]:
    assert text.startswith("#cloud-config\n")
    as_yaml = yaml.safe_load(text)
    assert as_yaml == json.loads(text.split("\n", 1)[1])  # the body is JSON, which is YAML
    assert isinstance(as_yaml, dict)
    return as_yaml


@pytest.mark.parametrize("name", ["meta-data", "user-data"])
def test_seed_documents_match_the_golden_files(name: str) -> None:
    """The documents for a fixed seed are exactly the reviewed golden files."""
    assert cloudseed.documents(seed())[name] == (GOLDEN / name).read_text()


def test_the_seed_sets_the_user_key_hostname_and_pinned_host_key() -> None:
    data = parsed_user_data(cloudseed.user_data(seed()))
    assert data["users"] == [{"name": "debian", "lock_passwd": True, "sudo": "ALL=(ALL) NOPASSWD:ALL",
                              "ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIClientKeyExample"]}]
    assert data["ssh_pwauth"] is False and data["ssh_genkeytypes"] == ["ed25519"] and data["ssh_deletekeys"] is True
    assert data["ssh_keys"] == {"ed25519_private": FAKE_PRIVATE,
                                "ed25519_public": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyExample"}
    assert data["hostname"] == "vmiso-job-1-0123456789" and data["disable_root"] is True
    assert yaml.safe_load(cloudseed.meta_data(seed())) == {"instance-id": "vmiso-job-1-0123456789",
                                                           "local-hostname": "vmiso-job-1-0123456789"}


def test_no_password_and_no_client_private_key_in_the_seed() -> None:
    """Nothing sets a password; the only private key is the guest's host key."""
    text = "".join(cloudseed.documents(seed()).values())
    data = parsed_user_data(cloudseed.user_data(seed()))
    for key in ("password", "passwd", "chpasswd", "plain_text_passwd", "hashed_passwd"):
        assert key not in data and all(key not in user for user in data["users"])  # type: ignore[attr-defined]
    assert text.count("PRIVATE KEY-----") == 2  # BEGIN and END of the host key only
    assert "lock_passwd" in text


def test_root_as_login_user_is_not_refused_by_disable_root() -> None:
    assert parsed_user_data(cloudseed.user_data(seed(user="root")))["disable_root"] is False


@pytest.mark.parametrize("instance_id", ["id: with\": quotes # and &anchor *alias !!tag", "{x: [y]}", "é-ünï ☃"])
def test_hostile_instance_ids_stay_data(instance_id: str) -> None:
    """YAML syntax in a value is escaped: a YAML parser gives back exactly the string."""
    assert yaml.safe_load(cloudseed.meta_data(seed(instance_id=instance_id)))["instance-id"] == instance_id
    assert cloudseed.meta_data(seed(instance_id=instance_id)).isascii()


@pytest.mark.parametrize("hostname", ["evil\nruncmd: [reboot]", "a: b", "UPPER", "-lead", "x" * 64, "", "a.b",
                                      "host name", "h\0st"])
def test_hostile_hostnames_are_refused(hostname: str) -> None:
    with pytest.raises(InvalidTask, match="hostname"):
        seed(hostname=hostname)


@pytest.mark.parametrize("user", ["root\nruncmd: [x]", "Debian", "a b", "", "x" * 33, "9user", "us:er"])
def test_hostile_users_are_refused(user: str) -> None:
    with pytest.raises(InvalidTask, match="login name"):
        seed(user=user)


@pytest.mark.parametrize("key", ["ssh-ed25519 AAAA\nruncmd: [reboot]", "ssh-ed25519 AAAA comment",
                                 "ssh-dss AAAA", "ssh-ed25519", "ssh-ed25519 AA\"AA"])
def test_hostile_public_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidTask, match="public key"):
        seed(authorized_key=key)
    with pytest.raises(InvalidTask, match="public key"):
        seed(host_key_public=key)


def test_a_private_key_that_is_not_openssh_is_refused() -> None:
    with pytest.raises(InvalidTask, match="private key"):
        seed(host_key_private=FAKE_PRIVATE + "runcmd: [reboot]\n")


def test_generated_host_keys_make_a_valid_seed_and_never_show_in_repr() -> None:
    key = generate_host_key()
    real = seed(host_key_public=key.public_openssh, host_key_private=key.private_openssh)
    assert parsed_user_data(cloudseed.user_data(real))["ssh_keys"] == {  # type: ignore[comparison-overlap]
        "ed25519_private": key.private_openssh, "ed25519_public": key.public_openssh}
    assert "PRIVATE" not in repr(key) and "PRIVATE" not in repr(real)
    assert dataclasses.replace(real).host_key_private == key.private_openssh


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso not installed (scripts/host-setup.sh)")
def test_the_cidata_volume_holds_the_documents_and_is_private(tmp_path: Path) -> None:
    path = seedimage.write_seed(cloudseed.documents(seed()), tmp_path / "g.seed.iso", tmp_path / "work")
    assert path.stat().st_mode & 0o777 == 0o600
    assert seedimage.read_seed(path, tmp_path) == {**cloudseed.documents(seed()), "": "cidata"}
    assert list((tmp_path / "work").iterdir()) == []  # the intermediate files are gone
    with pytest.raises(Exception, match="must not hold a seed"):
        seedimage.write_seed(cloudseed.documents(seed()), path, tmp_path / "work")
