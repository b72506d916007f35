"""Configuration: the documented example, precedence, and errors that name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from vm_isolation.config import (
    GuestKernel,
    ImageSettings,
    Settings,
    load_settings,
    mesos_environment,
    parse_duration,
)
from vm_isolation.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "mesos.conf.example"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mesos.conf"
    path.write_text(text)
    return path


def test_the_example_file_holds_exactly_the_defaults() -> None:
    """conf/mesos.conf.example documents every default: loading it equals the built-in Settings."""
    loaded = load_settings(EXAMPLE, environ={})
    assert loaded == Settings(source=EXAMPLE)


def test_every_setting_is_documented_in_the_example() -> None:
    """Each key of every settings group appears in the example with its default."""
    text = EXAMPLE.read_text()
    settings = Settings()
    for group in (settings.libvirt, settings.vm, settings.executor, settings.network):
        for key in group.__dataclass_fields__:
            assert f"\n{key} =" in text, key


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    """VM_ISOLATION_<SECTION>_<KEY> beats the file."""
    path = write(tmp_path, "[libvirt]\nnetwork = filenet\n[vm]\nboot_timeout_s = 10\n")
    s = load_settings(path, environ={"VM_ISOLATION_LIBVIRT_NETWORK": "envnet"})
    assert s.libvirt.network == "envnet"
    assert s.vm.boot_timeout_s == 10


def test_conf_path_comes_from_the_environment_when_not_given(tmp_path: Path) -> None:
    """VM_ISOLATION_CONF names the file when no explicit path is passed."""
    path = write(tmp_path, "[libvirt]\nnetwork = n2\n")
    assert load_settings(environ={"VM_ISOLATION_CONF": str(path)}).libvirt.network == "n2"


@pytest.mark.parametrize("text, words", [
    ("[libvirt]\ndomain_type = xen\n", "domain_type"),
    ("[vm]\nmemory_floor_mib = lots\n", "whole number"),
    ("[vm]\nboot_timeout_s = nan\n", "finite"),
    ("[vm]\nbogus = 1\n", "unknown key"),
    ("[nonsense]\n", "unknown section"),
    ("[images]\ndefault = missing\n[image:busybox]\npath = b.qcow2\n", r"no \[image:missing\]"),
    ("[image:busybox]\npath = b.qcow2\nkernel = vmlinux\n", "kernel = 'vmlinux': use one of fast, debian"),
    ("[image:busybox]\npath = b.qcow2\ninitrd = i.gz\n",
     r"takes path \(required\), kind, user, boot_timeout_s and kernel"),
    ("[image:busybox]\nkernel = fast\n", r"takes path \(required\), kind, user, boot_timeout_s and kernel"),
])
def test_invalid_values_name_the_key(tmp_path: Path, text: str, words: str) -> None:
    """A bad value raises ConfigError naming what is wrong."""
    with pytest.raises(ConfigError, match=words):
        load_settings(write(tmp_path, text), environ={})


def test_a_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    """The error for a missing file points at host-setup."""
    with pytest.raises(ConfigError, match="host-setup"):
        load_settings(tmp_path / "nope.conf", environ={})


def test_images_resolve_relative_to_the_image_dir(tmp_path: Path) -> None:
    """Relative image paths live in [images] dir; unknown names list the known ones."""
    s = load_settings(write(tmp_path, "[images]\ndir = /img\ndefault = py\n[image:py]\npath = py.qcow2\n"
                                      "[image:abs]\npath = /else/a.qcow2\n"), environ={})
    assert s.images.base("py") == Path("/img/py.qcow2")
    assert s.images.base("abs") == Path("/else/a.qcow2")
    assert s.images.kernel == Path("/img/vmlinux")
    with pytest.raises(ConfigError, match="abs, py"):
        s.images.base("nope")
    assert isinstance(s.images, ImageSettings)


def test_images_boot_the_fast_kernel_unless_they_ask_for_debians(tmp_path: Path) -> None:
    """An image boots the fast kernel without an initramfs; `kernel = debian` gives Debian's
    kernel with the shared initramfs; the paths resolve in [images] dir."""
    s = load_settings(write(tmp_path, "[images]\ndir = /img\nkernel = deb/vmlinux\nfast_kernel = /k/fast\n"
                                      "[image:busybox]\npath = b.qcow2\n"
                                      "[image:busybox-debian]\npath = b.qcow2\nkernel = debian\n"), environ={})
    assert s.images.kernel_for("busybox") == GuestKernel("fast", Path("/k/fast"), None)
    assert s.images.kernel_for("busybox-debian") == GuestKernel(
        "debian", Path("/img/deb/vmlinux"), Path("/img/initramfs.cpio.gz"))
    defaults = load_settings(write(tmp_path, "[vm]\n"), environ={}).images
    assert defaults.kernel_for(defaults.default) == GuestKernel(
        "fast", Path("/var/lib/vm-isolation/images/vmlinux-fast"))


@pytest.mark.parametrize("text, seconds", [("5secs", 5), ("2secs", 2), ("15mins", 900), ("100ms", 0.1),
                                           ("1.5hrs", 5400)])
def test_mesos_durations(text: str, seconds: float) -> None:
    """Mesos duration strings are parsed into seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


AGENT_ENV = {"MESOS_FRAMEWORK_ID": "fw", "MESOS_EXECUTOR_ID": "ex", "MESOS_AGENT_ENDPOINT": "127.0.0.1:5051",
             "MESOS_DIRECTORY": "/sandbox", "MESOS_SLAVE_ID": "a-S0", "PATH": "/bin"}


def test_mesos_checkpoint_zero_means_off() -> None:
    """MESOS_CHECKPOINT=0 is off (pymesos would read the string '0' as true)."""
    env = mesos_environment({**AGENT_ENV, "MESOS_CHECKPOINT": "0"})
    assert env.checkpoint is False
    assert mesos_environment({**AGENT_ENV, "MESOS_CHECKPOINT": "1"}).checkpoint is True
    assert "PATH" not in env.variables and env.variables["MESOS_SLAVE_ID"] == "a-S0"


def test_missing_agent_variables_are_named() -> None:
    """Started outside an agent, the error says which variables are missing."""
    with pytest.raises(ConfigError, match="MESOS_AGENT_ENDPOINT"):
        mesos_environment({"MESOS_FRAMEWORK_ID": "fw"})


@pytest.mark.parametrize("ssl,downgrade,refused", [
    ("true", "", True), ("1", "false", True), ("TRUE", "", True),
    ("true", "true", False), ("false", "", False), ("", "", False),
])
def test_an_ssl_only_agent_is_refused_at_once_naming_the_fix(ssl: str, downgrade: str, refused: bool) -> None:
    env = {**AGENT_ENV, "LIBPROCESS_SSL_ENABLED": ssl, "LIBPROCESS_SSL_SUPPORT_DOWNGRADE": downgrade}
    if refused:
        with pytest.raises(ConfigError, match="LIBPROCESS_SSL_SUPPORT_DOWNGRADE=true"):
            mesos_environment(env)
    else:
        assert mesos_environment(env).executor_id == AGENT_ENV["MESOS_EXECUTOR_ID"]


def _image_section(tmp_path: Path, body: str) -> Path:
    conf = tmp_path / "c.conf"
    conf.write_text("[images]\ndir = /img\n[image:busybox]\npath = busybox.qcow2\n" + body)
    return conf


def test_a_cloud_init_image_section_gives_its_profile(tmp_path: Path) -> None:
    from vm_isolation.config import ImageProfile
    conf = _image_section(tmp_path, "[image:ubuntu]\npath = /clouds/jammy.qcow2\nkind = cloud-init\n"
                                    "user = ubuntu\nboot_timeout_s = 240\n")
    images = load_settings(conf, environ={}).images
    assert images.profile("ubuntu") == ImageProfile(Path("/clouds/jammy.qcow2"), "cloud-init", "ubuntu", 240.0)
    assert images.profile("busybox") == ImageProfile(Path("/img/busybox.qcow2"))


@pytest.mark.parametrize("body, words", [
    ("kind = cloud-init\n", "needs user"),
    ("kind = vmware\nuser = x\n", "kind = 'vmware'"),
    ("kind = cloud-init\nuser = Root;rm\n", "not a login name"),
    ("user = debian\n", "root only"),
    ("kind = cloud-init\nuser = debian\nboot_timeout_s = -1\n", "above 0"),
    ("kind = cloud-init\nuser = debian\nboot_timeout_s = soon\n", "number of seconds"),
    ("kind = cloud-init\nuser = debian\nflavour = x\n", "unknown: flavour"),
])
def test_bad_image_profiles_are_config_errors_naming_the_key(tmp_path: Path, body: str, words: str) -> None:
    conf = _image_section(tmp_path, "[image:cloud]\npath = c.qcow2\n" + body)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        load_settings(conf, environ={})
