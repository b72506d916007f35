"""Configuration: one frozen structure, built once.

This is the only module that reads ``os.environ`` or configuration files. Precedence, in the
one function that merges it (:func:`load_settings`): built-in defaults < the INI file
(``/etc/vm-isolation/mesos.conf``, ``VM_ISOLATION_CONF`` or an explicit path) < environment
variables ``VM_ISOLATION_<SECTION>_<KEY>``. Task labels are applied later, per task, by the
executor, and may only choose among what this structure allows.

The Mesos side of the environment (the ``MESOS_*`` variables the agent gives an executor) is
parsed here as well, into :class:`MesosEnvironment`.
"""

from __future__ import annotations

import configparser
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Optional

from .errors import ConfigError
from .poolwire import Shape, parse_shapes

DEFAULT_CONF_PATH = Path("/etc/vm-isolation/mesos.conf")
CONF_ENV = "VM_ISOLATION_CONF"
ENV_PREFIX = "VM_ISOLATION_"
DOMAIN_TYPES = ("auto", "kvm", "qemu")
EGRESS_POLICIES = ("nat", "none", "allow-list")
IMAGE_KINDS = ("direct-kernel", "cloud-init")
"""What kind of guest an [image:NAME] is (vm_isolation/imagekinds/, one module per kind)."""
_LOGIN_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
ISOLATION_MODES = ("on", "off")
KERNEL_KINDS = ("fast", "debian")
"""What an ``[image:NAME]`` may boot: ``fast`` (scripts/build-kernel.sh, no initramfs) or
``debian`` (Debian's kernel with the shared initramfs, for modules, cgroups, namespaces)."""


@dataclass(frozen=True)
class LibvirtSettings:
    uri: str = "qemu:///system"
    """libvirt connection URI."""
    network: str = "default"
    """libvirt network the guests attach to."""
    domain_type: str = "auto"
    """kvm, qemu or auto (see :mod:`vm_isolation.accel`)."""


@dataclass(frozen=True)
class GuestKernel:
    """The kernel a guest boots, and its initramfs if it needs one."""

    kind: str
    """One of KERNEL_KINDS."""
    path: Path
    initrd: Optional[Path] = None
    """None: booted without an initramfs; the kernel mounts the guest's disk as its root."""


@dataclass(frozen=True)
class ImageProfile:
    """One ``[image:NAME]``: its base image and what kind of guest boots from it."""

    path: Path
    kind: str = "direct-kernel"
    """direct-kernel: the project's kernel and initramfs boot the image (busybox, python);
    cloud-init: the image boots from its own disk and is set up by a NoCloud seed."""
    user: str = "root"
    """The login user commands run as (cloud-init: the user the seed creates)."""
    boot_timeout_s: Optional[float] = None
    """Domain start -> SSH session for this image; None: [vm] boot_timeout_s + ssh_timeout_s."""


@dataclass(frozen=True)
class ImageSettings:
    dir: Path = Path("/var/lib/vm-isolation/images")
    """Directory of the kernels, the initramfs and the base images."""
    kernel: Path = Path("/var/lib/vm-isolation/images/vmlinux")
    """Debian's kernel, uncompressed, booted directly (PVH) with ``initrd``: ``kernel = debian``."""
    initrd: Path = Path("/var/lib/vm-isolation/images/initramfs.cpio.gz")
    """Shared initramfs of Debian's kernel: loads virtio modules, switches to the overlay disk's root."""
    fast_kernel: Path = Path("/var/lib/vm-isolation/images/vmlinux-fast")
    """The fast kernel (scripts/build-kernel.sh), everything built in, no initramfs: ``kernel = fast``."""
    default: str = "busybox"
    """Image used when a task names none."""
    bases: Mapping[str, Path] = field(
        default_factory=lambda: {"busybox": Path("/var/lib/vm-isolation/images/busybox.qcow2"),
                                 "python": Path("/var/lib/vm-isolation/images/python.qcow2"),
                                 "debian-cloud": Path("/var/lib/vm-isolation/images/debian-cloud.qcow2")}
    )
    """Base image name -> qcow2 path."""
    kernels: Mapping[str, str] = field(default_factory=lambda: {"busybox": "fast", "python": "fast"})
    """Base image name -> the ``kernel`` its section names (one of KERNEL_KINDS); an image not
    named boots ``fast`` (direct-kernel images only: a cloud-init image boots its own)."""

    def kernel_for(self, name: str) -> GuestKernel:
        """The kernel the base image called ``name`` boots (fast unless it says ``kernel = debian``)."""
        return self.guest_kernel(self.kernels.get(name, "fast"))

    def guest_kernel(self, kind: str) -> GuestKernel:
        if kind == "debian":
            return GuestKernel("debian", self.kernel, self.initrd)
        return GuestKernel("fast", self.fast_kernel)

    profiles: Mapping[str, ImageProfile] = field(default_factory=lambda: {"debian-cloud": ImageProfile(
        path=Path("/var/lib/vm-isolation/images/debian-cloud.qcow2"), kind="cloud-init", user="debian",
        boot_timeout_s=360.0)})
    """Base image name -> its profile, for images whose section says more than ``path``."""

    def profile(self, name: str) -> ImageProfile:
        """The profile of the image called ``name`` (a direct-kernel one unless its section
        said otherwise); ConfigError naming the known images otherwise."""
        base = self.base(name)
        return self.profiles.get(name) or ImageProfile(path=base)

    def base(self, name: str) -> Path:
        """The base image called ``name``; ConfigError naming the known ones otherwise."""
        try:
            return self.bases[name]
        except KeyError:
            known = ", ".join(sorted(self.bases)) or "(none)"
            raise ConfigError(
                f"no base image named {name!r}; the configuration names: {known}"
            ) from None


@dataclass(frozen=True)
class VmSettings:
    overlay_dir: Path = Path("/var/lib/vm-isolation/overlays")
    key_dir: Path = Path("/run/vm-isolation/keys")
    console_dir: Path = Path("/var/log/vm-isolation")
    owner_dir: Path = Path("/run/vm-isolation/owners")
    """Where each executor keeps its locked owner file (:mod:`ownership`)."""
    memory_floor_mib: int = 128
    default_memory_mib: int = 256
    max_memory_mib: int = 16384
    max_vcpus: int = 16
    boot_timeout_s: float = 120.0
    """Domain start -> DHCP lease."""
    ssh_timeout_s: float = 60.0
    """DHCP lease -> SSH session accepted."""


@dataclass(frozen=True)
class ExecutorSettings:
    kill_grace_s: float = 3.0
    ack_timeout_s: float = 60.0
    linger_s: float = 10.0
    """Seconds to stay after the last task ended, for more LAUNCHes to the same executor id."""
    guest_sandbox: str = "/mnt/mesos/sandbox"
    wrap_image: str = "python"
    """Wrap mode: the base image the framework's executor runs in."""
    wrap_boot_budget_s: float = 50.0
    """Wrap mode: from the sandbox's creation (the agent's registration timer starts before the
    fetch) until the inner executor starts: fetch, boot, SSH and sandbox upload must fit."""
    wrap_copy_back: bool = True
    """Wrap mode: copy what the inner executor wrote into the guest sandbox back to the host."""


@dataclass(frozen=True)
class NetworkSettings:
    isolation: str = "on"
    """on: every guest gets an isolated bridge port on a tap the address guard confines to its
    MAC and leased address, and guests are booted only while the host's nftables tables are in
    place and the guard (vm-isolation-guard) runs; off: none of it (see SECURITY.md)."""
    egress: str = "nat"
    """Where guests may send traffic beyond the bridge: nat (anywhere the host can reach, except
    link-local/metadata addresses), none (nowhere), allow-list (only ``allow``)."""
    allow: tuple[str, ...] = ()
    """egress = allow-list: the IPv4 networks (CIDR) guests may reach."""

    @property
    def enforced(self) -> bool:
        return self.isolation == "on"


@dataclass(frozen=True)
class PoolSettings:
    size: int = 0
    """The most guests the warm pool keeps booted and idle; 0: no pool (executors cold-boot)."""
    shapes: tuple[tuple[Shape, int], ...] = ()
    """What to keep idle, each with its count (``[pool] shapes = busybox:1:128*2``); empty: ``size``
    guests of the default image, 1 vCPU, ``[vm] default_memory_mib``."""
    max_concurrent_boots: int = 1
    """How many refills may boot at once (each burns CPU that running tasks would use)."""
    socket: Path = Path("/run/vm-isolation/pool.sock")
    """The pool's unix socket; its lock and status files live beside it."""
    state_dir: Path = Path("/var/lib/vm-isolation/pool")
    """Where the pool keeps its journal (``.vm-isolation/journal.jsonl``, as an executor's sandbox)."""
    take_timeout_s: float = 2.0
    """How long an executor waits for the pool's answer before it boots cold."""
    handover_timeout_s: float = 15.0
    """How long the pool waits for an executor to take an offered guest before destroying it."""

    @property
    def enabled(self) -> bool:
        return self.size > 0

    def wanted(self, default_image: str, default_memory_mib: int) -> dict[Shape, int]:
        """How many idle guests of each shape the pool keeps."""
        if not self.enabled:
            return {}
        return dict(self.shapes) or {Shape(default_image, 1, default_memory_mib): self.size}


@dataclass(frozen=True)
class Settings:
    libvirt: LibvirtSettings = LibvirtSettings()
    images: ImageSettings = ImageSettings()
    vm: VmSettings = VmSettings()
    executor: ExecutorSettings = ExecutorSettings()
    network: NetworkSettings = NetworkSettings()
    pool: PoolSettings = PoolSettings()
    source: Optional[Path] = None
    """The file these settings were read from, for messages."""


# --- parsing --------------------------------------------------------------------------------

_INT_KEYS = {"memory_floor_mib", "default_memory_mib", "max_memory_mib", "max_vcpus"}
_FLOAT_KEYS = {"boot_timeout_s", "ssh_timeout_s", "kill_grace_s", "ack_timeout_s", "linger_s", "wrap_boot_budget_s",
               "take_timeout_s", "handover_timeout_s"}
_BOOL_KEYS = {"wrap_copy_back"}
_PATH_KEYS = {"overlay_dir", "key_dir", "console_dir", "owner_dir"}
_CIDR_LIST_KEYS = {"allow"}
_SECTIONS = {
    "libvirt": LibvirtSettings,
    "images": None,  # handled by _images
    "vm": VmSettings,
    "executor": ExecutorSettings,
    "network": NetworkSettings,
    "pool": None,  # handled by _pool
}


def conf_path(explicit: Optional[Path] = None, environ: Mapping[str, str] = os.environ) -> Path:
    """Where the configuration is read from: explicit > $VM_ISOLATION_CONF > default."""
    if explicit is not None:
        return Path(explicit)
    if environ.get(CONF_ENV):
        return Path(environ[CONF_ENV])
    return DEFAULT_CONF_PATH


def load_settings(
    path: Optional[Path] = None, environ: Mapping[str, str] = os.environ
) -> Settings:
    """Read and validate the configuration; ConfigError says which key and what to do."""
    source = conf_path(path, environ)
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=None)
    try:
        with open(source, encoding="utf-8") as fh:
            parser.read_file(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"no configuration file at {source}: run `scripts/host-setup.sh` (it writes one "
            f"from conf/mesos.conf.example), or point {CONF_ENV} or --config at one"
        ) from None
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise ConfigError(f"cannot read configuration {source}: {exc}") from exc
    _apply_environment(parser, environ)
    return settings_from_parser(parser, source)


def settings_from_parser(parser: configparser.ConfigParser, source: Optional[Path]) -> Settings:
    for section in parser.sections():
        if section not in _SECTIONS and not section.startswith("image:"):
            raise ConfigError(f"{source}: unknown section [{section}]")
    return Settings(
        libvirt=_section(parser, "libvirt", LibvirtSettings, source),
        images=_images(parser, source),
        vm=_section(parser, "vm", VmSettings, source),
        executor=_section(parser, "executor", ExecutorSettings, source),
        network=_section(parser, "network", NetworkSettings, source),
        pool=_pool(parser, source),
        source=source,
    )


def _pool(parser: configparser.ConfigParser, source: Optional[Path]) -> PoolSettings:
    section = dict(parser.items("pool")) if parser.has_section("pool") else {}
    known = set(PoolSettings.__dataclass_fields__)
    unknown = set(section) - known
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) in [pool]: {', '.join(sorted(unknown))}; "
                          f"known keys: {', '.join(sorted(known))}")
    values: dict[str, object] = {}
    for key, raw in section.items():
        where = f"{source}: [pool] {key} = {raw.strip()!r}"
        if key in ("size", "max_concurrent_boots"):
            try:
                number = int(raw)
            except ValueError:
                raise ConfigError(f"{where}: expected a whole number") from None
            if number < (0 if key == "size" else 1) or number > 64:
                raise ConfigError(f"{where}: must be from {0 if key == 'size' else 1} to 64")
            values[key] = number
        elif key == "shapes":
            values[key] = tuple(parse_shapes(raw, f"{source}: [pool] shapes").items())
        elif key in ("socket", "state_dir"):
            values[key] = Path(raw.strip())
        else:
            values[key] = _convert("pool", key, raw, source)
    pool = PoolSettings(**values)  # type: ignore[arg-type]
    total = sum(count for _, count in pool.shapes)
    if pool.enabled and total > pool.size:
        raise ConfigError(f"{source}: [pool] shapes keep {total} guests but size = {pool.size}: "
                          "raise size or lower the counts")
    return pool


def _apply_environment(parser: configparser.ConfigParser, environ: Mapping[str, str]) -> None:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONF_ENV:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section not in _SECTIONS or not key:
            raise ConfigError(
                f"environment variable {name} names no setting; expected "
                f"{ENV_PREFIX}<SECTION>_<KEY> with SECTION one of {', '.join(_SECTIONS)}"
            )
        if not parser.has_section(section):
            parser.add_section(section)
        parser.set(section, key, value)


def _section(parser: configparser.ConfigParser, name: str, cls: type, source: Optional[Path]):  # type: ignore[no-untyped-def]
    defaults = cls()
    values: dict[str, object] = {}
    if parser.has_section(name):
        known = set(defaults.__dataclass_fields__)
        for key, raw in parser.items(name):
            if key not in known:
                raise ConfigError(
                    f"{source}: unknown key {key!r} in [{name}]; known keys: {', '.join(sorted(known))}"
                )
            values[key] = _convert(name, key, raw, source)
    settings = cls(**values)
    _validate(name, settings, source)
    return settings


def _convert(section: str, key: str, raw: str, source: Optional[Path]) -> object:
    raw = raw.strip()
    where = f"{source}: [{section}] {key} = {raw!r}"
    if key in _INT_KEYS:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{where}: expected a whole number") from None
        if value <= 0:
            raise ConfigError(f"{where}: must be greater than 0")
        return value
    if key in _FLOAT_KEYS:
        try:
            number = float(raw)
        except ValueError:
            raise ConfigError(f"{where}: expected a number of seconds") from None
        if not math.isfinite(number) or number < 0:
            raise ConfigError(f"{where}: must be a finite number of seconds, 0 or more")
        return number
    if key in _PATH_KEYS:
        return Path(raw)
    if key in _CIDR_LIST_KEYS:
        return _cidr_list(raw, where)
    if key in _BOOL_KEYS:
        if raw.lower() not in ("true", "false"):
            raise ConfigError(f"{where}: expected true or false")
        return raw.lower() == "true"
    return raw


def _validate(section: str, settings: object, source: Optional[Path]) -> None:
    if isinstance(settings, LibvirtSettings) and settings.domain_type not in DOMAIN_TYPES:
        raise ConfigError(
            f"{source}: [libvirt] domain_type = {settings.domain_type!r}: use one of "
            f"{', '.join(DOMAIN_TYPES)}"
        )
    if isinstance(settings, VmSettings) and settings.memory_floor_mib > settings.max_memory_mib:
        raise ConfigError(f"{source}: [vm] memory_floor_mib is above max_memory_mib")
    if isinstance(settings, NetworkSettings):
        _validate_network(settings, source)


def _validate_network(settings: NetworkSettings, source: Optional[Path]) -> None:
    if settings.isolation not in ISOLATION_MODES:
        raise ConfigError(f"{source}: [network] isolation = {settings.isolation!r}: use on or off")
    if settings.egress not in EGRESS_POLICIES:
        raise ConfigError(f"{source}: [network] egress = {settings.egress!r}: use one of "
                          f"{', '.join(EGRESS_POLICIES)}")
    if settings.allow and settings.egress != "allow-list":
        raise ConfigError(f"{source}: [network] allow is set but egress = {settings.egress}: "
                          "set egress = allow-list, or remove allow")


def _cidr_list(raw: str, where: str) -> tuple[str, ...]:
    """Comma-separated IPv4 networks, normalised (``10.1.2.3/8`` is refused: host bits set)."""
    networks = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            network = ipaddress.IPv4Network(item)
        except ValueError as exc:
            raise ConfigError(f"{where}: {item!r} is not an IPv4 network in CIDR form ({exc})") from None
        networks.append(str(network))
    return tuple(networks)


def _images(parser: configparser.ConfigParser, source: Optional[Path]) -> ImageSettings:
    defaults = ImageSettings()
    section = dict(parser.items("images")) if parser.has_section("images") else {}
    unknown = set(section) - {"dir", "kernel", "initrd", "fast_kernel", "default"}
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) in [images]: {', '.join(sorted(unknown))}")
    directory = Path(section.get("dir", str(defaults.dir)))

    def resolve(value: str) -> Path:
        p = Path(value.strip())
        return p if p.is_absolute() else directory / p

    bases: dict[str, Path] = {}
    kernels: dict[str, str] = {}
    profiles: dict[str, ImageProfile] = {}
    for name in parser.sections():
        if not name.startswith("image:"):
            continue
        image = name[len("image:"):]
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", image):
            raise ConfigError(f"{source}: [{name}]: image names use letters, digits, '_', '.', '-'")
        items = dict(parser.items(name))
        if "kernel" in items:
            kind = items.pop("kernel").strip()
            if kind not in KERNEL_KINDS:
                raise ConfigError(f"{source}: [{name}] kernel = {kind!r}: use one of {', '.join(KERNEL_KINDS)}")
            kernels[image] = kind
        profile = _image_profile(items, resolve, f"{source}: [{name}]")
        bases[image] = profile.path
        if profile != ImageProfile(path=profile.path):
            profiles[image] = profile
    if not parser.has_section("images") and not bases:
        bases = {name: directory / path.name for name, path in defaults.bases.items()}
        kernels = dict(defaults.kernels)
        profiles = {name: replace(p, path=directory / p.path.name) for name, p in defaults.profiles.items()}
    default = section.get("default", defaults.default).strip()
    if default not in bases:
        raise ConfigError(
            f"{source}: [images] default = {default!r} but no [image:{default}] section exists"
        )
    return ImageSettings(
        dir=directory,
        kernel=resolve(section.get("kernel", "vmlinux")),
        initrd=resolve(section.get("initrd", "initramfs.cpio.gz")),
        fast_kernel=resolve(section.get("fast_kernel", "vmlinux-fast")),
        default=default,
        bases=bases,
        kernels=kernels,
        profiles=profiles,
    )


def _image_profile(items: dict[str, str], resolve: Callable[[str], Path], where: str) -> ImageProfile:
    unknown = set(items) - {"path", "kind", "user", "boot_timeout_s"}
    if unknown or "path" not in items:
        raise ConfigError(f"{where} takes path (required), kind, user, boot_timeout_s and kernel"
                          + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else ""))
    kind = items.get("kind", "direct-kernel").strip()
    if kind not in IMAGE_KINDS:
        raise ConfigError(f"{where} kind = {kind!r}: use one of {', '.join(IMAGE_KINDS)}")
    user = items.get("user", "").strip()
    if kind == "cloud-init" and not user:
        raise ConfigError(f"{where} kind = cloud-init needs user = <the login user the seed creates>, "
                          "e.g. debian or ubuntu")
    if kind == "direct-kernel" and user not in ("", "root"):
        raise ConfigError(f"{where} user = {user!r}: direct-kernel images log in as root only")
    if user and not _LOGIN_USER.fullmatch(user):
        raise ConfigError(f"{where} user = {user!r} is not a login name ([a-z_][a-z0-9_-]*, at most 32)")
    timeout: Optional[float] = None
    if "boot_timeout_s" in items:
        raw = items["boot_timeout_s"].strip()
        try:
            timeout = float(raw)
        except ValueError:
            raise ConfigError(f"{where} boot_timeout_s = {raw!r}: expected a number of seconds") from None
        if not math.isfinite(timeout) or timeout <= 0:
            raise ConfigError(f"{where} boot_timeout_s = {raw!r}: must be a finite number of seconds above 0")
    return ImageProfile(path=resolve(items["path"]), kind=kind, user=user or "root", boot_timeout_s=timeout)


# --- the Mesos environment ------------------------------------------------------------------

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ns|us|ms|secs|mins|hrs|days|weeks)\s*$")
_UNIT_S = {
    "ns": 1e-9, "us": 1e-6, "ms": 1e-3, "secs": 1.0, "mins": 60.0,
    "hrs": 3600.0, "days": 86400.0, "weeks": 604800.0,
}


def parse_duration(text: str) -> float:
    """Parse a Mesos (stout) duration such as ``5secs`` or ``15mins`` into seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(
            f"{text!r} is not a Mesos duration (a number followed by one of "
            f"{', '.join(_UNIT_S)}, e.g. 5secs)"
        )
    return float(m.group(1)) * _UNIT_S[m.group(2)]


@dataclass(frozen=True)
class MesosEnvironment:
    """What the Mesos agent told this executor through its environment."""

    framework_id: str
    executor_id: str
    agent_endpoint: str
    """host:port of the agent's HTTP API."""
    directory: Path
    """The executor's sandbox on the host."""
    checkpoint: bool
    shutdown_grace_period_s: float
    subscription_backoff_max_s: float
    recovery_timeout_s: float
    agent_id: str = ""
    variables: Mapping[str, str] = field(default_factory=dict)
    """Every MESOS_* and LIBPROCESS_* variable as given, to pass on into guests."""
    environment: Mapping[str, str] = field(default_factory=dict)
    """The whole environment the agent gave (its variables, --executor_environment_variables and
    the ExecutorInfo's CommandInfo.environment): what wrap mode passes on to the inner executor."""


_TRUE = ("1", "true", "yes")


def _refuse_ssl_only_agent(environ: Mapping[str, str]) -> None:
    """The executor speaks plain HTTP to the agent (pymesos's client has no TLS). An agent run
    with LIBPROCESS_SSL_ENABLED (its environment is the executor's) and without
    LIBPROCESS_SSL_SUPPORT_DOWNGRADE accepts TLS only: say so now instead of never subscribing
    and letting the registration timeout expire."""
    if environ.get("LIBPROCESS_SSL_ENABLED", "").strip().lower() not in _TRUE:
        return
    if environ.get("LIBPROCESS_SSL_SUPPORT_DOWNGRADE", "").strip().lower() in _TRUE:
        return
    raise ConfigError(
        "the agent requires TLS (LIBPROCESS_SSL_ENABLED is set and LIBPROCESS_SSL_SUPPORT_DOWNGRADE "
        "is not): vm-isolation-executor speaks plain HTTP only. Run the agent with "
        "LIBPROCESS_SSL_SUPPORT_DOWNGRADE=true (it then accepts both), or without SSL")


def mesos_environment(environ: Mapping[str, str] = os.environ) -> MesosEnvironment:
    """Parse the agent-provided environment; ConfigError names what is missing."""
    missing = [
        name
        for name in ("MESOS_FRAMEWORK_ID", "MESOS_EXECUTOR_ID", "MESOS_AGENT_ENDPOINT", "MESOS_DIRECTORY")
        if not environ.get(name)
    ]
    if missing:
        raise ConfigError(
            f"not started by a Mesos agent: {', '.join(missing)} unset. vm-isolation-executor "
            f"is meant to be the command of a framework's ExecutorInfo; to try it by hand use "
            f"vm-isolation-run"
        )
    _refuse_ssl_only_agent(environ)
    checkpoint_raw = environ.get("MESOS_CHECKPOINT", "0").strip()
    if checkpoint_raw not in ("0", "1"):
        raise ConfigError(f"MESOS_CHECKPOINT={checkpoint_raw!r}: expected 0 or 1")

    def duration(name: str, default: str) -> float:
        return parse_duration(environ.get(name) or default)

    return MesosEnvironment(
        framework_id=environ["MESOS_FRAMEWORK_ID"],
        executor_id=environ["MESOS_EXECUTOR_ID"],
        agent_endpoint=environ["MESOS_AGENT_ENDPOINT"],
        directory=Path(environ["MESOS_DIRECTORY"]),
        # NOTE: pymesos reads this as bool(string), so "0" would mean *on*. Parsed here instead.
        checkpoint=checkpoint_raw == "1",
        shutdown_grace_period_s=duration("MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD", "5secs"),
        subscription_backoff_max_s=duration("MESOS_SUBSCRIPTION_BACKOFF_MAX", "2secs"),
        recovery_timeout_s=duration("MESOS_RECOVERY_TIMEOUT", "15mins"),
        agent_id=environ.get("MESOS_SLAVE_ID", ""),
        variables={
            k: v for k, v in environ.items() if k.startswith(("MESOS_", "LIBPROCESS_"))
        },
        environment=dict(environ),
    )
