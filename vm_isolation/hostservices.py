"""The host's own services: today the reaper watcher (``vm-isolation-reap --watch``).

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

from .config import Settings
from .reaperwatch import reaper_watch_running, watcher_record
from .waiting import Deadline, poll_until

log = logging.getLogger(__name__)

UNIT_NAME = "vm-isolation-reaper.service"
# A checkout's conf/systemd/, or where setup.cfg's data_files put it in an installed package.
UNIT_TEMPLATES = (Path(__file__).resolve().parent.parent / "conf" / "systemd" / UNIT_NAME,
                  Path(sys.prefix) / "share" / "vm-isolation" / UNIT_NAME)
SYSTEMD_DIR = Path("/etc/systemd/system")
START_TIMEOUT_S = 15.0


def reap_command() -> Path:
    """vm-isolation-reap beside this Python (the virtualenv's console script)."""
    return Path(sys.executable).parent / "vm-isolation-reap"


def unit_text(bindir: Path) -> str:
    template = next((t for t in UNIT_TEMPLATES if t.is_file()), UNIT_TEMPLATES[0])
    return template.read_text().replace("@BINDIR@", str(bindir))


def ensure_reaper_watch(settings: Settings) -> None:
    """Make sure this installation's watcher runs; raises WaitTimeout if it does not come up."""
    exe = reap_command()
    if Path("/run/systemd/system").is_dir():
        _install_unit(exe.parent)
        return
    if reaper_watch_running(settings):
        running = watcher_record(settings)
        if running.get("exe") == str(exe.resolve()):
            log.info("reaper watcher: running (pid %s)", running.get("pid"))
            return
        _stop_other(settings, running)
    log_path = settings.vm.console_dir / "reaper.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        subprocess.Popen([str(exe), "--watch"], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                         start_new_session=True, close_fds=True)
    poll_until(lambda: True if reaper_watch_running(settings) else None, Deadline.after(START_TIMEOUT_S),
               interval_s=0.1, what=f"vm-isolation-reap --watch to start (see {log_path})")
    log.info("reaper watcher: started (pid %s), logging to %s", watcher_record(settings).get("pid"), log_path)


def _stop_other(settings: Settings, running: dict[str, object]) -> None:
    pid = running.get("pid")
    log.info("reaper watcher: replacing the one of another installation (%s, pid %s)", running.get("exe"), pid)
    if isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
    poll_until(lambda: True if not reaper_watch_running(settings) else None, Deadline.after(START_TIMEOUT_S),
               interval_s=0.1, what=f"the old watcher (pid {pid}) to stop")


def _install_unit(bindir: Path) -> None:
    target = SYSTEMD_DIR / UNIT_NAME
    text = unit_text(bindir)
    changed = not target.exists() or target.read_text() != text
    if changed:
        target.write_text(text)
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        log.info("reaper watcher: installed %s", target)
    subprocess.run(["systemctl", "enable", "--now", UNIT_NAME], check=True)
    if changed:
        subprocess.run(["systemctl", "restart", UNIT_NAME], check=True)
