"""What every command-line entry point shares: logging set-up and error reporting."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Union


def configure_logging(prog: str, verbose: bool = False) -> None:
    """Log to stderr, one line per record, prefixed with the program name."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"{prog}: %(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # paramiko logs every transport event at INFO; only its warnings are news to an operator.
    logging.getLogger("paramiko").setLevel(logging.WARNING)


def task_exit_status(state: str, data: Optional[Union[bytes, str]]) -> int:
    """The process exit status for a task's terminal status, as Mesos's command executor gives
    it: 0 for TASK_FINISHED, the command's own status for TASK_FAILED when the status data
    carries it (``exit_status``), 1 otherwise."""
    if state == "TASK_FINISHED":
        return 0
    if state == "TASK_FAILED" and data:
        try:
            code = json.loads(data).get("exit_status")
        except ValueError:
            code = None
        if isinstance(code, int) and 0 < code < 256:
            return code
    return 1


def service_record() -> dict[str, object]:
    """What a host service (the reaper watcher, the address guard) writes into its lock: its pid,
    its executable (host set-up replaces a service of another installation) and its start time."""
    return {"pid": os.getpid(), "exe": str(Path(sys.argv[0]).resolve()), "started": round(time.time(), 3)}


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: how a host service is told to stop."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop
