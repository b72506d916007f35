"""The host's own services: the reaper watcher (``vm-isolation-reap --watch``), the address
guard (``vm-isolation-guard``, with ``[network] isolation = on``) and, only when ``[pool] size``
is above 0, the warm pool (``vm-isolation-pool serve``).

With systemd as PID 1 the unit ``conf/systemd/vm-isolation-reaper.service`` is installed (its
``@BINDIR@`` set to this virtualenv's ``bin/``), enabled and started. Without it (containers,
CI machines) the watcher is started detached (``setsid``), logging to
``<console_dir>/reaper.log``; host set-up runs on every ``make`` and starts it again if it is
gone. A watcher from another installation (another ``exe``) is stopped and replaced, so the
running code is the installed code.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

from .addressguard import GUARD_LOCK, guard_running
from .config import Settings
from .pool import pool_running
from .reaperwatch import reaper_watch_running, watcher_record, watcher_record_at
from .waiting import Deadline, poll_until

log = logging.getLogger(__name__)

UNIT_NAME = "vm-isolation-reaper.service"
POOL_UNIT_NAME = "vm-isolation-pool.service"
GUARD_UNIT_NAME = "vm-isolation-guard.service"


def unit_templates(unit: str) -> tuple[Path, Path]:
    """A checkout's conf/systemd/, or where setup.cfg's data_files put it in an installed package."""
    return (Path(__file__).resolve().parent.parent / "conf" / "systemd" / unit,
            Path(sys.prefix) / "share" / "vm-isolation" / unit)


UNIT_TEMPLATES = unit_templates(UNIT_NAME)
SYSTEMD_DIR = Path("/etc/systemd/system")
START_TIMEOUT_S = 15.0


def reap_command() -> Path:
    """vm-isolation-reap beside this Python (the virtualenv's console script)."""
    return Path(sys.executable).parent / "vm-isolation-reap"


def unit_text(bindir: Path, unit: str = UNIT_NAME) -> str:
    templates = unit_templates(unit)
    template = next((t for t in templates if t.is_file()), templates[0])
    return template.read_text().replace("@BINDIR@", str(bindir))


def ensure_pool(settings: Settings) -> None:
    """With ``[pool] size`` above 0, make sure the warm pool runs (started like the watcher);
    with 0 nothing is installed or started. Raises WaitTimeout if it does not come up."""
    if not settings.pool.enabled:
        return
    exe = Path(sys.executable).parent / "vm-isolation-pool"
    if Path("/run/systemd/system").is_dir():
        _install_unit(exe.parent, POOL_UNIT_NAME)
        return
    _ensure_detached("warm pool", [str(exe), "serve"] + ([f"--config={settings.source}"] if settings.source else []),
                     lambda: pool_running(settings), None, settings.vm.console_dir / "pool.log")


def ensure_reaper_watch(settings: Settings) -> None:
    """Make sure this installation's watcher runs; raises WaitTimeout if it does not come up."""
    exe = reap_command()
    if Path("/run/systemd/system").is_dir():
        _install_unit(exe.parent)
        return
    _ensure_detached("reaper watcher", [str(exe), "--watch"], lambda: reaper_watch_running(settings),
                     lambda: watcher_record(settings), settings.vm.console_dir / "reaper.log")


def ensure_guard(settings: Settings) -> None:
    """With ``[network] isolation = on``, make sure the address guard runs (guests get no IPv4
    past their lease without it); raises WaitTimeout if it does not come up."""
    if not settings.network.enforced:
        return
    exe = Path(sys.executable).parent / "vm-isolation-guard"
    if Path("/run/systemd/system").is_dir():
        _install_unit(exe.parent, GUARD_UNIT_NAME)
        return
    _ensure_detached("address guard", [str(exe)], guard_running, lambda: watcher_record_at(GUARD_LOCK),
                     settings.vm.console_dir / "guard.log")


def _ensure_detached(what: str, argv: list[str], running: Callable[[], bool],
                     record: Optional[Callable[[], dict[str, object]]], log_path: Path) -> None:
    """Without systemd: start ``argv`` detached unless this installation's copy runs already (one
    of another installation, another ``exe`` in its ``record``, is stopped and replaced; with no
    ``record``, any running copy is kept)."""
    if running():
        current = record() if record is not None else {}
        if record is None or current.get("exe") == str(Path(argv[0]).resolve()):
            log.info("%s: running%s", what, f" (pid {current['pid']})" if "pid" in current else "")
            return
        _stop_other(what, current, running)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                         close_fds=True)
    poll_until(lambda: True if running() else None, Deadline.after(START_TIMEOUT_S),
               interval_s=0.1, what=f"{' '.join(Path(a).name for a in argv[:2])} to start (see {log_path})")
    pid = record().get("pid") if record is not None else None
    log.info("%s: started%s, logging to %s", what, f" (pid {pid})" if pid else "", log_path)


def _stop_other(what: str, running_record: dict[str, object], running: Callable[[], bool]) -> None:
    pid = running_record.get("pid")
    log.info("%s: replacing the one of another installation (%s, pid %s)", what, running_record.get("exe"), pid)
    if isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
    poll_until(lambda: True if not running() else None, Deadline.after(START_TIMEOUT_S),
               interval_s=0.1, what=f"the old {what} (pid {pid}) to stop")


def _install_unit(bindir: Path, unit: str = UNIT_NAME) -> None:
    target = SYSTEMD_DIR / unit
    text = unit_text(bindir, unit)
    changed = not target.exists() or target.read_text() != text
    if changed:
        target.write_text(text)
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        log.info("installed %s", target)
    subprocess.run(["systemctl", "enable", "--now", unit], check=True)
    if changed:
        subprocess.run(["systemctl", "restart", unit], check=True)
