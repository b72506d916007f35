#!/usr/bin/env python3
"""find_addr from a source checkout: the same code as the `find_addr` console script."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vm_isolation.cli.find_addr import main  # noqa: E402  (after the path set-up above)

if __name__ == "__main__":
    sys.exit(main())
