"""vm-isolation-executor: the Mesos executor (placeholder until the executor lands).

For now it reads the configuration and the agent's environment and reports what it would
use, so an operator can check a host's set-up: ``vm-isolation-executor --check``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from ..accel import resolve_domain_type
from ..config import load_settings
from ..errors import VmIsolationError


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="vm-isolation-executor")
    parser.add_argument("--config", type=Path, help="configuration file")
    args = parser.parse_args(argv)
    try:
        s = load_settings(args.config)
    except VmIsolationError as exc:
        print(f"vm-isolation-executor: {exc}", file=sys.stderr)
        return 1
    print(f"configuration: {s.source}")
    print(f"libvirt: {s.libvirt.uri}, network {s.libvirt.network}, domain type "
          f"{resolve_domain_type(s.libvirt.domain_type)} (configured {s.libvirt.domain_type})")
    print(f"images: kernel {s.images.kernel}, initrd {s.images.initrd}, default {s.images.default}")
    for name, path in sorted(s.images.bases.items()):
        print(f"  image {name}: {path}{'' if path.exists() else ' (MISSING)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
