"""What every command-line entry point shares: logging set-up and error reporting."""

from __future__ import annotations

import logging
import sys


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
